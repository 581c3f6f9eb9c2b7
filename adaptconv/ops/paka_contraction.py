"""PAKA's contraction without the unfold (used by :mod:`adaptconv.ops.paka`):

    y[b,o,p] = Σ_j Σ_c W[o,c,j] · x_j[b,c,p] · (1 + tanh(A_c[b,c,p] + A_s[b,j,p])) + bias[o]

The factor is per (channel, tap) and pixel, so it cannot leave the channel sum: this is the tiled-GEMM
loop of :mod:`adaptconv.ops.tiling` with PAKA's per-tap work (:class:`_PakaTaps`), the factor
recomputed per tile in backward rather than stored. On CPU tensors (float32/float64, ``config.cpu_kernels``
on) the compiled kernels of :mod:`adaptconv.ops.cpu_paka` run instead; this PyTorch path is the fallback
and their reference.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import cpu_paka
from .tiling import (
    Geometry,
    Plan,
    Tile,
    aliases,
    plan,
    row_span,
    scatter_add,
    tap_grouped,
    tile_rows,
    tiled_gemm,
    tiled_gemm_backward,
)

__all__ = ["paka_contract", "paka_forward", "paka_backward"]


def _gc_view(t: torch.Tensor, tile: Tile, g: int) -> torch.Tensor:
    """t[b0:b1, :, r0:r1] (nb×C×rows×W') as g×(C/g)×nb×rows×W'."""
    v = t[tile.b0 : tile.b1, :, tile.r0 : tile.r1]
    nb, c = v.shape[:2]
    return v.view(nb, g, c // g, *v.shape[2:]).permute(1, 2, 0, 3, 4)


def _gc_tile(t: torch.Tensor, tile: Tile, g: int, buf: torch.Tensor) -> torch.Tensor:
    """:func:`_gc_view`, copied into ``buf`` (contiguous) when the channel stride aliases."""
    v = _gc_view(t, tile, g)
    if not aliases(t.stride(1)):
        return v
    out = buf[: v.numel()].view(v.shape)
    out.copy_(v)
    return out


class _PakaTaps:
    """PAKA's per-tap work on one tile (:class:`adaptconv.ops.tiling.TileTaps`): X̃_j = x_j ⊙ (1 + tanh_j),
    tanh_j = tanh(A_c + A_s,j). The forward computes tanh_j tap by tap into the output; the backward
    computes all T of them once per tile (``tbuf``) for both the ∂W columns and the input gradients."""

    def __init__(self, a_c, a_s, tile: Tile, geom: Geometry, groups: int, scratch, xc=None, grads=None):
        self.tile, self.geom, self.groups = tile, geom, groups
        self.ac = _gc_tile(a_c, tile, groups, scratch["ac"])
        self.ats = tile_rows(a_s, tile).unbind(1)
        self.th = None
        if grads is None:
            return
        self.gx, self.gac, self.gas = grads
        t, c, wo = geom.taps, a_c.shape[1], a_c.shape[-1]
        n = tile.nb * tile.rows * wo
        self.th = scratch["tanh"][: t * c * n].view(t, groups, c // groups, tile.nb, tile.rows, wo)
        for j in range(t):
            torch.add(self.ac, self.ats[j], out=self.th[j]).tanh_()
        self.gxc = torch.zeros_like(xc) if self.gx is not None else None
        self.gacc = None
        if self.gac is not None:
            self.gacc = _gc_view(self.gac, tile, groups)
            if aliases(self.gac.stride(1)):
                self.gacc = scratch["gac"][: c * n].view(self.gacc.shape).zero_()
        self.one = a_c.new_ones(())

    def weighted(self, j, xj, out):
        if self.th is None:  # forward: tanh_j into out, then x_j·(1 + tanh_j)
            torch.add(self.ac, self.ats[j], out=out).tanh_()
            torch.addcmul(xj, out, xj, out=out)
        else:
            torch.addcmul(xj, self.th[j], xj, out=out)

    def backward(self, j, xj, q, p):
        th = self.th[j]
        if self.gxc is not None:
            tap_grouped(self.gxc, self.geom, j, self.tile.rows, q.shape[-1], self.groups).add_(q).addcmul_(q, th)
        if self.gacc is not None or self.gas is not None:
            torch.addcmul(self.one, th, th, value=-1, out=th)  # 1 − tanh² (the ∂W columns are done)
            torch.mul(q, xj, out=p).mul_(th)
            if self.gacc is not None:
                self.gacc.add_(p)
            if self.gas is not None:
                self.gas[self.tile.b0 : self.tile.b1, j, self.tile.r0 : self.tile.r1] = p.sum((0, 1))

    def finish(self):
        tile = self.tile
        if self.gacc is not None and aliases(self.gac.stride(1)):  # accumulated in a buffer: copy it back
            _gc_view(self.gac, tile, self.groups).copy_(self.gacc)
        if self.gxc is not None:
            scatter_add(
                self.gx, self.gxc, tile.b0, tile.b1, *row_span(self.geom, tile.r0, tile.r1), self.geom.pads, "zeros"
            )


def _scratch(x: torch.Tensor, tiles: Plan, t: int, backward: bool, need_ac: bool = False) -> dict:
    c, most = x.shape[1], tiles.most
    out = {"ac": x.new_empty(c * most)}
    if backward:
        out["tanh"] = x.new_empty(t * c * most)  # tanh(A_c + A_s[j]) of every tap
        out["gac"] = x.new_empty(c * most) if need_ac else None
    return out


def paka_forward(x, a_c, a_s, weight, bias, geom: Geometry, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    tiles = plan(b, *geom.out_size(h, w), c)
    scratch = _scratch(x, tiles, geom.taps, backward=False)
    return tiled_gemm(
        x, weight, bias, geom, groups, lambda tile, xc: _PakaTaps(a_c, a_s, tile, geom, groups, scratch), tiles
    )


def paka_backward(x, a_c, a_s, weight, gy, geom: Geometry, groups: int, need_x, need_ac, need_as, need_w):
    b, c, h, w = x.shape
    tiles = plan(b, *geom.out_size(h, w), c)
    scratch = _scratch(x, tiles, geom.taps, backward=True, need_ac=need_ac)
    gx = torch.zeros_like(x) if need_x else None
    gac = a_c.new_zeros(a_c.shape) if need_ac else None
    gas = a_s.new_empty(a_s.shape) if need_as else None
    gw = tiled_gemm_backward(
        x,
        weight,
        gy,
        geom,
        groups,
        lambda tile, xc: _PakaTaps(a_c, a_s, tile, geom, groups, scratch, xc, (gx, gac, gas)),
        need_w,
        need_x or need_ac or need_as,
        tiles,
    )
    return gx, gac, gas, gw


class _PakaContract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a_c, a_s, weight, bias, geom, groups):
        ctx.geom, ctx.groups, ctx.has_bias = geom, groups, bias is not None
        # the compiled CPU kernels where they apply (they keep the padded input for the backward)
        ctx.compiled = cpu_paka.usable(x, a_c, a_s, weight, bias)
        if ctx.compiled:
            y, saved = cpu_paka.paka_forward(x, a_c, a_s, weight, bias, geom, groups)
        else:
            y, saved = paka_forward(x, a_c, a_s, weight, bias, geom, groups), x
        ctx.save_for_backward(saved, a_c, a_s, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        saved, a_c, a_s, weight = ctx.saved_tensors
        nx, nac, nas, nw, nb = ctx.needs_input_grad[:5]
        run = cpu_paka.paka_backward if ctx.compiled else paka_backward
        gx, gac, gas, gw = run(saved, a_c, a_s, weight, gy, ctx.geom, ctx.groups, nx, nac, nas, nw)
        gb = gy.sum((0, 2, 3)) if ctx.has_bias and nb else None
        return gx, gac, gas, gw, gb, None, None


def paka_contract(x, channel_att, tap_att, weight, bias, geom: Geometry, groups: int = 1) -> torch.Tensor:
    """PAKA without the unfold: ``channel_att`` B×C×H'×W', ``tap_att`` B×T×H'×W' (batch 1 broadcasts)."""
    b, c = x.shape[:2]
    ho, wo = geom.out_size(*x.shape[-2:])
    channel_att = channel_att.expand(b, c, ho, wo)
    tap_att = tap_att.expand(b, geom.taps, ho, wo)
    return _PakaContract.apply(x, channel_att, tap_att, weight, bias, geom, groups)
