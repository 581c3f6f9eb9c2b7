"""Block-sparse feature propagation on video (Verelst & Tuytelaars, "BlockCopy: High-Resolution
Video Processing with Block-Sparse Feature Propagation and Online Policies", ICCV 2021).

:class:`BlockCopy` runs a :class:`~adaptconv.spatial.network.BlockSegmenter` (an image network) on
the frames of a video. Per frame a light policy picks the blocks to recompute; those blocks (with
their receptive-field halo) are gathered into a batch, run through every layer with padding 0 and
scattered back into a feature cache kept per layer; every other block keeps (copies) the features
of the previous frame at every layer, and the halo of a recomputed block is read from that cache
(:class:`CacheContext`). The first frame of a video, and any frame after :meth:`BlockCopy.reset`, is
run in full. With every block recomputed each frame, the output is the dense network's, frame by
frame.

Policies (``policy``):
- ``learned``: :class:`~adaptconv.spatial.segblocks.BlockPolicy` on (frame, frame − previous frame,
  previous output probabilities), trained *online* while the video runs, without labels (BlockCopy's
  information-gain reward): after each frame, a recomputed block's reward is how much the network's
  output changed there (total-variation distance between its new class probabilities and the copied
  ones), a copied block's is 0 (nothing changed); REINFORCE with the frame's mean reward as
  baseline, plus ``penalty · (mean p − target)²`` pulling the executed fraction toward ``target``.
  Decisions are sampled while learning online (exploration); otherwise (``online=False``, or under
  ``torch.inference_mode``, e.g. a latency measurement) the ``round(target · blocks)`` blocks of highest
  p are recomputed, so the executed fraction is the target.
- ``random``: ``round(target · blocks)`` random blocks per frame.
- ``difference``: the ``round(target · blocks)`` blocks where the frame changed most (mean |Δ|).
- ``all``: every block (the dense network, frame by frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    BlockContext,
    Canvas,
    Grid,
    Groups,
    check_block_size,
    check_fraction,
    max_reduction,
    run_blockwise,
    scatter_blocks,
    split_blocks,
)
from .network import BlockSegmenter
from .segblocks import BlockPolicy, topk_mask

COPY_POLICIES = ("learned", "random", "difference", "all")


class CacheContext(BlockContext):
    """BlockPad from the previous frame's features: one padded canvas per padded layer and one map
    per returned map, kept across frames; the recomputed blocks are written into them."""

    def __init__(self) -> None:
        self.canvases: dict[str, Canvas] = {}
        self.maps: dict[str, torch.Tensor] = {}
        self.grid: Grid | None = None
        self.index: torch.Tensor | None = None

    def reset(self) -> None:
        self.canvases.clear()
        self.maps.clear()
        self.grid = None

    def start_frame(self, grid: Grid, index: torch.Tensor) -> None:
        if self.grid is not None and self.grid != grid:
            raise ValueError(
                f"BlockCopy: frame grid {grid} differs from the previous frame's {self.grid}; "
                f"call reset() between videos of different sizes"
            )
        if self.grid is None and index.numel() != grid.n:
            raise ValueError("BlockCopy: the first frame of a video must recompute every block (no features to copy)")
        self.grid, self.index = grid, index
        self.conv_flops = 0

    def pad(self, name: str, feats: Groups, pad: int, fill: float) -> Groups:
        blocks = feats["sel"]
        canvas = self.canvases.get(name)
        if canvas is None:
            canvas = self.canvases[name] = Canvas(self.grid, blocks.shape[1], blocks.shape[-1], pad, fill, blocks)
        canvas.write(blocks, self.index)
        return {"sel": canvas.read_padded(self.index)}

    def assemble(self, name: str, feats: Groups) -> torch.Tensor:
        blocks = feats["sel"]
        out = self.maps.get(name)
        if out is None:
            g, s = self.grid, blocks.shape[-1]
            out = self.maps[name] = blocks.new_zeros(g.batch, blocks.shape[1], g.gh * s, g.gw * s)
        scatter_blocks(out, blocks, self.index)
        return out.clone()  # the cache is updated in place by the next frame


def block_mean(x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """B×C×H×W → B×gh×gw: the mean over each block's pixels and channels."""
    return F.adaptive_avg_pool2d(x, grid_hw).mean(1)


class BlockCopy(nn.Module):
    """Run ``net`` on video frames block-sparsely (see the module docstring).

    :meth:`step` takes one frame (B×3×H×W, B videos in lockstep) and returns its logits; ``forward``
    takes a clip B×T×3×H×W (reset first) and returns B×T×classes×H×W. After each step,
    ``last_fraction`` is the fraction of blocks recomputed and ``last_flops`` the convolution FLOPs
    executed (2 per multiply-add)."""

    def __init__(
        self,
        net: BlockSegmenter,
        block_size: int = 128,
        target: float = 0.5,
        policy: str = "learned",
        penalty: float = 10.0,
        lr: float = 1e-3,
        policy_width: int = 16,
        init_fraction: float | None = None,
        online: bool = True,
    ) -> None:
        super().__init__()
        if policy not in COPY_POLICIES:
            raise ValueError(f"BlockCopy: policy must be one of {', '.join(COPY_POLICIES)}, got {policy!r}")
        self.target = check_fraction(target, "BlockCopy target (fraction of blocks recomputed)")
        self.reduction = max_reduction(net.backbone)
        check_block_size(block_size, self.reduction)
        self.net, self.block_size, self.policy_name, self.penalty = net, int(block_size), policy, penalty
        self.online = online
        self.policy = (
            BlockPolicy(6 + net.num_classes, policy_width, self.target if init_fraction is None else init_fraction)
            if policy == "learned"
            else None
        )
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr) if self.policy is not None else None
        self.ctx = CacheContext()
        self.last_fraction: float | None = None
        self.last_flops: int | None = None
        self.policy_loss: float | None = None
        self._prev_frame: torch.Tensor | None = None
        self._prev_probs: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the previous frame (a new video starts)."""
        self.ctx.reset()
        self._prev_frame = self._prev_probs = None

    def decide(self, frame: torch.Tensor, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B×gh×gw bool of blocks to recompute, the policy's logits or None)."""
        b = frame.shape[0]
        if self._prev_frame is None or self.policy_name == "all":
            return torch.ones(b, *grid_hw, dtype=torch.bool, device=frame.device), None
        if self.policy_name == "random":
            return topk_mask(torch.rand(b, *grid_hw, device=frame.device), self.target), None
        diff = frame - self._prev_frame
        if self.policy_name == "difference":
            return topk_mask(block_mean(diff.abs(), grid_hw), self.target), None
        inputs = [frame, diff, self._prev_probs]
        # no online learning under torch.inference_mode (a latency measurement): nothing can be trained there
        learn = self.online and self.optimizer is not None and not torch.is_inference_mode_enabled()
        with torch.enable_grad() if learn else torch.no_grad():
            logits = self.policy([t.detach() for t in inputs], grid_hw)
        if learn:
            select = torch.bernoulli(torch.sigmoid(logits.detach())).bool()
        else:  # a fixed budget: the target's share of blocks, those the policy scores highest
            select = topk_mask(logits, self.target)
        return select, (logits if learn else None)

    def step(self, frame: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of one frame (at the frame's size). ``select`` (B×gh×gw bool) overrides the policy
        (the first frame of a video is always run in full)."""
        b, _, h, w = frame.shape
        check_block_size(self.block_size, self.reduction, (h, w))
        grid_hw = (h // self.block_size, w // self.block_size)
        logits_policy = None
        if select is None or self._prev_frame is None:
            chosen, logits_policy = self.decide(frame, grid_hw)
            select = chosen if select is None else torch.ones_like(select, dtype=torch.bool)
        if tuple(select.shape) != (b, *grid_hw):
            raise ValueError(f"BlockCopy: selection of shape {tuple(select.shape)}, expected {(b, *grid_hw)}")
        index = select.reshape(-1).nonzero()[:, 0]
        self.ctx.start_frame(Grid(b, *grid_hw), index)
        with torch.no_grad():
            feats = {"sel": split_blocks(frame, self.block_size)[index]}
            outs = run_blockwise(self.net.backbone, feats, self.ctx)
            logits_lr = self.ctx.assemble("logits", self.net.head_blocks(outs, self.ctx))
        self.last_fraction = float(select.float().mean())
        self.last_flops = self.ctx.conv_flops
        probs = F.softmax(logits_lr, 1)
        if logits_policy is not None:
            self._learn(logits_policy, select, probs, grid_hw)
        self._prev_frame, self._prev_probs = frame.detach(), probs
        return F.interpolate(logits_lr, size=(h, w), mode="bilinear", align_corners=False)

    def _learn(self, logits: torch.Tensor, select: torch.Tensor, probs: torch.Tensor, grid_hw) -> None:
        """One online REINFORCE step from the network's own output (no labels)."""
        gain = 0.5 * block_mean((probs - self._prev_probs).abs(), grid_hw) * probs.shape[1]  # TV distance
        action = select.float()
        reward = action * gain
        advantage = (reward - reward.mean()) / (reward.std() + 1e-2) if reward.numel() > 1 else reward * 0
        with torch.enable_grad():
            log_prob = -F.binary_cross_entropy_with_logits(logits, action, reduction="none")
            loss = -(log_prob * advantage).mean() + self.penalty * (torch.sigmoid(logits).mean() - self.target) ** 2
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.policy_loss = float(loss.detach())

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dim() != 5:
            raise ValueError(f"BlockCopy.forward: a clip B×T×3×H×W, got shape {tuple(clip.shape)}")
        self.reset()
        return torch.stack([self.step(clip[:, t]) for t in range(clip.shape[1])], 1)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, target={self.target}, policy={self.policy_name!r}"
