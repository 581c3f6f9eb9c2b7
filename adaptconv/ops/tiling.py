"""The tiling core shared by the pixel-adaptive contractions (PAC, PAKA, DFN, ACDA; CARAFE and PAC-CRF).

The straightforward formulation of a pixel-adaptive convolution unfolds the input into its k² window
taps (``B·C·k²·H'·W'`` values), weights them per pixel and contracts them with the weight, and
autograd keeps the unfold for the backward pass. The contractions built on this module compute the
same quantities without ever holding that tensor: they are custom autograd Functions that save only
their inputs and recompute the shifted taps in backward, and they work over *tiles* of output pixels
(whole samples when they are small, else blocks of output rows of one sample) sized so that one tap's
``C × pixels`` block has about ``config.chunk_elements`` elements: the temporaries of a tile stay in
cache whatever the image size, and peak memory is ``O(input + output + per-pixel weights + one tile)``.

What lives here:

- :class:`Geometry` (kernel, stride, pads, dilation) and :func:`geometry`;
- :class:`Tile`, :func:`plan` (the tiles of a B×H'×W' output) and the tile I/O: :func:`gather` (rows of
  a padded input), :func:`scatter_add` (its adjoint), :func:`tap` / :func:`tap_grouped` (one tap of a
  padded tile, as a strided view), :func:`output_view` / :func:`output_tile` / :func:`gemm_tile` (a
  tile of the output as a GEMM operand);
- the tiled-GEMM loops, which take the per-tap work of one operator as an argument
  (:class:`TileTaps`): :func:`gemm_columns` (per tile, fill the weighted taps stacked channel-major,
  then one GEMM with the weight), :func:`tiled_gemm` (the same, built tap by tap from a gathered tile)
  and :func:`tiled_gemm_backward` (∂W from the stacked taps in one GEMM; per tap j, ``q = W_jᵀ·gy``
  handed to the operator for the gradients of its inputs). PAC's PyTorch backend and PAKA are these
  loops with their own :class:`TileTaps`; PAC's compiled CPU backend calls :func:`gemm_columns` with a
  kernel that fills a whole tile.

Geometry: ``pads = (top, bottom, left, right)``; tap ``j = a·kw + b`` of output pixel ``(i, q)`` reads the
padded input at ``(i·sh + a·dh, q·sw + b·dw)``, exactly as ``F.unfold``. Inputs are zero padded, PAC
guides are replicate padded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from . import config
from .taps import conv_output_length

__all__ = [
    "Geometry",
    "geometry",
    "Tile",
    "Plan",
    "plan",
    "row_span",
    "gather",
    "scatter_add",
    "tap",
    "tap_grouped",
    "tile_rows",
    "aliases",
    "output_view",
    "output_tile",
    "gemm_tile",
    "TileTaps",
    "gemm_columns",
    "tiled_gemm",
    "tiled_gemm_backward",
]


# --------------------------------------------------------------------------------------------------
# Geometry
class Geometry(NamedTuple):
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int]

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (top, bottom, left, right), (dh, dw) = (
            self.kernel_size,
            self.stride,
            self.pads,
            self.dilation,
        )
        return conv_output_length(h, kh, sh, top + bottom, dh), conv_output_length(w, kw, sw, left + right, dw)

    @property
    def centre_taps(self) -> list[int]:
        """The window's middle tap(s): one for odd kernels, two or four for even ones (then averaged)."""
        kh, kw = self.kernel_size
        return [r * kw + q for r in sorted({(kh - 1) // 2, kh // 2}) for q in sorted({(kw - 1) // 2, kw // 2})]

    @property
    def symmetric(self) -> bool:
        """Stride 1 and an odd kernel of more than one tap: taps j and T−1−j mirror each other about the
        middle tap, so a distance to the window's centre needs each pair's difference once."""
        kh, kw = self.kernel_size
        return self.stride == (1, 1) and kh % 2 == 1 and kw % 2 == 1 and self.taps > 1


def geometry(kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> Geometry:
    """A :class:`Geometry` from pairs; ``padding`` is (ph, pw) or (top, bottom, left, right)."""
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    return Geometry(tuple(kernel_size), tuple(stride), padding, tuple(dilation))


# --------------------------------------------------------------------------------------------------
# Tiles
class Tile(NamedTuple):
    """Samples [b0, b1) and output rows [r0, r1) of them."""

    b0: int
    b1: int
    r0: int
    r1: int

    @property
    def nb(self) -> int:
        return self.b1 - self.b0

    @property
    def rows(self) -> int:
        return self.r1 - self.r0


class Plan(NamedTuple):
    tiles: list[Tile]
    most: int  # output pixels of the largest tile: the scratch buffers are sized by it


def plan(b: int, ho: int, wo: int, per_pixel: int, budget: int | None = None) -> Plan:
    """Tiles covering B×H': at most about ``budget/per_pixel`` pixels each (at least one output row;
    ``budget`` defaults to ``config.chunk_elements``); whole samples when one fits, else balanced
    blocks of output rows of one sample."""
    budget = config.chunk_elements if budget is None else budget
    tiles = []
    per_sample = per_pixel * ho * wo
    if per_sample <= budget:
        nb = max(1, budget // max(per_sample, 1))
        nb = math.ceil(b / math.ceil(b / nb))  # balanced
        tiles = [Tile(b0, min(b, b0 + nb), 0, ho) for b0 in range(0, b, nb)]
    else:
        rows = max(1, budget // max(per_pixel * wo, 1))
        n = math.ceil(ho / rows)
        rows = math.ceil(ho / n)
        tiles = [Tile(b0, b0 + 1, r0, min(ho, r0 + rows)) for b0 in range(b) for r0 in range(0, ho, rows)]
    return Plan(tiles, max(t.nb * t.rows for t in tiles) * wo)


def row_span(geom: Geometry, r0: int, r1: int) -> tuple[int, int]:
    """Padded-input rows [lo, hi) read by output rows [r0, r1)."""
    return r0 * geom.stride[0], (r1 - 1) * geom.stride[0] + (geom.kernel_size[0] - 1) * geom.dilation[0] + 1


def gather(t: torch.Tensor, b0: int, b1: int, lo: int, hi: int, pads, mode: str) -> torch.Tensor:
    """Rows [lo, hi) (padded coordinates) of samples b0:b1 of ``t`` padded by ``pads`` with zeros
    (``mode="zeros"``) or replication (``"replicate"``): nb×C×(hi-lo)×W_pad."""
    top, bottom, left, right = pads
    h, w = t.shape[-2:]
    src = t[b0:b1]
    if lo == 0 and hi == h + top + bottom:
        if any(pads):
            return F.pad(src, (left, right, top, bottom), mode="replicate" if mode == "replicate" else "constant")
        return src
    if mode == "replicate":
        i0, i1 = max(lo - top, 0), min(hi - top, h)
        if i1 > i0:  # rows beyond the image only where the tile reaches its top or bottom edge
            return F.pad(src[:, :, i0:i1], (left, right, i0 - (lo - top), (hi - top) - i1), mode="replicate")
        rows = (torch.arange(lo, hi, device=t.device) - top).clamp_(0, h - 1)
        out = src.index_select(2, rows)
        return F.pad(out, (left, right, 0, 0), mode="replicate") if left or right else out
    out = t.new_zeros(b1 - b0, t.shape[1], hi - lo, w + left + right)
    i0, i1 = max(lo - top, 0), min(hi - top, h)
    if i1 > i0:
        out[:, :, i0 + top - lo : i1 + top - lo, left : left + w] = src[:, :, i0:i1]
    return out


def scatter_add(gt: torch.Tensor, g: torch.Tensor, b0: int, b1: int, lo: int, hi: int, pads, mode: str) -> None:
    """The adjoint of :func:`gather`: add ``g`` (a padded chunk's gradient) into ``gt``."""
    top, bottom, left, right = pads
    h, w = gt.shape[-2:]
    dst = gt[b0:b1]
    if mode == "replicate":
        core = g[..., left : left + w]
        if left or right:
            core = core.clone()
            if left:
                core[..., :1] += g[..., :left].sum(-1, keepdim=True)
            if right:
                core[..., -1:] += g[..., left + w :].sum(-1, keepdim=True)
        # padded rows above the image read row 0, rows below it row h-1, the others their own row
        i0, i1 = max(lo, top), min(hi, top + h)
        if i1 > i0:
            dst[:, :, i0 - top : i1 - top] += core[:, :, i0 - lo : i1 - lo]
        if lo < top:
            dst[:, :, :1] += core[:, :, : min(hi, top) - lo].sum(2, keepdim=True)
        if hi > top + h:
            dst[:, :, -1:] += core[:, :, max(lo, top + h) - lo :].sum(2, keepdim=True)
        return
    i0, i1 = max(lo - top, 0), min(hi - top, h)
    if i1 > i0:
        dst[:, :, i0:i1] += g[:, :, i0 + top - lo : i1 + top - lo, left : left + w]


def tap(xc: torch.Tensor, geom: Geometry, j: int, rows: int, wo: int) -> torch.Tensor:
    """Tap ``j`` of a padded chunk (whose first row is the first output row's window top): nb×C×rows×W'."""
    kw = geom.kernel_size[1]
    a, b = divmod(j, kw)
    s0, s1, s2, s3 = xc.stride()
    return xc.as_strided(
        (xc.shape[0], xc.shape[1], rows, wo),
        (s0, s1, s2 * geom.stride[0], s3 * geom.stride[1]),
        xc.storage_offset() + a * geom.dilation[0] * s2 + b * geom.dilation[1] * s3,
    )


def tap_grouped(xc: torch.Tensor, geom: Geometry, j: int, rows: int, wo: int, g: int) -> torch.Tensor:
    """Tap j of a padded chunk as g×(C/g)×nb×rows×W' (channels first, the layout of the GEMMs)."""
    nb, c = xc.shape[:2]
    cg = c // g
    a, b = divmod(j, geom.kernel_size[1])
    s0, s1, s2, s3 = xc.stride()
    return xc.as_strided(
        (g, cg, nb, rows, wo),
        (cg * s1, s1, s0, s2 * geom.stride[0], s3 * geom.stride[1]),
        xc.storage_offset() + a * geom.dilation[0] * s2 + b * geom.dilation[1] * s3,
    )


def tile_rows(t: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The tile's part of a B×…×H'×W' tensor at the output grid."""
    return t[tile.b0 : tile.b1, ..., tile.r0 : tile.r1, :]


def aliases(stride: int) -> bool:
    """A channel stride that is a multiple of 2 KiB of floats maps every channel's row to the same
    cache sets (a 256×256 map: 256 KiB apart): GEMMs and passes over such views thrash the caches, so
    the tile is copied to a contiguous buffer instead."""
    return stride % 512 == 0


def output_view(y: torch.Tensor, tile: Tile, g: int) -> torch.Tensor | None:
    """y[b0:b1, :, r0:r1] as a g×(O/g)×N matrix view a GEMM can use directly, or None (then the tile
    goes through a contiguous buffer): one sample, and a channel stride that does not alias."""
    o, ho, wo = y.shape[1:]
    if tile.nb != 1 or aliases(ho * wo):
        return None
    return y[tile.b0].view(g, o // g, ho * wo)[:, :, tile.r0 * wo : tile.r1 * wo]


def output_tile(gy: torch.Tensor, tile: Tile, g: int, buf: torch.Tensor) -> torch.Tensor:
    """The tile of an output-shaped tensor (the output's gradient) as g×(O/g)×N: a view where
    :func:`output_view` gives one, else a copy into ``buf``."""
    gyc = output_view(gy, tile, g) if gy.is_contiguous() else None
    if gyc is None:
        o, wo = gy.shape[1], gy.shape[-1]
        n = tile.nb * tile.rows * wo
        gyc = buf[: o * n].view(g, o // g, n)
        gyc.view(o, tile.nb, tile.rows, wo).copy_(gy[tile.b0 : tile.b1, :, tile.r0 : tile.r1].transpose(0, 1))
    return gyc


def gemm_tile(y: torch.Tensor, w2: torch.Tensor, cols: torch.Tensor, tile: Tile, abuf: torch.Tensor) -> None:
    """y[b0:b1, :, r0:r1] = w2 @ cols (g×(O/g)×K @ g×K×N), straight into y when it is one sample."""
    g, og = w2.shape[:2]
    n = cols.shape[-1]
    acc = output_view(y, tile, g)
    if acc is not None:
        torch.bmm(w2, cols, out=acc)
        return
    acc = abuf[: g * og * n].view(g, og, n)
    torch.bmm(w2, cols, out=acc)
    y[tile.b0 : tile.b1, :, tile.r0 : tile.r1] = acc.view(g * og, tile.nb, tile.rows, y.shape[-1]).transpose(0, 1)


# --------------------------------------------------------------------------------------------------
# The tiled-GEMM loops:  y[b,o,p] = Σ_j Σ_c W[o,c,j] · X̃_j[b,c,p] + bias[o],  X̃_j the weighted tap j
#
# Per tile of N output pixels: the weighted taps stacked channel-major (C/g·k² × N, F.unfold's order,
# so the GEMM sums in nn.Conv2d's order and unit weights reproduce it exactly), contracted with W in one
# GEMM (forward, and ∂W in backward); per tap j in backward, q = W_jᵀ·gy (one GEMM) is the gradient of
# X̃_j, which the operator turns into the gradients of its inputs.
class TileTaps(Protocol):
    """An operator's per-tap work on one tile (built per tile, from the tile and its gathered input)."""

    def weighted(self, j: int, xj: torch.Tensor, out: torch.Tensor) -> None:
        """Write the weighted tap X̃_j into ``out``; ``xj`` is tap j of the tile (g×C/g×nb×rows×W')."""

    def backward(self, j: int, xj: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> None:
        """Accumulate the gradients of the operator's inputs from ``q`` = ∂loss/∂X̃_j (``p``: a scratch
        tensor of q's shape). Called for j = 0 … T−1 in order."""

    def finish(self) -> None:
        """After the tile's last tap: write what the tile accumulated (∂x into the whole input)."""


OpenTile = Callable[[Tile, torch.Tensor], TileTaps]


def gemm_columns(
    y: torch.Tensor, weight: torch.Tensor, groups: int, tiles: Plan, fill_columns: Callable[[Tile, torch.Tensor], None]
) -> None:
    """``y[tile] = W · columns`` for every tile: ``fill_columns(tile, cols)`` writes the tile's weighted
    taps stacked channel-major into ``cols`` (flat, g × (C/g·T) × N), ``W`` is O×(C/g)×kh×kw."""
    o, cg = weight.shape[:2]
    g, og, k = groups, o // groups, cg * weight.shape[2] * weight.shape[3]
    w2 = weight.reshape(g, og, k)
    cbuf = y.new_empty(g * k * tiles.most)
    abuf = y.new_empty(o * tiles.most)
    wo = y.shape[-1]
    for tile in tiles.tiles:
        n = tile.nb * tile.rows * wo
        cols = cbuf[: g * k * n]
        fill_columns(tile, cols)
        gemm_tile(y, w2, cols.view(g, k, n), tile, abuf)


def tiled_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geom: Geometry,
    groups: int,
    open_tile: OpenTile,
    tiles: Plan | None = None,
) -> torch.Tensor:
    """The forward contraction, each tile's weighted taps built tap by tap by ``open_tile(tile, xc)``
    from the zero-padded tile ``xc``. ``tiles`` defaults to :func:`plan` with one tap's channels per pixel."""
    b, c, h, w = x.shape
    t, g = geom.taps, groups
    ho, wo = geom.out_size(h, w)
    tiles = plan(b, ho, wo, c) if tiles is None else tiles
    y = x.new_empty(b, weight.shape[0], ho, wo)

    def fill(tile: Tile, cols: torch.Tensor) -> None:
        xc = gather(x, tile.b0, tile.b1, *row_span(geom, tile.r0, tile.r1), geom.pads, "zeros")
        taps = open_tile(tile, xc)
        cols = cols.view(g, c // g, t, tile.nb, tile.rows, wo)
        for j in range(t):
            taps.weighted(j, tap_grouped(xc, geom, j, tile.rows, wo, g), cols[:, :, j])

    gemm_columns(y, weight, groups, tiles, fill)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


def _tap_weights(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """O×(C/g)×kh×kw → T×g×(O/g)×(C/g): the per-tap weight matrices."""
    o, cg = weight.shape[:2]
    return weight.reshape(groups, o // groups, cg, -1).permute(3, 0, 1, 2).contiguous()


def tiled_gemm_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    gy: torch.Tensor,
    geom: Geometry,
    groups: int,
    open_tile: OpenTile,
    need_w: bool,
    need_inputs: bool,
    tiles: Plan | None = None,
) -> torch.Tensor | None:
    """The backward of :func:`tiled_gemm`; returns ∂W (None without ``need_w``). Per tile: the weighted
    taps of all k² offsets stacked tap-major (T·C/g × N) for one GEMM giving ∂W (a long reduction over
    pixels is far more efficient with the taps stacked); then, with ``need_inputs``, per tap j the GEMM
    ``q = W_jᵀ·gy`` handed to the tile's :meth:`TileTaps.backward`, and :meth:`TileTaps.finish`."""
    b, c, h, w = x.shape
    o = weight.shape[0]
    t = geom.taps
    g, cg, og = groups, c // groups, o // groups
    ho, wo = geom.out_size(h, w)
    tiles = plan(b, ho, wo, c) if tiles is None else tiles
    wtt = _tap_weights(weight, g).transpose(2, 3).unbind(0)  # T × [g×(C/g)×(O/g)]
    gwt = x.new_zeros(g, t * cg, og) if need_w else None  # ∂Wᵀ, rows tap-major (j·C/g + c)
    most = tiles.most
    cbuf = x.new_empty(t * c * most) if need_w else None
    qbuf = x.new_empty(c * most)
    pbuf = x.new_empty(c * most)
    gbuf = x.new_empty(o * most)
    for tile in tiles.tiles:
        nb, rows = tile.nb, tile.rows
        n = nb * rows * wo
        xc = gather(x, tile.b0, tile.b1, *row_span(geom, tile.r0, tile.r1), geom.pads, "zeros")
        taps = open_tile(tile, xc)
        gyc = output_tile(gy, tile, g, gbuf)
        if need_w:
            cols = cbuf[: t * c * n].view(g, t, cg, nb, rows, wo)
            for j in range(t):
                taps.weighted(j, tap_grouped(xc, geom, j, rows, wo, g), cols[:, j])
            gwt.baddbmm_(cols.view(g, t * cg, n), gyc.transpose(1, 2))
        if need_inputs:
            q = qbuf[: c * n].view(g, cg, nb, rows, wo)
            qm = q.view(g, cg, n)
            p = pbuf[: c * n].view(g, cg, nb, rows, wo)
            for j in range(t):
                torch.bmm(wtt[j], gyc, out=qm)  # W_jᵀ gy: the gradient of the weighted tap j
                taps.backward(j, tap_grouped(xc, geom, j, rows, wo, g), q, p)
            taps.finish()
    if not need_w:
        return None
    return gwt.view(g, t, cg, og).permute(0, 3, 2, 1).reshape(weight.shape)
