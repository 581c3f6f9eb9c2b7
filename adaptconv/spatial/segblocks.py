"""Dual-resolution block networks (Verelst & Tuytelaars, "SegBlocks: Block-Based Dynamic Resolution
Networks for Real-Time Segmentation", arXiv 2020 / TPAMI 2022).

:class:`SegBlocks` wraps a feature backbone (timm ``features_only``, the built-in ``SimpleCNN``):
the image is cut into blocks of ``block_size`` px; a light policy decides per block whether it runs
at full ("high") or half ("low", the image block 2×2-average-pooled) resolution; the blocks run
through the backbone's own weights, with BlockPad at block borders: a high block's halo from a low
neighbour is that neighbour's features upsampled 2× (nearest), a low block's halo from a high
neighbour is that neighbour's features 2×2-averaged. Features of low blocks stay at low resolution
through the whole backbone (only the returned stage maps are assembled at full size, low blocks
upsampled by nearest), so both FLOPs and stored activations fall with the fraction of high blocks.
With every block high the output equals the dense backbone's.

Execution (:class:`DualResContext`): the features of both resolutions are one pixel-per-row tensor
(:class:`Rows`, channels last); every padded layer reads it through one precomputed gather (the
BlockPad halo included); shallow convs run once per resolution on the padded blocks, deep ones
(:data:`GEMM_MIN_DEPTH`) as one matrix product over both; BatchNorm, activations and residual adds
are one call for both resolutions (in training BatchNorm's batch statistics are over the pixels of
both together, as the dense network's are over all pixels).

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
    _pair,
    check_block_size,
    check_conv,
    check_fraction,
    check_maxpool,
    check_side,
    max_reduction,
    run_blockwise,
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


#: convolutions whose reduction depth (input channels × taps) is at least this run as one matrix
#: product over the pixels of both resolutions (im2col by one gather): the deep stages, where blocks
#: are a few pixels and the weights large. There two direct convs (one per resolution) cost ~1.8×
#: their FLOPs on the CPU: each call reorders the whole weight and works on 2–4 px wide maps.
#: Shallower convs (large blocks, small weights) run as one direct conv per resolution on padded blocks.
GEMM_MIN_DEPTH = 2048


class Rows:
    """The features of every block of a frame at both resolutions, one pixel per row (channels
    last): ``data`` is P×C, the high-resolution blocks' pixels first (block, y, x), then the
    low-resolution blocks'; ``side`` is the high blocks' side in pixels (the low blocks' is half).

    One tensor for both resolutions: BatchNorm, activations and residual adds are one call each, and
    BlockPad is one gather from it (see :class:`DualResContext`)."""

    __slots__ = ("data", "side")

    def __init__(self, data: torch.Tensor, side: int) -> None:
        self.data, self.side = data, side

    def __repr__(self) -> str:
        return f"Rows({tuple(self.data.shape)}, side={self.side})"


def _pool2(t: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling, summed in ``F.avg_pool2d``'s order (the same numbers); several times
    faster than it on the CPU."""
    return (t[..., ::2, ::2] + t[..., ::2, 1::2] + t[..., 1::2, ::2] + t[..., 1::2, 1::2]) / 4


@functools.lru_cache(maxsize=256)
def _template(side: int, kind: str, k: int, stride: int, pad: int, dilation: int, device: torch.device):
    """The pixels a block of ``side`` px reads from its neighbours and itself, in its own frame
    (−pad … side+pad−1): (their places in the block's output, of ``size``; the direction of the
    block they lie in, 0…8 for (di, dj) ∈ {−1, 0, 1}²; row and column inside that block), and ``size``.
    ``kind`` "pad": the block with a border of ``pad`` px, row-major, of which only the border is
    listed (the inside is the block itself, copied whole); "taps": per output pixel of a k×k conv
    (stride, padding, dilation) its k·k taps (output row, output column, tap row, tap column)."""
    if kind == "pad":
        e = side + 2 * pad
        c = torch.arange(-pad, side + pad)
        ys, xs = c[:, None].expand(e, e).reshape(-1), c[None, :].expand(e, e).reshape(-1)
        places = ((ys < 0) | (ys >= side) | (xs < 0) | (xs >= side)).nonzero()[:, 0]
        ys, xs, size = ys[places], xs[places], e * e
    else:
        o = side // stride
        c = (torch.arange(o) * stride - pad)[:, None] + torch.arange(k) * dilation  # o×k
        ys, xs = c[:, None, :, None].expand(o, o, k, k).reshape(-1), c[None, :, None, :].expand(o, o, k, k).reshape(-1)
        places, size = torch.arange(ys.numel()), ys.numel()
    di, dj = torch.div(ys, side, rounding_mode="floor"), torch.div(xs, side, rounding_mode="floor")
    if ys.numel() and (di.abs().max() > 1 or dj.abs().max() > 1):  # the caller refuses padding wider than a block
        raise BlockSizeError(f"padding {pad} reaches beyond the neighbouring block of {side} px")
    direction = (di + 1) * 3 + dj + 1
    ys, xs = ys - di * side, xs - dj * side
    # the pixel's row inside a neighbour at this resolution, at half of it (the low pixel a high
    # one falls in) and the first of its 4 pixels at twice it (those a low pixel averages)
    same, half, double = ys * side + xs, (ys // 2) * (side // 2) + xs // 2, (2 * ys) * (2 * side) + 2 * xs
    return tuple(t.to(device) for t in (places, direction, same, half, double)) + (size,)


class Gather:
    """One BlockPad (or im2col) as a gather from :class:`Rows` data into ``size`` rows.

    ``inside`` (padded blocks only): per group (first source row, first output row, blocks, side,
    pad): each block is copied whole into the middle of its padded block. Then the rows at ``pos``
    (all of them when ``pos`` is None) are rows ``main`` of the source, those at ``pool_pos`` the 2×2
    average of source rows ``pool_rows`` (a low block's halo from a high neighbour), and those at
    ``fill_pos`` the fill value (the image border)."""

    def __init__(self, size, inside, pos, main, pool_pos, pool_rows, fill_pos) -> None:
        self.size, self.inside, self.pos, self.main = size, inside, pos, main
        self.pool_pos, self.pool_rows, self.fill_pos = pool_pos, pool_rows, fill_pos

    def __call__(self, data: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        if self.pos is None:
            out = data.index_select(0, self.main)
        else:
            c = data.shape[1]
            out = data.new_empty(self.size, c)
            for src, dst, n, s, p in self.inside:
                e = s + 2 * p
                out[dst : dst + n * e * e].view(n, e, e, c)[:, p : p + s, p : p + s] = data[src : src + n * s * s].view(
                    n, s, s, c
                )
            if self.pos.numel():
                out.index_copy_(0, self.pos, data.index_select(0, self.main))
        if self.pool_pos.numel():
            r = self.pool_rows  # summed in F.avg_pool2d's order: the same numbers
            pooled = data.index_select(0, r[0]) + data.index_select(0, r[1])
            pooled = (pooled + data.index_select(0, r[2]) + data.index_select(0, r[3])) / 4
            out.index_copy_(0, self.pool_pos, pooled)
        if self.fill_pos.numel():
            out.index_fill_(0, self.fill_pos, fill)
        return out


class DualResContext(BlockContext):
    """BlockPad between the high- and low-resolution blocks of one frame, on features kept as
    :class:`Rows`.

    Every padded layer reads its input through one :class:`Gather` built (once per forward and
    geometry) from the block grid: a pixel in a block's border comes from the neighbouring block at
    the same resolution as is, from a low neighbour of a high block by nearest ×2 upsampling (the
    low pixel it falls in), from a high neighbour of a low block as the 2×2 average of its pixels,
    and beyond the image border it is the op's fill value. Nothing is built at full image size, so
    the cost follows the blocks run; the features of low blocks stay at low resolution.

    Convolutions: below :data:`GEMM_MIN_DEPTH` the gather yields the padded blocks of both
    resolutions (channels last), each resolution runs one direct conv with padding 0; from it on the
    gather yields every output pixel's taps (im2col) and one matrix product serves both resolutions.
    Either way the numbers are the whole-map definition's: with every block high the network is the
    dense one (to float round-off)."""

    def __init__(self, high: torch.Tensor) -> None:
        b, gh, gw = high.shape
        self.grid = Grid(b, gh, gw)
        self.high = high
        flat = high.reshape(-1)
        dev = high.device
        self.index = {"high": flat.nonzero()[:, 0], "low": (~flat).nonzero()[:, 0]}
        self.counts = {g: int(i.numel()) for g, i in self.index.items()}
        # each block's row in its group's tensor
        self.rows = torch.full((flat.numel(),), -1, dtype=torch.long, device=dev)
        for g in ("high", "low"):
            self.rows[self.index[g]] = torch.arange(self.counts[g], device=dev)
        # the block itself and its 8 neighbours, per group: their group (0 high, 1 low, −1 beyond the
        # image border) and row in that group; direction (di + 1)·3 + dj + 1
        framed = torch.full((b, gh + 2, gw + 2), -1, dtype=torch.long, device=dev)
        framed[:, 1:-1, 1:-1] = torch.arange(flat.numel(), device=dev).view(b, gh, gw)
        nb = torch.stack(
            [
                framed[:, 1 + di : 1 + di + gh, 1 + dj : 1 + dj + gw].reshape(-1)
                for di in (-1, 0, 1)
                for dj in (-1, 0, 1)
            ],
            1,
        )
        inside, safe = nb >= 0, nb.clamp(min=0)
        group = torch.where(inside, (~flat[safe]).long(), -1)
        row = torch.where(inside, self.rows[safe], 0)
        self._neighbours = {g: (group[self.index[g]], row[self.index[g]]) for g in ("high", "low")}
        self._plans: dict[tuple, object] = {}

    # ---- geometry -------------------------------------------------------------------------------
    def _groups(self, side: int) -> list[tuple[str, int, int]]:
        """(group, blocks, side) of the non-empty groups at a high-block side of ``side`` px."""
        return [(g, self.counts[g], s) for g, s in (("high", side), ("low", side // 2)) if self.counts[g]]

    def _base(self, g: str, side: int) -> int:
        """The first row of group ``g`` at a high-block side of ``side`` px."""
        return 0 if g == "high" else self.counts["high"] * side * side

    def _check(self, name: str, side: int, stride: int, pad: int, k: int, dilation: int) -> None:
        for g, _, s in self._groups(side):
            check_side(name, g, s, stride)
            if pad > s:
                raise BlockSizeError(
                    f"{name}: padding {pad} is wider than the {g}-resolution blocks of {s} px here; use a larger block size"
                )
            if (s + 2 * pad - dilation * (k - 1) - 1) // stride + 1 != s // stride:
                raise TypeError(
                    f"{name}: block-wise execution needs 'same' padding (output {s // stride} px from "
                    f"{s} px at stride {stride}); kernel {k}, padding {pad}, dilation {dilation} do not give it"
                )

    def gather(self, side: int, kind: str, k: int = 1, stride: int = 1, pad: int = 0, dilation: int = 1) -> Gather:
        """The :class:`Gather` of a padded layer (``kind`` "pad" or "taps", see :func:`_template`) on
        rows of a high-block side of ``side`` px: both groups, the high group's rows first."""
        key = (kind, side, k, stride, pad, dilation)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._build_gather(side, kind, k, stride, pad, dilation)
        return plan

    def _build_gather(self, side: int, kind: str, k: int, stride: int, pad: int, dilation: int) -> Gather:
        dev = self.high.device
        base_low = self._base("low", side)
        parts: dict[str, list[torch.Tensor]] = {"pos": [], "main": [], "pool_pos": [], "pool_rows": [], "fill": []}
        inside, offset = [], 0
        for g, n, s in self._groups(side):
            places, direction, same, half, double, size = _template(s, kind, k, stride, pad, dilation, dev)
            if kind == "pad":
                inside.append((self._base(g, side), offset, n, s, pad))
            nb_group, nb_row = (t[:, direction] for t in self._neighbours[g])  # blocks × pixels read
            pos = (offset + torch.arange(n, device=dev)[:, None] * size + places).reshape(-1)
            own = torch.add(same + self._base(g, side), nb_row, alpha=s * s)
            if g == "high":  # a low neighbour: the low pixel this one falls in (nearest ×2)
                up = torch.add(half + base_low, nb_row, alpha=(s // 2) ** 2)
                main = torch.where(nb_group == 0, own, torch.where(nb_group == 1, up, 0))
            else:  # a high neighbour: the 2×2 average of its 4 pixels, patched in after the gather
                main = torch.where(nb_group == 1, own, 0)
                where = (nb_group == 0).reshape(-1).nonzero()[:, 0]
                if where.numel():
                    w = 2 * s
                    first = torch.add(double[where % places.numel()], nb_row.reshape(-1)[where], alpha=w * w)
                    parts["pool_pos"].append(pos[where])
                    parts["pool_rows"].append(torch.stack([first, first + 1, first + w, first + w + 1]))
            parts["fill"].append(pos[(nb_group < 0).reshape(-1)])
            parts["pos"].append(pos)
            parts["main"].append(main.reshape(-1))
            offset += n * size
        cat = {
            key: torch.cat(v, -1)
            if v
            else torch.zeros((4, 0) if key == "pool_rows" else 0, dtype=torch.long, device=dev)
            for key, v in parts.items()
        }
        return Gather(
            offset,
            inside,
            cat["pos"] if kind == "pad" else None,
            cat["main"],
            cat["pool_pos"],
            cat["pool_rows"],
            cat["fill"],
        )

    def _rows_index(self, side: int, out_side: int, whole: bool) -> torch.Tensor:
        """Source rows (at a high-block side of ``side``) of nearest upsampling to ``out_side``: per
        block (``whole``: per pixel of the full map, low blocks ×2 more)."""
        key = ("up", side, out_side, whole)
        index = self._plans.get(key)
        if index is not None:
            return index
        dev, f = self.high.device, out_side // side
        if whole:  # every block at out_side px, in the full map's pixel order
            y = torch.arange(out_side, device=dev)
            parts = []
            for g, s, div in (("high", side, f), ("low", side // 2, 2 * f)):
                local = (y[:, None] // div) * s + y[None, :] // div  # out_side² pixels → row in block
                parts.append(self._base(g, side) + self.rows[:, None] * (s * s) + local.reshape(-1))
            table = torch.where(self.high.reshape(-1, 1), parts[0], parts[1])
            g = self.grid
            index = table.view(g.batch, g.gh, g.gw, out_side, out_side).permute(0, 1, 3, 2, 4).reshape(-1)
        else:
            parts = []
            for g, n, s in self._groups(side):
                y = torch.arange(s * f, device=dev)
                local = (y[:, None] // f) * s + y[None, :] // f
                parts.append(self._base(g, side) + torch.arange(n, device=dev)[:, None] * (s * s) + local.reshape(-1))
            index = torch.cat([p.reshape(-1) for p in parts])
        self._plans[key] = index
        return index

    # ---- between block tensors and rows ---------------------------------------------------------
    def rows_of(self, feats: Groups) -> Rows:
        """{"high": N₁×C×s×s, "low": N₂×C×s/2×s/2} → :class:`Rows`."""
        high, low = feats["high"], feats["low"]
        side = high.shape[-1] if self.counts["high"] else 2 * low.shape[-1]
        parts = [feats[g].permute(0, 2, 3, 1).reshape(-1, feats[g].shape[1]) for g, _, _ in self._groups(side)]
        return Rows(parts[0] if len(parts) == 1 else torch.cat(parts), side)

    def _per_group(self, padded: torch.Tensor, side: int, pad: int, op) -> torch.Tensor:
        """``op`` on the padded blocks of each group (channels last), the outputs back as rows."""
        outs, start, c = [], 0, padded.shape[1]
        for _, n, s in self._groups(side):
            e = s + 2 * pad
            y = op(padded[start : start + n * e * e].view(n, e, e, c).permute(0, 3, 1, 2))
            outs.append(y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]))
            start += n * e * e
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    # ---- BlockPad on block tensors (the definition's interface) ----------------------------------
    def pad(self, name: str, feats: Groups, pad: int, fill: float) -> Groups:
        """Each group's blocks with ``pad`` pixels of BlockPad around them (contiguous tensors)."""
        x = self.rows_of(feats)
        self._check(name, x.side, 1, pad, 2 * pad + 1, 1)
        padded = self.gather(x.side, "pad", pad=pad)(x.data, fill)
        out, start, c = {}, 0, padded.shape[1]
        for g, s in (("high", x.side), ("low", x.side // 2)):
            n, e = self.counts[g], s + 2 * pad
            out[g] = padded[start : start + n * e * e].view(n, e, e, c).permute(0, 3, 1, 2).contiguous()
            start += n * e * e
        return out

    # ---- the executor's ops on Rows -------------------------------------------------------------
    def conv(self, name: str, conv: nn.Conv2d, x: Rows) -> Rows:
        (k, kw), (stride, _), (pad, _) = check_conv(name, conv)
        dilation = _pair(conv.dilation)
        if k != kw or dilation[0] != dilation[1]:
            raise TypeError(f"{name}: block-wise execution needs a square kernel and dilation, got {conv.kernel_size}")
        dilation = dilation[0]
        self._check(name, x.side, stride, pad, k, dilation)
        data, cout = x.data, conv.out_channels
        if conv.groups == 1 and (k == 1 or conv.in_channels * k * k >= GEMM_MIN_DEPTH):
            # im2col by one gather, one matrix product for both resolutions
            cols = data if k == 1 and stride == 1 else self.gather(x.side, "taps", k, stride, pad, dilation)(data)
            cols = cols.view(-1, k * k * data.shape[1])  # per output pixel (tap, channel)
            if k == 1:
                weight = conv.weight.reshape(cout, -1).t()
            elif cols.numel() <= conv.weight.numel():  # reorder the smaller of the two to (channel, tap)
                cols = cols.view(-1, k * k, data.shape[1]).transpose(1, 2).reshape(cols.shape[0], -1)
                weight = conv.weight.reshape(cout, -1).t()
            else:
                weight = conv.weight.permute(0, 2, 3, 1).reshape(cout, -1).t()
            out = cols @ weight if conv.bias is None else torch.addmm(conv.bias, cols, weight)
        else:
            padded = data if pad == 0 else self.gather(x.side, "pad", pad=pad)(data)
            # the conv of a channels-last input takes a channels-last weight: convert it once, not per group
            weight = conv.weight.contiguous(memory_format=torch.channels_last)
            out = self._per_group(
                padded, x.side, pad, lambda t: F.conv2d(t, weight, conv.bias, stride, 0, conv.dilation, conv.groups)
            )
        self.count(out, conv)
        return Rows(out, x.side // stride)

    def maxpool(self, name: str, pool: nn.MaxPool2d, x: Rows) -> Rows:
        k, stride, pad = check_maxpool(name, pool)
        dilation = _pair(pool.dilation)[0]
        self._check(name, x.side, stride, pad, k, dilation)
        padded = x.data if pad == 0 else self.gather(x.side, "pad", pad=pad)(x.data, float("-inf"))
        out = self._per_group(padded, x.side, pad, lambda t: F.max_pool2d(t, k, stride, 0, dilation))
        return Rows(out, x.side // stride)

    def pointwise(self, name: str, fn, x: Rows) -> Rows:
        """One call for both resolutions (BatchNorm2d sees the pixels as a batch of 1×1 maps)."""
        if isinstance(fn, nn.modules.batchnorm._BatchNorm):
            return Rows(fn(x.data.view(*x.data.shape, 1, 1)).view(x.data.shape), x.side)
        return Rows(fn(x.data), x.side)

    def add(self, a: Rows, b: Rows) -> Rows:
        if a.side != b.side or a.data.shape != b.data.shape:
            raise ValueError(f"DualResContext.add: {a} and {b} differ")
        return Rows(a.data + b.data, a.side)

    def resize(self, x: Rows, like: Rows) -> Rows:
        if x.side == like.side:
            return x
        if like.side % x.side:
            raise ValueError(f"DualResContext.resize: {like.side} px is not a multiple of {x.side} px")
        return Rows(x.data.index_select(0, self._rows_index(x.side, like.side, whole=False)), like.side)

    def assemble(self, name: str, x: Rows) -> torch.Tensor:
        """The full map B×C×(gh·s)×(gw·s) of ``x`` (low blocks upsampled ×2, nearest)."""
        g, c = self.grid, x.data.shape[1]
        full = x.data.index_select(0, self._rows_index(x.side, x.side, whole=True))
        return full.view(g.batch, g.gh * x.side, g.gw * x.side, c).permute(0, 3, 1, 2).contiguous()


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
        feats = ctx.rows_of({"high": blocks[ctx.index["high"]], "low": _pool2(blocks[ctx.index["low"]])})
        self.context = ctx  # its conv_flops: what this forward executed
        return ctx, run_blockwise(self.backbone, feats, ctx)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, target={self.target}, policy={self.policy_name!r}"
