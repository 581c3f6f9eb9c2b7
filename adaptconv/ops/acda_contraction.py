"""ACDA's contraction without the unfold and without storing Z (used by :mod:`adaptconv.ops.acda`):

    Z[b,c,m,p] = Σ_j D[b,m,j,p] · x_j[b,c,p];   y = Conv1×1(Z; coef) + bias

Per pixel, Z is the small product (M×T)·(T×C) of the atoms and the taps: per tile
(:mod:`adaptconv.ops.tiling`), the taps are laid out pixel-major (N×T×C, from a channels-last copy of
the tile) and Z is one batched matmul; the 1×1 mixing is a GEMM. Z is recomputed in backward, never
stored. On CPU tensors (float32/float64, ``config.cpu_kernels`` on) the compiled kernels of
:mod:`adaptconv.ops.cpu_acda` run instead; this PyTorch path is the fallback and their reference.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import cpu_acda
from .tiling import Geometry, Tile, gather, output_tile, output_view, plan, row_span, scatter_add

__all__ = ["acda_contract", "acda_forward", "acda_backward"]


def _tap_cl(xcl: torch.Tensor, geom: Geometry, j: int, rows: int, wo: int) -> torch.Tensor:
    """Tap j of a channels-last padded tile (nb×H_in×W_in×C): nb×rows×W'×C."""
    a, b = divmod(j, geom.kernel_size[1])
    s0, s1, s2, s3 = xcl.stride()
    return xcl.as_strided(
        (xcl.shape[0], rows, wo, xcl.shape[3]),
        (s0, s1 * geom.stride[0], s2 * geom.stride[1], s3),
        xcl.storage_offset() + a * geom.dilation[0] * s1 + b * geom.dilation[1] * s2,
    )


def _acda_tile(x, atoms, geom, tile: Tile, wo, xbuf, dbuf):
    """(padded tile, pixel-major taps N×T×C, pixel-major atoms N×M×T)."""
    b0, b1, r0, r1 = tile
    nb, rows = tile.nb, tile.rows
    c, (m, t) = x.shape[1], atoms.shape[1:3]
    n = nb * rows * wo
    lo, hi = row_span(geom, r0, r1)
    xc = gather(x, b0, b1, lo, hi, geom.pads, "zeros")
    xcl = xc.permute(0, 2, 3, 1).contiguous()
    cols = xbuf[: n * t * c].view(nb, rows, wo, t, c)
    for j in range(t):
        cols[:, :, :, j] = _tap_cl(xcl, geom, j, rows, wo)
    d = dbuf[: n * m * t].view(nb, rows, wo, m, t)
    d.copy_(atoms[b0:b1, :, :, r0:r1].permute(0, 3, 4, 1, 2))
    return xc, cols.view(n, t, c), d.view(n, m, t)


def _coef_matrix(coef: torch.Tensor, groups: int, m: int) -> torch.Tensor:
    """O×(C/g·M)×1×1 (index c·M + m) → g×(O/g)×(M·C/g) (index m·C/g + c)."""
    o = coef.shape[0]
    return coef.reshape(groups, o // groups, -1, m).transpose(2, 3).reshape(groups, o // groups, -1)


def _z_groups(z: torch.Tensor, g: int) -> torch.Tensor:
    """Z (N×M×C) → g×(M·C/g)×N."""
    n, m, c = z.shape
    return z.view(n, m, g, c // g).permute(2, 1, 3, 0).reshape(g, m * (c // g), n)


def acda_forward(x, atoms, coef, bias, geom: Geometry, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    m, t = atoms.shape[1:3]
    o = coef.shape[0]
    g, og = groups, o // groups
    ho, wo = geom.out_size(h, w)
    w2 = _coef_matrix(coef, g, m)
    y = x.new_empty(b, o, ho, wo)
    tiles = plan(b, ho, wo, c)
    xbuf, dbuf, zbuf, abuf = (x.new_empty(tiles.most * k) for k in (t * c, m * t, m * c, o))
    for tile in tiles.tiles:
        b0, b1, r0, r1 = tile
        nb, rows = tile.nb, tile.rows
        n = nb * rows * wo
        _, cols, d = _acda_tile(x, atoms, geom, tile, wo, xbuf, dbuf)
        z = torch.bmm(d, cols, out=zbuf[: n * m * c].view(n, m, c))
        acc = output_view(y, tile, g)
        direct = acc is not None
        if not direct:
            acc = abuf[: o * n].view(g, og, n)
        if g == 1:
            torch.mm(w2[0], z.view(n, m * c).t(), out=acc[0])
        else:
            torch.bmm(w2, _z_groups(z, g), out=acc)
        if not direct:
            y[b0:b1, :, r0:r1] = acc.view(o, nb, rows, wo).transpose(0, 1)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


def acda_backward(x, atoms, coef, gy, geom: Geometry, groups: int, need_x, need_d, need_w):
    b, c, h, w = x.shape
    m, t = atoms.shape[1:3]
    o = coef.shape[0]
    g, cg, og = groups, c // groups, o // groups
    ho, wo = geom.out_size(h, w)
    w2 = _coef_matrix(coef, g, m)
    gx = torch.zeros_like(x) if need_x else None
    gd = atoms.new_empty(atoms.shape) if need_d else None
    gw2 = torch.zeros_like(w2) if need_w else None
    tiles = plan(b, ho, wo, c)
    xbuf, dbuf, zbuf, gbuf, tbuf = (x.new_empty(tiles.most * k) for k in (t * c, m * t, m * c, o, t * c))
    for tile in tiles.tiles:
        b0, b1, r0, r1 = tile
        nb, rows = tile.nb, tile.rows
        n = nb * rows * wo
        lo, hi = row_span(geom, r0, r1)
        xc, cols, d = _acda_tile(x, atoms, geom, tile, wo, xbuf, dbuf)
        gyc = output_tile(gy, tile, g, gbuf)
        if need_w:
            z = torch.bmm(d, cols, out=zbuf[: n * m * c].view(n, m, c))
            if g == 1:
                gw2[0].addmm_(gyc[0], z.view(n, m * c))
            else:
                gw2.baddbmm_(gyc, _z_groups(z, g).transpose(1, 2))
        if need_x or need_d:
            gz = zbuf[: n * m * c].view(n, m, c)
            if g == 1:
                torch.mm(gyc[0].t(), w2[0], out=gz.view(n, m * c))
            else:
                gz.view(n, m, g, cg).copy_(torch.bmm(w2.transpose(1, 2), gyc).view(g, m, cg, n).permute(3, 1, 0, 2))
            if need_d:
                gdp = torch.bmm(gz, cols.transpose(1, 2))  # N×M×T
                gd[b0:b1, :, :, r0:r1] = gdp.view(nb, rows, wo, m, t).permute(0, 3, 4, 1, 2)
            if need_x:
                gcols = torch.bmm(d.transpose(1, 2), gz, out=tbuf[: n * t * c].view(n, t, c)).view(nb, rows, wo, t, c)
                gxcl = x.new_zeros(xc.shape[0], xc.shape[2], xc.shape[3], c)
                for j in range(t):
                    _tap_cl(gxcl, geom, j, rows, wo).add_(gcols[:, :, :, j])
                scatter_add(gx, gxcl.permute(0, 3, 1, 2), b0, b1, lo, hi, geom.pads, "zeros")
    gw = None
    if need_w:
        gw = gw2.view(g, og, m, cg).transpose(2, 3).reshape(coef.shape)
    return gx, gd, gw


class _AcdaContract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, atoms, coef, bias, geom, groups):
        ctx.geom, ctx.groups, ctx.has_bias = geom, groups, bias is not None
        # the compiled CPU kernels where they apply (they keep the padded input for the backward)
        ctx.compiled = cpu_acda.usable(x, atoms, coef, bias)
        if ctx.compiled:
            y, saved = cpu_acda.acda_forward(x, atoms, coef, bias, geom, groups)
        else:
            y, saved = acda_forward(x, atoms, coef, bias, geom, groups), x
        ctx.save_for_backward(saved, atoms, coef)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        saved, atoms, coef = ctx.saved_tensors
        nx, nd, nw, nb = ctx.needs_input_grad[:4]
        run = cpu_acda.acda_backward if ctx.compiled else acda_backward
        gx, gd, gw = run(saved, atoms, coef, gy, ctx.geom, ctx.groups, nx, nd, nw)
        gb = gy.sum((0, 2, 3)) if ctx.has_bias and nb else None
        return gx, gd, gw, gb, None, None


def acda_contract(x, atoms, coef, bias, geom: Geometry, groups: int = 1) -> torch.Tensor:
    """ACDA without the unfold (and without storing Z): ``atoms`` B×M×T×H'×W' (batch 1 broadcasts),
    ``coef`` O×(C/g·M)×1×1 with input index c·M + m."""
    b = x.shape[0]
    ho, wo = geom.out_size(*x.shape[-2:])
    atoms = atoms.expand(b, atoms.shape[1], geom.taps, ho, wo)
    return _AcdaContract.apply(x, atoms, coef, bias, geom, groups)
