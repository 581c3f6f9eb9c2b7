"""BlockCopy: equal to the dense network frame by frame with every block recomputed, copied blocks
keep the previous frame's features exactly, FLOPs proportional to the blocks recomputed, the online
policy learns where the video changes (without labels) and moves toward its target fraction."""

import pytest
import timm
import torch

from adaptconv.models.backbones import build_backbone
from adaptconv.spatial import BlockCopy, BlockSegmenter


def _net(backbone="simplecnn-s", classes=4, affine=False):
    torch.manual_seed(0)
    if backbone == "resnet18":
        bb = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4), pretrained=False)
        channels = bb.feature_info.channels()
    else:
        bb, channels = build_backbone(backbone, 3, features_only=True)
    net = BlockSegmenter(bb, channels, classes, width=16)
    # random statistics (and ``affine``: weights — timm zero-initialises the last BN of each residual
    # block, which would hide that block's convolutions from a comparison with the dense network)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return net.eval()


@pytest.mark.parametrize("backbone,block,size", [("simplecnn-s", 8, 32), ("resnet18", 32, 96)])
def test_every_block_recomputed_equals_the_dense_network(backbone, block, size):
    net = _net(backbone, affine=True).double()
    clip = torch.rand(2, 3, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        dense = torch.stack([net(clip[:, t]) for t in range(3)], 1)
    out = BlockCopy(net, block_size=block, policy="all").double()(clip)
    torch.testing.assert_close(out, dense, rtol=1e-10, atol=1e-10)


def test_copied_blocks_keep_the_previous_features_and_flops_follow_the_selection():
    net = _net()
    bc = BlockCopy(net, block_size=8, policy="all")
    frames = torch.rand(3, 1, 3, 32, 32)
    bc.step(frames[0])
    full = bc.last_flops
    before = bc.ctx.maps["logits"].clone()
    select = torch.zeros(1, 4, 4, dtype=torch.bool)
    select[0, 1, 1] = select[0, 3, 2] = True
    bc.step(frames[1], select=select)
    after = bc.ctx.maps["logits"]
    keep = ~select[0].repeat_interleave(8, 0).repeat_interleave(8, 1)  # logits at stride 1 (simplecnn)
    assert torch.equal(after[0][:, keep], before[0][:, keep])
    assert not torch.equal(after[0][:, ~keep], before[0][:, ~keep])
    assert bc.last_fraction == 2 / 16
    assert bc.last_flops == pytest.approx(full * 2 / 16, rel=1e-9)
    # the recomputed blocks read their halo from the cache: equal to the dense network where the
    # frame did not change around them
    bc.step(frames[1], select=torch.ones(1, 4, 4, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(bc.step(frames[1], select=select), net(frames[1]), rtol=1e-5, atol=1e-5)


def test_first_frame_runs_in_full_and_a_new_size_needs_reset():
    bc = BlockCopy(_net(), block_size=8, policy="random", target=0.25)
    bc.step(torch.rand(1, 3, 32, 32))
    assert bc.last_fraction == 1.0
    bc.step(torch.rand(1, 3, 32, 32))
    assert bc.last_fraction == 0.25
    with pytest.raises(ValueError, match="differs from the previous frame"):
        bc.step(torch.rand(1, 3, 40, 40))
    bc.reset()
    bc.step(torch.rand(1, 3, 40, 40))
    assert bc.last_fraction == 1.0


def test_bad_block_size_and_target_are_refused():
    with pytest.raises(ValueError, match=r"block_size 6 px.*stride 4"):
        BlockCopy(_net(), block_size=6)
    with pytest.raises(ValueError, match=r"BlockCopy target.*\(0, 1\]"):
        BlockCopy(_net(), block_size=8, target=1.5)


def test_online_policy_learns_where_the_video_changes():
    """Only the left half of the video changes: recomputing a right block changes nothing, so its
    information gain is 0. Trained online (no labels), the policy must recompute the left blocks more
    often than the right ones, and its mean probability must come down to the target."""
    torch.manual_seed(0)
    net = _net()
    bc = BlockCopy(net, block_size=8, policy="learned", target=0.5, init_fraction=0.9, lr=0.01)
    background = torch.rand(1, 3, 32, 32)
    left, right = [], []
    for t in range(60):
        frame = background.clone()
        frame[..., :16] = torch.rand(1, 3, 32, 16)  # a changing left half
        if t > 0:  # the policy's probabilities for this frame, before it learns from it
            with torch.no_grad():
                p = torch.sigmoid(bc.policy([frame, frame - bc._prev_frame, bc._prev_probs], (4, 4)))
            left.append(float(p[..., :2].mean()))
            right.append(float(p[..., 2:].mean()))
        bc.step(frame)
    assert left[0] > 0.6 and right[0] > 0.6  # starts recomputing most blocks
    assert sum(left[-10:]) / 10 > sum(right[-10:]) / 10 + 0.3
    assert abs((sum(left[-10:]) + sum(right[-10:])) / 20 - 0.5) < 0.2
    # without online learning (deployment after it, or a latency measurement) a fixed budget: the
    # target's share of blocks, those the policy scores highest (here the changing left half)
    bc.online = False
    frame = background.clone()
    frame[..., :16] = torch.rand(1, 3, 32, 16)
    select, _ = bc.decide(frame, (4, 4))
    assert int(select.sum()) == 8 and int(select[..., :2].sum()) >= 6  # of 8 left blocks
    bc.step(frame)
    assert bc.last_fraction == 0.5
