"""SegBlocks: equal to the dense network with every block high, FLOPs falling with the fraction of
high blocks, REINFORCE moving the policy (toward the useful blocks and toward the target fraction)."""

import pytest
import timm
import torch
import torch.nn.functional as F

import adaptconv.spatial.segblocks as segblocks
from adaptconv.measure import count_flops
from adaptconv.models.backbones import build_backbone
from adaptconv.spatial import (
    BlockSegmenter,
    DualResContext,
    DualResSegmenter,
    Grid,
    SegBlocks,
    merge_blocks,
    run_blockwise,
    split_blocks,
)
from adaptconv.spatial.blocks import BlockContext


def _randomise_bn(model):
    """Random statistics and affine weights in every BatchNorm (timm zero-initialises the last BN of
    each residual block, which would hide that block's convolutions from the comparison)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)


def _segmenter(backbone: str):
    torch.manual_seed(0)
    if backbone == "resnet18":
        bb = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4), pretrained=False)
        channels = bb.feature_info.channels()
    else:
        bb, channels = build_backbone(backbone, 3, features_only=True)
    net = BlockSegmenter(bb, channels, 6, width=16)
    _randomise_bn(net)
    return net.eval().double()


@pytest.mark.parametrize("backbone,block,size", [("simplecnn-s", 8, 32), ("resnet18", 64, 128)])
def test_every_block_high_equals_the_dense_network(backbone, block, size):
    net = _segmenter(backbone)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        dense = net(x)
        blockwise = DualResSegmenter(net, block_size=block, policy="all").eval()(x)
        feats_dense = net.backbone(x)
        feats_blocks = SegBlocks(net.backbone, block_size=block, policy="all").eval()(x)
    torch.testing.assert_close(blockwise, dense, rtol=1e-10, atol=1e-10)
    for a, b in zip(feats_blocks, feats_dense):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_flops_fall_with_the_fraction_of_high_blocks():
    net = _segmenter("simplecnn-s").float()
    model = DualResSegmenter(net, block_size=8, policy="all").eval()
    x = torch.rand(1, 3, 32, 32)
    counted, executed = [], []
    for k in (4, 8, 12, 16):  # of 16 blocks
        high = torch.zeros(16, dtype=torch.bool)
        high[torch.randperm(16, generator=torch.Generator().manual_seed(k))[:k]] = True
        high = high.view(1, 4, 4)
        counted.append(count_flops(model, (x, high)).flops)
        executed.append(model.segblocks.context.conv_flops)
    assert counted == sorted(counted) and counted[0] < 0.55 * counted[-1]
    # a low block costs a quarter of a high one: conv FLOPs ∝ f + (1 − f) / 4
    for k, f in zip((4, 8, 12, 16), executed):
        frac = k / 16
        assert f == pytest.approx(executed[-1] * (frac + (1 - frac) / 4), rel=0.02)


def test_reinforce_prefers_blocks_whose_loss_falls_at_high_resolution():
    """Textured blocks lose 1 when run at low resolution, flat ones nothing either way. Under the
    complexity penalty (target: 40% high), REINFORCE must spend the high blocks on the textured ones.
    (Without a penalty, flat blocks are indifferent and would drift with the shared bias.)"""
    torch.manual_seed(0)
    bb, _ = build_backbone("simplecnn-s", 3, features_only=True)
    sb = SegBlocks(bb, block_size=8, target=0.4, policy="learned", penalty=10.0).train()
    opt = torch.optim.Adam(sb.policy.parameters(), lr=0.01)
    textured = torch.rand(16, 1, 4, 4) < 0.4
    detail = torch.nn.functional.interpolate(textured.float(), scale_factor=8)
    images = 0.5 + (torch.rand(16, 3, 32, 32) - 0.5) * detail  # flat grey where not textured
    textured = textured[:, 0]
    before = torch.sigmoid(sb.policy(images, (4, 4))).detach()
    for _ in range(40):
        high = sb.decide(images)
        sb.reinforce((textured & ~high).float())
        opt.zero_grad()
        sb.auxiliary_loss().backward()
        opt.step()
    with torch.no_grad():
        p = torch.sigmoid(sb.policy(images, (4, 4)))
    assert abs(before[textured].mean() - before[~textured].mean()) < 0.05
    assert p[textured].mean() > p[~textured].mean() + 0.2


def test_complexity_penalty_moves_the_high_fraction_to_the_target():
    torch.manual_seed(0)
    bb, _ = build_backbone("simplecnn-s", 3, features_only=True)
    sb = SegBlocks(bb, block_size=8, target=0.25, policy="learned", init_fraction=0.9).train()
    opt = torch.optim.Adam(sb.policy.parameters(), lr=0.01)
    images = torch.rand(8, 3, 32, 32)
    start = float(sb.decide(images).float().mean())
    for _ in range(40):
        sb(images)  # a full forward: the decision, then the backbone on the blocks
        sb.reinforce(torch.rand(8, 4, 4))
        opt.zero_grad()
        sb.auxiliary_loss().backward()
        opt.step()
    with torch.no_grad():
        p = torch.sigmoid(sb.policy(images, (4, 4)))
    assert start > 0.8
    assert abs(float(p.mean()) - 0.25) < 0.1  # the penalty moved the policy's probabilities


def test_learned_policy_runs_the_target_fraction_at_evaluation():
    """A fixed budget at inference: the target's share of blocks in every image, those the policy scores
    highest, even where every probability is below 0.5 (a threshold would run no block at high
    resolution) or above it."""
    torch.manual_seed(0)
    bb, _ = build_backbone("simplecnn-s", 3, features_only=True)
    images = torch.rand(8, 3, 32, 32)
    for start in (0.1, 0.9):
        sb = SegBlocks(bb, block_size=8, target=0.5, policy="learned", init_fraction=start).eval()
        with torch.no_grad():
            sb(images)
            high = sb.decide(images)
            scores = sb.policy(images, (4, 4)).reshape(8, -1)
        assert sb.active_fraction() == 0.5 and high.sum((1, 2)).tolist() == [8] * 8
        chosen = high.reshape(8, -1)
        assert all(scores[i][chosen[i]].min() >= scores[i][~chosen[i]].max() for i in range(8))


def _reference_pad(feats, high, pad, fill):
    """BlockPad by definition: each group's blocks cut, with their halo, out of a whole map at the
    group's resolution in which every block of the other resolution is resampled (nearest ×2 up,
    2×2 average down), the map padded with ``fill``."""
    b, gh, gw = high.shape
    grid, flat = Grid(b, gh, gw), high.reshape(-1)
    out = {}
    for g, mine, other in (("high", flat, lambda t: F.interpolate(t, scale_factor=2)), ("low", ~flat, F.avg_pool2d)):
        s = feats[g].shape[-1]
        o = "low" if g == "high" else "high"
        resampled = other(feats[o], 2) if g == "low" else other(feats[o])
        blocks = feats[g].new_zeros(grid.n, feats[g].shape[1], s, s)
        blocks[mine.nonzero()[:, 0]] = feats[g]
        blocks[(~mine).nonzero()[:, 0]] = resampled
        full = F.pad(merge_blocks(blocks, grid), (pad,) * 4, value=fill)
        windows = full.unfold(2, s + 2 * pad, s).unfold(3, s + 2 * pad, s).permute(0, 2, 3, 1, 4, 5)
        out[g] = windows.reshape(grid.n, *windows.shape[3:])[mine.nonzero()[:, 0]]
    return out


def _mixed(pad: int, channels: int = 5, side: int = 8):
    gen = torch.Generator().manual_seed(pad)
    high = torch.rand(2, 3, 4, generator=gen) < 0.5
    high[0, 0, 0], high[0, 0, 1] = True, False
    n_high = int(high.sum())
    feats = {
        "high": torch.randn(n_high, channels, side, side, generator=gen, dtype=torch.float64),
        "low": torch.randn(high.numel() - n_high, channels, side // 2, side // 2, generator=gen, dtype=torch.float64),
    }
    return high, feats


@pytest.mark.parametrize("pad,fill", [(1, 0.0), (2, 0.0), (3, float("-inf")), (4, 0.0)])
def test_blockpad_equals_the_whole_map_definition(pad, fill):
    """Mixed high/low blocks on random features: the gather (halo rows from neighbours of the same
    resolution as they are, nearest ×2 from low neighbours, 2×2 averages of high neighbours, the fill
    value at the image border) equals padding from whole resampled maps exactly, at odd and even
    padding."""
    high, feats = _mixed(pad)
    got = DualResContext(high).pad("layer", feats, pad, fill)
    want = _reference_pad(feats, high, pad, fill)
    for g in ("high", "low"):
        torch.testing.assert_close(got[g], want[g], rtol=0, atol=0)


@pytest.mark.parametrize("gemm", [True, False], ids=["im2col-matmul", "direct"])
@pytest.mark.parametrize("k,stride,pad,bias", [(3, 1, 1, False), (3, 2, 1, True), (1, 2, 0, False), (5, 1, 2, True)])
def test_conv_on_rows_equals_conv_on_blockpadded_blocks(k, stride, pad, bias, gemm, monkeypatch):
    """Both ways a conv runs on mixed blocks (one matrix product over the taps of both resolutions;
    one direct conv per resolution on padded blocks) equal F.conv2d on the definition's padded blocks."""
    monkeypatch.setattr(segblocks, "GEMM_MIN_DEPTH", 0 if gemm else 1 << 30)
    high, feats = _mixed(pad + 1, channels=6)
    conv = torch.nn.Conv2d(6, 7, k, stride, pad, bias=bias).double()
    ctx = DualResContext(high)
    out = ctx.conv("layer", conv, ctx.rows_of(feats))
    want = _reference_pad(feats, high, pad, 0.0) if pad else feats
    side = 8 // stride
    start = 0
    for g, s in (("high", side), ("low", side // 2)):
        n = want[g].shape[0]
        got = out.data[start : start + n * s * s].view(n, s, s, 7).permute(0, 3, 1, 2)
        start += n * s * s
        torch.testing.assert_close(got, F.conv2d(want[g], conv.weight, conv.bias, stride), rtol=1e-12, atol=1e-12)
    assert start == out.data.shape[0] and out.side == side


class _ReferenceContext(BlockContext):
    """The block-wise network by definition: per-group block tensors, BlockPad from whole resampled
    maps (:func:`_reference_pad`), each op one call per group."""

    def __init__(self, high):
        self.high, self.grid = high, Grid(*high.shape)

    def pad(self, name, feats, pad, fill):
        return _reference_pad(feats, self.high, pad, fill)

    def assemble(self, name, feats):
        flat = self.high.reshape(-1)
        s = feats["high"].shape[-1]
        blocks = feats["high"].new_zeros(self.grid.n, feats["high"].shape[1], s, s)
        blocks[flat.nonzero()[:, 0]] = feats["high"]
        blocks[(~flat).nonzero()[:, 0]] = F.interpolate(feats["low"], scale_factor=2)
        return merge_blocks(blocks, self.grid)


@pytest.mark.parametrize("backbone,block,size", [("simplecnn-s", 8, 32), ("resnet18", 64, 256)])
def test_mixed_blocks_equal_the_blockwise_definition(backbone, block, size):
    """Mixed high/low blocks through the whole network (stem, max-pool, residual blocks, the deep
    stages as one matrix product, the head): the executor on rows equals the network run group by
    group with BlockPad from whole resampled maps."""
    net = _segmenter(backbone)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    g = size // block
    high = torch.rand(2, g, g, generator=torch.Generator().manual_seed(3)) < 0.4
    high[0, 0, 0], high[0, 0, 1], high[1, -1, -1] = True, False, True
    with torch.no_grad():
        got = DualResSegmenter(net, block_size=block, policy="all").eval()(x, high)
        ref = _ReferenceContext(high)
        blocks = split_blocks(x, block)
        flat = high.reshape(-1)
        feats = {"high": blocks[flat.nonzero()[:, 0]], "low": F.avg_pool2d(blocks[(~flat).nonzero()[:, 0]], 2)}
        logits = ref.assemble("logits", net.head_blocks(run_blockwise(net.backbone, feats, ref), ref))
        want = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_every_block_low_is_the_dense_network_at_half_resolution():
    net = _segmenter("resnet18")
    x = torch.rand(1, 3, 256, 256, dtype=torch.float64)
    with torch.no_grad():
        got = SegBlocks(net.backbone, block_size=64, policy="all").eval()(x, torch.zeros(1, 4, 4, dtype=torch.bool))
        want = net.backbone(F.avg_pool2d(x, 2))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, F.interpolate(b, scale_factor=2), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backbone,block,size", [("simplecnn-s", 8, 32), ("resnet18", 64, 128)])
def test_gradients_through_mixed_blocks_equal_the_blockwise_definition(backbone, block, size):
    """Training runs autograd through the gathers (halo rows, 2×2 averages, fill) and the matrix
    products: the weight and input gradients equal those of the network run group by group."""
    net = _segmenter(backbone)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    g = size // block
    high = torch.rand(2, g, g, generator=torch.Generator().manual_seed(5)) < 0.5
    high[0, 0, 0], high[0, 0, 1] = True, False
    seed = torch.rand(2, 6, size, size, dtype=torch.float64)

    def grads(run):
        net.zero_grad()
        xi = x.clone().requires_grad_(True)
        (run(xi) * seed).sum().backward()
        return [xi.grad] + [p.grad.clone() for p in net.parameters()]

    def reference(xi):
        ref = _ReferenceContext(high)
        blocks = split_blocks(xi, block)
        flat = high.reshape(-1)
        feats = {"high": blocks[flat.nonzero()[:, 0]], "low": F.avg_pool2d(blocks[(~flat).nonzero()[:, 0]], 2)}
        logits = ref.assemble("logits", net.head_blocks(run_blockwise(net.backbone, feats, ref), ref))
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)

    model = DualResSegmenter(net, block_size=block, policy="all").eval()
    for a, b in zip(grads(lambda xi: model(xi, high)), grads(reference)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
