"""PAKA's compiled CPU kernels: the attention-weighted taps in one C++ pass, the GEMMs in PyTorch (MKL).

    y[b,o,p] = Σ_j Σ_c W[o,c,j] · x_j[b,c,p] · (1 + tanh(A_c[b,c,p] + A_s[b,j,p])) + bias[o]

The structure of PAC's compiled backend (:mod:`adaptconv.ops.cpu_pac`), on the same tiles:

- forward, per tile: ``paka_cols`` (``csrc/paka_cpu.cpp``) writes the weighted taps (C·k² × pixels,
  F.unfold's order), one GEMM with the weight gives the tile's output;
- backward, per tile: one GEMM gives ``q = Wᵀ·gy`` for all taps; ``paka_backward`` then makes, in one
  pass over q, the columns again (for ∂W, one more GEMM), ∂x (``(1 + tanh)·q`` at each tap's shift),
  ∂A_c (``Σ_j q·x_j·(1 − tanh²)``) and ∂A_s (the same summed over the channels).

The PyTorch path (:mod:`adaptconv.ops.paka_contraction`) computes tanh tap by tap in separate tensor
operations and spends most of a training step there. float32's tanh here is a rational approximation
(max abs error 4e-7, the compiler vectorises it); float64 uses the C library's. The padded input is
what the backward reads, so x is padded once per step. Used for CPU tensors in float32/float64 while
``config.cpu_kernels`` is on and the kernels (this library and PAC's, whose padding it shares) build.
"""

from __future__ import annotations

import ctypes

import torch

from . import cpu_pac
from .cpu_build import SUFFIX, Kernels, ptr
from .tiling import Geometry, gemm_columns, output_tile

__all__ = ["usable", "available", "status", "paka_forward", "paka_backward"]

ABI = 1


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for sfx in SUFFIX.values():
        getattr(lib, f"paka_cols_{sfx}").argtypes = [p] * 4 + [i64] * 9 + [p, i32]
        getattr(lib, f"paka_backward_{sfx}").argtypes = [p] * 8 + [i64] * 9 + [i32, p, i32]
        for name in ("paka_cols", "paka_backward"):
            getattr(lib, f"{name}_{sfx}").restype = None


# -fno-trapping-math lets GCC vectorise the clamp inside tanh (nothing here enables FP traps)
KERNELS = Kernels(
    "paka_cpu", ABI, _declare, "PAKA", "PAKA runs on the slower PyTorch path", extra_flags=("-fno-trapping-math",)
)
status, _fn = KERNELS.status, KERNELS.fn


def available() -> bool:
    return KERNELS.available() and cpu_pac.available()


def usable(*tensors: torch.Tensor | None) -> bool:
    """CPU tensors of one dtype (float32/float64), and these kernels and PAC's (the padding) are on."""
    return KERNELS.usable(*tensors) and cpu_pac.available()


def _dims(c, xp, ho, wo, tile):
    return (c, *xp.shape[-2:], ho, wo, tile.b0, tile.nb, tile.r0, tile.rows)


def paka_forward(x, a_c, a_s, weight, bias, geom: Geometry, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, xp): ``a_c`` B×C×H'×W', ``a_s`` B×T×H'×W'; ``xp`` (the zero-padded input) is what
    :func:`paka_backward` reads."""
    b, c, h, w = x.shape
    ho, wo = geom.out_size(h, w)
    xp = cpu_pac._pad(x, geom.pads, "constant")
    ac, as_ = a_c.contiguous(), a_s.contiguous()
    y = x.new_empty(b, weight.shape[0], ho, wo)
    cols_fn, ga, nt = _fn("paka_cols", x.dtype), cpu_pac._geom_array(geom), torch.get_num_threads()

    def fill(tile, cols):
        cols_fn(ptr(xp), ptr(ac), ptr(as_), ptr(cols), *_dims(c, xp, ho, wo, tile), ga, nt)

    gemm_columns(y, weight, groups, cpu_pac._tiles(b, ho, wo, c * geom.taps), fill)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y, xp


def paka_backward(xp, a_c, a_s, weight, gy, geom: Geometry, groups: int, need_x, need_ac, need_as, need_w):
    """(∂x, ∂A_c, ∂A_s, ∂W), each None where not needed; ``xp`` is the forward's padded input."""
    top, bottom, left, right = geom.pads
    b, c, hp, wp = xp.shape
    ho, wo = geom.out_size(hp - top - bottom, wp - left - right)
    o, t = weight.shape[0], geom.taps
    g, cg, og = groups, c // groups, o // groups
    ac, as_ = a_c.contiguous(), a_s.contiguous()
    w2 = weight.reshape(g, og, cg * t)
    gxp = torch.empty_like(xp) if need_x else None  # zeroed by the kernel, sample by sample
    gac = torch.empty_like(ac) if need_ac else None
    gas = torch.empty_like(as_) if need_as else None
    gw2 = xp.new_zeros(g, og, cg * t) if need_w else None
    need_in = need_x or need_ac or need_as
    tiles = cpu_pac._tiles(b, ho, wo, c * t)
    cbuf = xp.new_empty(c * t * tiles.most) if need_w else None
    qbuf = xp.new_empty(c * t * tiles.most) if need_in else None
    gbuf = xp.new_empty(o * tiles.most)
    ga, nt = cpu_pac._geom_array(geom), torch.get_num_threads()
    cols_fn, back_fn = _fn("paka_cols", xp.dtype), _fn("paka_backward", xp.dtype)
    for tile in tiles.tiles:
        n = tile.nb * tile.rows * wo
        gyc = output_tile(gy, tile, g, gbuf)
        dims = _dims(c, xp, ho, wo, tile)
        cols = cbuf[: c * t * n] if need_w else None
        if need_in:
            q = qbuf[: c * t * n].view(g, cg * t, n)
            torch.bmm(w2.transpose(1, 2), gyc, out=q)
            # the columns for ∂W come out of the same pass; the sample's first tile zeroes its ∂x planes
            zero = int(tile.r0 == 0)
            back_fn(ptr(q), ptr(xp), ptr(ac), ptr(as_), ptr(cols), ptr(gxp), ptr(gac), ptr(gas), *dims, zero, ga, nt)
        elif need_w:
            cols_fn(ptr(xp), ptr(ac), ptr(as_), ptr(cols), *dims, ga, nt)
        if need_w:
            gw2.baddbmm_(gyc, cols.view(g, cg * t, n).transpose(1, 2))
    gx = cpu_pac._unpad(gxp, geom.pads, fold=False) if need_x else None
    gw = gw2.view(weight.shape) if need_w else None
    return gx, gac, gas, gw
