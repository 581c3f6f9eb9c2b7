"""DFN's contraction without the unfold: per-pixel, per-channel-group filtering.

    z[b,c,p] = Σ_j F[b,g(c),j,p] · x_j[b,c,p]          (no channel mixing)

:func:`dynamic_filter` is DFN's local filtering layer (:mod:`adaptconv.ops.dfn`); the other operators
whose per-pixel filter does not mix channels run on it too: PAC with ``shared_filters`` and PAC pooling
(:mod:`adaptconv.ops.pac`), CARAFE's reassembly and PAC-CRF's message passing. A custom autograd
Function accumulates over the k² taps tile by tile (:mod:`adaptconv.ops.tiling`) and recomputes the
taps in backward, never holding the B·C·k²·H'·W' unfold. On CPU tensors (float32/float64,
``config.cpu_kernels`` on) the compiled kernels of :mod:`adaptconv.ops.cpu_dynfilter` run instead; this
PyTorch path is the fallback and their reference.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import cpu_dynfilter
from .tiling import Geometry, gather, plan, row_span, scatter_add, tap

__all__ = ["dynamic_filter", "dynamic_forward", "dynamic_backward"]


def dynamic_forward(x, filters, geom: Geometry) -> torch.Tensor:
    b, c, h, w = x.shape
    g = filters.shape[1]
    cg = c // g
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    y = x.new_zeros(b, c, ho, wo)
    for b0, b1, r0, r1 in plan(b, ho, wo, c).tiles:
        nb, rows = b1 - b0, r1 - r0
        xc = gather(x, b0, b1, *row_span(geom, r0, r1), geom.pads, "zeros")
        fc = filters[b0:b1, :, :, r0:r1]
        yc = y[b0:b1, :, r0:r1].view(nb, g, cg, rows, wo)
        for j in range(t):
            yc.addcmul_(tap(xc, geom, j, rows, wo).view(nb, g, cg, rows, wo), fc[:, :, j, None])
    return y


def dynamic_backward(x, filters, gy, geom: Geometry, need_x: bool, need_f: bool):
    b, c, h, w = x.shape
    g = filters.shape[1]
    cg = c // g
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    gx = torch.zeros_like(x) if need_x else None
    gf = filters.new_empty(filters.shape) if need_f else None
    for b0, b1, r0, r1 in plan(b, ho, wo, c).tiles:
        nb, rows = b1 - b0, r1 - r0
        lo, hi = row_span(geom, r0, r1)
        xc = gather(x, b0, b1, lo, hi, geom.pads, "zeros")
        fc = filters[b0:b1, :, :, r0:r1]
        gyc = gy[b0:b1, :, r0:r1].reshape(nb, g, cg, rows, wo)
        gxc = torch.zeros_like(xc) if need_x else None
        for j in range(t):
            if need_f:
                gf[b0:b1, :, j, r0:r1] = (gyc * tap(xc, geom, j, rows, wo).view(nb, g, cg, rows, wo)).sum(2)
            if need_x:
                tap(gxc, geom, j, rows, wo).view(nb, g, cg, rows, wo).addcmul_(gyc, fc[:, :, j, None])
        if need_x:
            scatter_add(gx, gxc, b0, b1, lo, hi, geom.pads, "zeros")
    return gx, gf


class _DynamicFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, filters, geom):
        ctx.geom = geom
        # the compiled CPU kernels where they apply (they keep the padded input for the backward)
        ctx.compiled = cpu_dynfilter.usable(x, filters)
        if ctx.compiled:
            y, saved = cpu_dynfilter.dynamic_forward(x, filters, geom)
        else:
            y, saved = dynamic_forward(x, filters, geom), x
        ctx.save_for_backward(saved, filters)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        saved, filters = ctx.saved_tensors
        run = cpu_dynfilter.dynamic_backward if ctx.compiled else dynamic_backward
        gx, gf = run(saved, filters, gy, ctx.geom, *ctx.needs_input_grad[:2])
        return gx, gf, None


def dynamic_filter(x: torch.Tensor, filters: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """``Σ_j F[b,g(c),j,p]·x_j[b,c,p]`` without the unfold; ``filters``: B×G×T×H'×W' (batch 1
    broadcasts; C % G == 0). No channel mixing: output B×C×H'×W'."""
    b = x.shape[0]
    ho, wo = geom.out_size(*x.shape[-2:])
    filters = filters.expand(b, filters.shape[1], geom.taps, ho, wo)
    return _DynamicFilter.apply(x, filters, geom)
