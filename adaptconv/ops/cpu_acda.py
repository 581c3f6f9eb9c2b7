"""ACDA's compiled CPU kernels: the per-pixel atom filtering in C++, the 1×1 channel mixing in PyTorch (MKL).

    Z[b, c·M + m, p] = Σ_j D[b,m,j,p] · x_j[b,c,p];    y = coef · Z + bias

The structure of PAC's compiled backend (:mod:`adaptconv.ops.cpu_pac`), on tiles of output pixels:

- forward, per tile: ``acda_z`` (``csrc/acda_cpu.cpp``) writes Z channel-major (C·M × pixels, which is
  coef's own input order, so the coefficients are the GEMM's left operand as stored); one GEMM gives
  the tile's output;
- backward, per tile: one GEMM gives ``∂Z = coefᵀ·gy``; ``acda_backward`` makes Z again (for ∂coef,
  one more GEMM) and ∂x (``Σ_m D_m,j·∂Z_m`` at each tap's shift) in one pass over the channels, and ∂D
  (``Σ_c ∂Z_m·x_j``) in one pass over the output rows.

The PyTorch path (:mod:`adaptconv.ops.acda_contraction`) lays the taps out pixel-major and runs Z as
a batch of tiny matrix products, one per pixel. The padded input is what the backward reads, so x is
padded once per step. Used for CPU tensors in float32/float64 while ``config.cpu_kernels`` is on and
the kernels (this library and PAC's, whose padding it shares) build.
"""

from __future__ import annotations

import ctypes

import torch

from . import cpu_pac
from .cpu_build import SUFFIX, Kernels, ptr
from .tiling import Geometry, gemm_tile, output_tile

__all__ = ["usable", "available", "status", "acda_forward", "acda_backward"]

ABI = 1


def _declare(lib: ctypes.CDLL) -> None:
    p, i32 = ctypes.c_void_p, ctypes.c_int
    for sfx in SUFFIX.values():
        getattr(lib, f"acda_z_{sfx}").argtypes = [p, p, p, p, p, i32]
        getattr(lib, f"acda_backward_{sfx}").argtypes = [p] * 7 + [i32, p, i32]
        for name in ("acda_z", "acda_backward"):
            getattr(lib, f"{name}_{sfx}").restype = None


KERNELS = Kernels("acda_cpu", ABI, _declare, "ACDA", "ACDA runs on the slower PyTorch path")
status, _fn = KERNELS.status, KERNELS.fn


def available() -> bool:
    return KERNELS.available() and cpu_pac.available()


def usable(*tensors: torch.Tensor | None) -> bool:
    """CPU tensors of one dtype (float32/float64), and these kernels and PAC's (the padding) are on."""
    return KERNELS.usable(*tensors) and cpu_pac.available()


def _dims(c, m, xp, ho, wo, tile) -> ctypes.Array:
    return (ctypes.c_int64 * 10)(c, m, *xp.shape[-2:], ho, wo, tile.b0, tile.nb, tile.r0, tile.rows)


def acda_forward(x, atoms, coef, bias, geom: Geometry, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, xp): ``atoms`` B×M×T×H'×W', ``coef`` O×(C/g·M)×1×1; ``xp`` (the zero-padded input) is what
    :func:`acda_backward` reads."""
    b, c, h, w = x.shape
    m, o = atoms.shape[1], coef.shape[0]
    ho, wo = geom.out_size(h, w)
    xp = cpu_pac._pad(x, geom.pads, "constant")
    d = atoms.contiguous()
    w2 = coef.reshape(groups, o // groups, -1)
    y = x.new_empty(b, o, ho, wo)
    tiles = cpu_pac._tiles(b, ho, wo, c * m)
    zbuf, abuf = x.new_empty(c * m * tiles.most), x.new_empty(o * tiles.most)
    z_fn, ga, nt = _fn("acda_z", x.dtype), cpu_pac._geom_array(geom), torch.get_num_threads()
    for tile in tiles.tiles:
        n = tile.nb * tile.rows * wo
        z = zbuf[: c * m * n]
        z_fn(ptr(xp), ptr(d), ptr(z), _dims(c, m, xp, ho, wo, tile), ga, nt)
        gemm_tile(y, w2, z.view(groups, -1, n), tile, abuf)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y, xp


def acda_backward(xp, atoms, coef, gy, geom: Geometry, groups: int, need_x, need_d, need_w):
    """(∂x, ∂atoms, ∂coef), each None where not needed; ``xp`` is the forward's padded input."""
    top, bottom, left, right = geom.pads
    b, c, hp, wp = xp.shape
    ho, wo = geom.out_size(hp - top - bottom, wp - left - right)
    m, o = atoms.shape[1], coef.shape[0]
    g, og = groups, o // groups
    d = atoms.contiguous()
    w2 = coef.reshape(g, og, -1)
    gxp = torch.empty_like(xp) if need_x else None  # zeroed by the kernel, sample by sample
    gd = torch.empty_like(d) if need_d else None
    gw2 = xp.new_zeros(w2.shape) if need_w else None
    tiles = cpu_pac._tiles(b, ho, wo, c * m)
    zbuf = xp.new_empty(c * m * tiles.most) if need_w else None
    gzbuf = xp.new_empty(c * m * tiles.most) if (need_x or need_d) else None
    gbuf = xp.new_empty(o * tiles.most)
    ga, nt = cpu_pac._geom_array(geom), torch.get_num_threads()
    z_fn, back_fn = _fn("acda_z", xp.dtype), _fn("acda_backward", xp.dtype)
    for tile in tiles.tiles:
        n = tile.nb * tile.rows * wo
        gyc = output_tile(gy, tile, g, gbuf)
        dims = _dims(c, m, xp, ho, wo, tile)
        z = zbuf[: c * m * n] if need_w else None
        if need_x or need_d:
            gz = gzbuf[: c * m * n].view(g, -1, n)
            torch.bmm(w2.transpose(1, 2), gyc, out=gz)
            # Z for ∂coef comes out of the same pass; the sample's first tile zeroes its ∂x planes
            back_fn(ptr(gz), ptr(xp), ptr(d), ptr(z), ptr(gxp), ptr(gd), dims, int(tile.r0 == 0), ga, nt)
        elif need_w:
            z_fn(ptr(xp), ptr(d), ptr(z), dims, ga, nt)
        if need_w:
            gw2.baddbmm_(gyc, z.view(g, -1, n).transpose(1, 2))
    gx = cpu_pac._unpad(gxp, geom.pads, fold=False) if need_x else None
    gw = gw2.view(coef.shape) if need_w else None
    return gx, gd, gw
