"""The compiled CPU kernels of the per-pixel, per-channel-group filtering
(:func:`adaptconv.ops.dfn_contraction.dynamic_filter`: DFN, PAC with shared filters, PAC pooling,
CARAFE's reassembly, PAC-CRF's messages):

    y[b,c,p] = Σ_j F[b,g(c),j,p] · x_j[b,c,p]

DDF's decoupled filter (:func:`adaptconv.ops.ddf.ddf2d`) is the same sum with a per-(channel, tap) scale,
``F[b,h(c),j,p]·S[b,c,j]``, and runs here too (``scale``). There is no GEMM, so each direction is one pass of ``csrc/dynfilter_cpu.cpp`` over the padded input:
forward in parallel over (sample, channel) planes; backward ∂x over the same planes and ∂F over
(sample, group, output row). The PyTorch path runs the k² taps as separate tensor operations per tile,
which at small maps costs more in per-call overhead than in arithmetic. The padded input is what the
backward reads. Used for CPU tensors in float32/float64 while ``config.cpu_kernels`` is on and the
kernels (this library and PAC's, whose padding it shares) build.
"""

from __future__ import annotations

import ctypes

import torch

from . import cpu_pac
from .cpu_build import SUFFIX, Kernels, ptr
from .tiling import Geometry

__all__ = ["usable", "available", "status", "dynamic_forward", "dynamic_backward"]

ABI = 2


def _declare(lib: ctypes.CDLL) -> None:
    p, i32 = ctypes.c_void_p, ctypes.c_int
    for sfx in SUFFIX.values():
        getattr(lib, f"dynfilter_forward_{sfx}").argtypes = [p] * 6 + [i32]
        getattr(lib, f"dynfilter_backward_{sfx}").argtypes = [p] * 9 + [i32]
        for name in ("dynfilter_forward", "dynfilter_backward"):
            getattr(lib, f"{name}_{sfx}").restype = None


KERNELS = Kernels("dynfilter_cpu", ABI, _declare, "dynamic-filter", "DFN and its users run on the PyTorch path")
status, _fn = KERNELS.status, KERNELS.fn


def available() -> bool:
    return KERNELS.available() and cpu_pac.available()


def usable(*tensors: torch.Tensor | None) -> bool:
    """CPU tensors of one dtype (float32/float64), and these kernels and PAC's (the padding) are on."""
    return KERNELS.usable(*tensors) and cpu_pac.available()


def _dims(xp: torch.Tensor, g: int, ho: int, wo: int) -> ctypes.Array:
    b, c, hp, wp = xp.shape
    return (ctypes.c_int64 * 7)(b, c, g, hp, wp, ho, wo)


def dynamic_forward(x, filters, geom: Geometry, scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, xp): ``filters`` B×G×T×H'×W', ``scale`` B×C×T or None (DDF's channel filter);
    ``xp`` (the zero-padded input) is what :func:`dynamic_backward` reads."""
    b, c, h, w = x.shape
    ho, wo = geom.out_size(h, w)
    xp = cpu_pac._pad(x, geom.pads, "constant")
    f = filters.contiguous()
    s = None if scale is None else scale.contiguous()
    y = x.new_empty(b, c, ho, wo)
    _fn("dynfilter_forward", x.dtype)(
        ptr(xp),
        ptr(f),
        ptr(s),
        ptr(y),
        _dims(xp, f.shape[1], ho, wo),
        cpu_pac._geom_array(geom),
        torch.get_num_threads(),
    )
    return y, xp


def dynamic_backward(xp, filters, gy, geom: Geometry, need_x: bool, need_f: bool, scale=None, need_s=False):
    """(∂x, ∂filters), each None where not needed, and with a ``scale`` also ∂scale; ``xp`` is the
    forward's padded input."""
    ho, wo = gy.shape[-2:]
    f = filters.contiguous()
    s = None if scale is None else scale.contiguous()
    gy = gy.contiguous()
    gxp = torch.empty_like(xp) if need_x else None  # written whole by the kernel
    gf = torch.empty_like(f) if need_f else None
    gs = torch.empty_like(s) if (s is not None and need_s) else None
    _fn("dynfilter_backward", xp.dtype)(
        ptr(xp),
        ptr(f),
        ptr(s),
        ptr(gy),
        ptr(gxp),
        ptr(gf),
        ptr(gs),
        _dims(xp, f.shape[1], ho, wo),
        cpu_pac._geom_array(geom),
        torch.get_num_threads(),
    )
    gx = cpu_pac._unpad(gxp, geom.pads, fold=False) if need_x else None
    return (gx, gf) if scale is None else (gx, gf, gs)
