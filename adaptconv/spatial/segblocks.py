"""Dual-resolution block networks (Verelst & Tuytelaars, "SegBlocks: Block-Based Dynamic Resolution
Networks for Real-Time Segmentation", arXiv 2020 / TPAMI 2022).

:class:`SegBlocks` wraps a feature backbone (timm ``features_only``, the built-in ``SimpleCNN``):
the image is cut into blocks of ``block_size`` px; a light policy decides per block whether it runs
at full ("high") or half ("low", the image block 2×2-average-pooled) resolution; all blocks of one
resolution are stacked into a batch and run through the backbone's own weights, with BlockPad at
block borders (:mod:`adaptconv.spatial.blocks`): a high block's halo from a low neighbour is that
neighbour's features upsampled 2× (nearest), a low block's halo from a high neighbour is that
neighbour's features 2×2-averaged. Features of low blocks stay at low resolution through the whole
backbone (only the returned stage maps are assembled at full size, low blocks upsampled by nearest),
so both FLOPs and stored activations fall with the fraction of high blocks. With every block high
the output equals the dense backbone's.

Policies (``policy``):
- ``learned``: a small strided CNN on the image (8×8 px per block) gives one logit per block; in
  training the decision is sampled (Bernoulli) and trained by REINFORCE: reward = −(task loss of the
  block), minus the batch mean as baseline (unbiased, lower variance), plus the complexity penalty
  ``penalty · (mean p − target)²`` on the probabilities. In eval the ``round(target · blocks)``
  blocks of highest p run at high resolution (a fixed budget, so the executed fraction is the target;
  a threshold at p = 0.5 runs almost no block at high resolution when the target is low, since the
  penalty holds the mean p near the target).
- ``random``: ``round(target · blocks)`` blocks of each image at random (the no-policy baseline).
- ``heuristic``: the ``round(target · blocks)`` blocks of highest image-gradient energy (no training).
- ``all``: every block high (the dense network, run block-wise).
``forward(image, high=mask)`` overrides the policy with a B×gh×gw bool mask (measurements at a set
fraction).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    BlockContext,
    BlockSizeError,
    Grid,
    Groups,
    check_block_size,
    check_fraction,
    max_reduction,
    run_blockwise,
    scatter_blocks,
    split_blocks,
)

SEG_POLICIES = ("learned", "random", "heuristic", "all")
POLICY_PX = 8  # policy input pixels per block side


class BlockPolicy(nn.Module):
    """A light policy: the input downsampled to ``POLICY_PX``² px per block, three strided 3×3 convs,
    one logit per block. ``in_channels`` lets the video policy read more than the image."""

    def __init__(self, in_channels: int = 3, width: int = 16, init_fraction: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 1, 3, 2, 1),
        )
        with torch.no_grad():  # start near the target fraction
            f = min(max(init_fraction, 1e-3), 1 - 1e-3)
            self.net[-1].bias.fill_(math.log(f / (1 - f)))

    def forward(self, x: torch.Tensor | list[torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
        """``x``: a map, or several (image, frame difference, ...) each pooled to the policy's size."""
        gh, gw = grid_hw
        xs = [x] if isinstance(x, torch.Tensor) else list(x)
        small = torch.cat([F.adaptive_avg_pool2d(t, (gh * POLICY_PX, gw * POLICY_PX)) for t in xs], 1)
        return self.net(small)[:, 0]  # B×gh×gw


def topk_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """B×gh×gw bool: the ``round(fraction · gh·gw)`` (at least 1) highest-scoring blocks of each image."""
    b = scores.shape[0]
    flat = scores.reshape(b, -1)
    k = max(1, round(fraction * flat.shape[1]))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, flat.topk(k, dim=1).indices, True)
    return mask.view_as(scores)


def gradient_energy(image: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Mean absolute image gradient per block: B×gh×gw (where detail is, the heuristic policy)."""
    g = image.mean(1, keepdim=True)
    dx = (g[..., :, 1:] - g[..., :, :-1]).abs()
    dy = (g[..., 1:, :] - g[..., :-1, :]).abs()
    e = F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1))
    return F.adaptive_avg_pool2d(e, grid_hw)[:, 0]


#: the 8 neighbours of a block: (row offset, column offset) in the block grid
DIRECTIONS = tuple((di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj)


def _edge(t: torch.Tensor, dim: int, towards: int, n: int) -> torch.Tensor:
    """Along ``dim`` of a neighbour's blocks, the part that touches the block being padded: its last
    ``n`` pixels when the neighbour lies before it (``towards`` −1), its first ``n`` when after (+1),
    all of it when level (0). A view."""
    if towards < 0:
        return t.narrow(dim, t.shape[dim] - n, n)
    if towards > 0:
        return t.narrow(dim, 0, n)
    return t


def _strip(t: torch.Tensor, d: tuple[int, int], n: int) -> torch.Tensor:
    return _edge(_edge(t, -2, d[0], n), -1, d[1], n)


def _pool2(t: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling, summed in ``F.avg_pool2d``'s order (the same numbers); several times
    faster than it on the CPU for the thin strips of a halo."""
    return (t[..., ::2, ::2] + t[..., ::2, 1::2] + t[..., 1::2, ::2] + t[..., 1::2, 1::2]) / 4


def _halo_slices(d: tuple[int, int], side: int, pad: int) -> tuple[slice, slice]:
    """Where the halo from the neighbour in direction ``d`` goes in a padded block of ``side + 2·pad``."""
    span = {-1: slice(0, pad), 0: slice(pad, pad + side), 1: slice(pad + side, side + 2 * pad)}
    return span[d[0]], span[d[1]]


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """The 8-neighbourhood of a B×gh×gw bool mask (the mask included)."""
    return F.max_pool2d(mask[:, None].float(), 3, 1, 1)[:, 0] > 0


#: BlockPad of a layer whose whole map (batch × channels × pixels at a group's resolution) has at most
#: this many elements builds that map and cuts the padded blocks out of it (a few indexed copies of
#: whole blocks); larger maps get their halo strip by strip (data ∝ the halo, but ~16 copies per
#: group). Small maps (training batches of small images, the deep stages) are cheaper whole: fewer
#: operations, fewer autograd nodes. Both give the same numbers.
WHOLE_MAP_ELEMENTS = 1 << 18


class DualResContext(BlockContext):
    """BlockPad between high- and low-resolution blocks of one frame.

    Large maps: each group's blocks are padded with ``fill`` (the image border), then the halo is
    overwritten strip by strip from the neighbours: per direction, one indexed copy from the neighbours
    of the same resolution and one from those of the other resolution, of which only the strip that
    is read is resampled (nearest ×2 of ⌈p/2⌉ rows for a high block, 2×2 average of 2p rows for a low
    one). Nothing is built at full image size, so the cost follows the blocks run.
    Small maps (``WHOLE_MAP_ELEMENTS``): the group's blocks and their neighbours of the other
    resolution (resampled whole) are written into one map at the group's resolution, the padded
    blocks read out of it."""

    def __init__(self, high: torch.Tensor) -> None:
        b, gh, gw = high.shape
        self.grid = Grid(b, gh, gw)
        self.high = high
        flat = high.reshape(-1)
        self.index = {"high": flat.nonzero()[:, 0], "low": (~flat).nonzero()[:, 0]}
        # each block's row in its group's tensor
        self.rows = torch.full((flat.numel(),), -1, dtype=torch.long, device=high.device)
        for g in ("high", "low"):
            self.rows[self.index[g]] = torch.arange(self.index[g].numel(), device=high.device)

    @functools.cached_property
    def coords(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return {g: self.grid.coords(i) for g, i in self.index.items()}

    @functools.cached_property
    def neighbours(self) -> dict[str, tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """Per group: (grid coordinates, rows in the other group) of the blocks of the other resolution
        that touch one of its blocks."""
        out = {}
        for g, mine in (("high", self.high), ("low", ~self.high)):
            ids = (_dilate(mine) & ~mine).reshape(-1).nonzero()[:, 0]
            out[g] = (self.grid.coords(ids), self.rows[ids])
        return out

    @functools.cached_property
    def halo(self) -> dict[str, list[tuple[tuple[int, int], str, torch.Tensor, torch.Tensor]]]:
        """Per group: (direction, source group, rows of the group to write, rows of the source to read)."""
        b, gh, gw = self.high.shape
        flat, dev = self.high.reshape(-1), self.high.device
        ids = torch.arange(flat.numel(), device=dev).view(b, gh, gw)
        halo: dict[str, list] = {"high": [], "low": []}
        for d in DIRECTIONS:
            # the neighbour in direction d of every block (−1 beyond the image border)
            nb = torch.full((b, gh, gw), -1, dtype=torch.long, device=dev)
            di, dj = d
            nb[:, max(0, -di) : gh - max(0, di), max(0, -dj) : gw - max(0, dj)] = ids[
                :, max(0, di) : gh - max(0, -di), max(0, dj) : gw - max(0, -dj)
            ]
            nb = nb.reshape(-1)
            for g in ("high", "low"):
                mine = nb[self.index[g]]
                inside = mine >= 0
                for src, src_high in (("high", True), ("low", False)):
                    take = inside.clone()
                    take[inside] = flat[mine[inside]] == src_high
                    dest = take.nonzero()[:, 0]
                    if dest.numel():
                        halo[g].append((d, src, dest, self.rows[mine[dest]]))
        return halo

    def _pad_whole(self, g: str, feats: Groups, side: int, pad: int, fill: float) -> torch.Tensor:
        blocks, grid, s, e = feats[g], self.grid, side, side + 2 * pad
        h, w = grid.gh * s + 2 * pad, grid.gw * s + 2 * pad
        full = blocks.new_empty(grid.batch, blocks.shape[1], h, w)
        for border in (full[:, :, :pad], full[:, :, h - pad :], full[:, :, :, :pad], full[:, :, :, w - pad :]):
            border.fill_(fill)
        inner = full[:, :, pad : h - pad, pad : w - pad]
        view = inner.unflatten(2, (grid.gh, s)).unflatten(4, (grid.gw, s)).permute(0, 2, 4, 1, 3, 5)
        view[self.coords[g]] = blocks
        coords, rows = self.neighbours[g]
        if rows.numel():
            nb = feats["low" if g == "high" else "high"].index_select(0, rows)
            view[coords] = nb.repeat_interleave(2, -2).repeat_interleave(2, -1) if g == "high" else _pool2(nb)
        windows = full.unfold(2, e, s).unfold(3, e, s).permute(0, 2, 3, 1, 4, 5)
        return windows[self.coords[g]]

    def _sides(self, feats: Groups) -> tuple[int, int]:
        if "high" in feats and feats["high"].shape[0]:
            return feats["high"].shape[-1], feats["high"].shape[-1] // 2
        return feats["low"].shape[-1] * 2, feats["low"].shape[-1]

    def pad(self, name: str, feats: Groups, pad: int, fill: float) -> Groups:
        if pad == 0:
            return feats
        side = dict(zip(("high", "low"), self._sides(feats)))
        out = {}
        for g in ("high", "low"):
            blocks = feats[g]
            if not blocks.shape[0]:
                out[g] = blocks.new_empty(0, blocks.shape[1], side[g] + 2 * pad, side[g] + 2 * pad)
                continue
            if pad > side[g]:
                raise BlockSizeError(
                    f"{name}: padding {pad} is wider than the {g}-resolution blocks of {side[g]} px "
                    f"here; use a larger block size"
                )
            s, e = side[g], side[g] + 2 * pad
            if self.grid.batch * blocks.shape[1] * self.grid.gh * self.grid.gw * s * s <= WHOLE_MAP_ELEMENTS:
                out[g] = self._pad_whole(g, feats, s, pad, fill)
                continue
            # the block inside, ``fill`` in its border; the halo then overwrites the border where a
            # neighbour is (F.pad would fill the whole padded tensor first: measurably slower)
            padded = blocks.new_empty(blocks.shape[0], blocks.shape[1], e, e)
            padded[:, :, pad : pad + s, pad : pad + s] = blocks
            for border in (padded[:, :, :pad], padded[:, :, s + pad :], padded[:, :, pad : s + pad, :pad]):
                border.fill_(fill)
            padded[:, :, pad : s + pad, s + pad :].fill_(fill)
            for d, src, dest, rows in self.halo[g]:
                if src == g:
                    strip = _strip(feats[src], d, pad).index_select(0, rows)
                elif g == "high":  # a low neighbour: its ⌈p/2⌉ edge pixels, upsampled, cut to p
                    strip = _strip(feats[src], d, (pad + 1) // 2).index_select(0, rows)
                    strip = _strip(strip.repeat_interleave(2, -2).repeat_interleave(2, -1), d, pad)
                else:  # a high neighbour: its 2p edge pixels, 2×2-averaged
                    strip = _pool2(_strip(feats[src], d, 2 * pad).index_select(0, rows))
                rs, cs = _halo_slices(d, side[g], pad)
                padded[:, :, rs, cs].index_copy_(0, dest, strip)
            out[g] = padded
        return out

    def assemble(self, name: str, feats: Groups) -> torch.Tensor:
        s_high, _ = self._sides(feats)
        ref = feats["high"] if feats["high"].shape[0] else feats["low"]
        g = self.grid
        out = ref.new_empty(g.batch, ref.shape[1], g.gh * s_high, g.gw * s_high)
        if feats["high"].shape[0]:
            scatter_blocks(out, feats["high"], self.index["high"])
        if feats["low"].shape[0]:
            scatter_blocks(out, F.interpolate(feats["low"], scale_factor=2, mode="nearest"), self.index["low"])
        return out


class SegBlocks(nn.Module):
    """A feature backbone run block-wise at two resolutions; returns the backbone's list of maps.

    ``auxiliary_loss()`` (the policy's REINFORCE + complexity loss, after :meth:`reinforce`) and
    ``active_fraction()`` (fraction of high blocks in the last forward) follow the trial runner's
    conventions, so a trial adds the policy loss and records the executed fraction by itself."""

    def __init__(
        self,
        backbone: nn.Module,
        block_size: int = 128,
        target: float = 0.5,
        policy: str = "learned",
        penalty: float = 10.0,
        policy_width: int = 16,
        init_fraction: float | None = None,
    ) -> None:
        super().__init__()
        if policy not in SEG_POLICIES:
            raise ValueError(f"SegBlocks: policy must be one of {', '.join(SEG_POLICIES)}, got {policy!r}")
        self.target = check_fraction(target, "SegBlocks target (fraction of high-resolution blocks)")
        self.reduction = max_reduction(backbone)
        check_block_size(block_size, self.reduction, dual_resolution=True)
        self.backbone, self.block_size, self.policy_name, self.penalty = backbone, int(block_size), policy, penalty
        self.feature_info = getattr(backbone, "feature_info", None)
        self.policy = (
            BlockPolicy(3, policy_width, self.target if init_fraction is None else init_fraction)
            if policy == "learned"
            else None
        )
        self._last: dict = {}
        self._policy_loss: torch.Tensor | None = None

    # ---- decisions ------------------------------------------------------------------------------
    def decide(self, image: torch.Tensor) -> torch.Tensor:
        """B×gh×gw bool: which blocks run at high resolution (sampled in training for ``learned``)."""
        b, _, h, w = image.shape
        grid = (h // self.block_size, w // self.block_size)
        if self.policy_name == "all":
            return torch.ones(b, *grid, dtype=torch.bool, device=image.device)
        if self.policy_name == "random":
            return topk_mask(torch.rand(b, *grid, device=image.device), self.target)
        if self.policy_name == "heuristic":
            return topk_mask(gradient_energy(image, grid), self.target)
        logits = self.policy(image, grid)
        if self.training:
            high = torch.bernoulli(torch.sigmoid(logits.detach())).bool()
            self._last = {"logits": logits, "actions": high}
        else:  # a fixed budget at inference: the target fraction of blocks, those the policy scores highest
            high = topk_mask(logits, self.target)
        return high

    def reinforce(self, block_loss: torch.Tensor) -> None:
        """Set the policy loss from the task loss of each block (B×gh×gw, of the last training forward):
        REINFORCE with reward −loss and the batch mean as baseline, plus the complexity penalty."""
        if self.policy_name != "learned" or not self._last:
            return
        logits, actions = self._last["logits"], self._last["actions"].float()
        reward = -block_loss.detach()
        advantage = (reward - reward.mean()) / (reward.std() + 1e-6) if reward.numel() > 1 else reward * 0
        log_prob = -F.binary_cross_entropy_with_logits(logits, actions, reduction="none")
        fraction = torch.sigmoid(logits).mean()
        self._policy_loss = -(log_prob * advantage).mean() + self.penalty * (fraction - self.target) ** 2
        self._last = {}

    def auxiliary_loss(self) -> torch.Tensor:
        loss, self._policy_loss = self._policy_loss, None
        if loss is None:
            return torch.zeros((), device=next(self.backbone.parameters()).device)
        return loss

    def active_fraction(self) -> float | None:
        return self._fraction

    _fraction: float | None = None

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, high: torch.Tensor | None = None, as_blocks: bool = False):
        """The backbone's feature maps, each assembled at full size (low blocks upsampled); with
        ``as_blocks`` what :meth:`forward_blocks` returns (through ``__call__``, so hooks see it)."""
        if as_blocks:
            return self.forward_blocks(image, high)
        ctx, outs = self.forward_blocks(image, high)
        return [ctx.assemble(name, f) for name, f in outs]

    def forward_blocks(self, image: torch.Tensor, high: torch.Tensor | None = None):
        """(context, [(name, {"high": blocks, "low": blocks}) per feature map]): the maps still as
        blocks, for a head that runs block-wise too."""
        b, _, h, w = image.shape
        check_block_size(self.block_size, self.reduction, (h, w), dual_resolution=True)
        if high is None:
            high = self.decide(image)
        expected = (b, h // self.block_size, w // self.block_size)
        if tuple(high.shape) != expected:
            raise ValueError(f"SegBlocks: the high-resolution mask is {tuple(high.shape)}, expected {expected}")
        high = high.to(torch.bool)
        self._fraction = float(high.float().mean())
        ctx = DualResContext(high)
        blocks = split_blocks(image, self.block_size)
        feats = {"high": blocks[ctx.index["high"]], "low": F.avg_pool2d(blocks[ctx.index["low"]], 2)}
        self.context = ctx  # its conv_flops: what this forward executed
        return ctx, run_blockwise(self.backbone, feats, ctx)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, target={self.target}, policy={self.policy_name!r}"
