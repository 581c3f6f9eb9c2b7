"""PAC's compiled CPU backend: the contraction and the feature distance in C++ kernels, for CPU tensors.

It implements :class:`adaptconv.ops.pac_contraction.PacBackend`, like the PyTorch backend
(:mod:`adaptconv.ops.torch_pac`, memory-lean but spending most of a training step in element-wise passes
and in Python: every tile of every tap is a handful of small tensor operations) and the Triton one.
Here each of those groups is one pass of ``csrc/pac_cpu.cpp`` over padded inputs, while the GEMMs stay
in PyTorch (MKL), on tiles of :mod:`adaptconv.ops.tiling` and with the same memory bound:

- forward, per tile: ``pac_cols`` writes the K-weighted taps (C·k² × pixels, F.unfold's order), one GEMM
  with the weight gives the output;
- backward, per tile: the same columns and one GEMM give ∂W; one GEMM gives ``q = Wᵀ·gy`` for all taps,
  and ``pac_taps_backward`` turns it into ∂K (``Σ_c q ⊙ x_j``) and ∂x (``K_j ⊙ q`` at each tap's shift);
- the distance ``Σ_c γ_c (f_j − centre)²`` and its gradient are one pass each over the whole guide
  (each pair of mirrored taps once where the window is symmetric);
- padding (zeros for x, replication for the guide) and its adjoint are one pass per plane; what the
  backward pass reads (``saved``) is the padded input (guide), so it is padded once per step.

On the benchmark's training step (B=8, 64→64, 56×56, k=3, 2 threads) this takes PAC from 4.1× to
1.9× ``nn.Conv2d`` (``benchmarks/RESULTS.md``); the GEMMs are now most of the rest.

The library is compiled on first use by :mod:`adaptconv.ops.cpu_build` (about 3 s, cached per source,
compiler and CPU). Without a compiler, or with ``config.cpu_kernels`` off
(``ADAPTCONV_CPU_KERNELS=0``, ``config.override(cpu_kernels=False)``, :func:`disabled`), the PyTorch
backend runs instead (a warning says why, once, when the build fails). float32 and float64 only; other
dtypes use the PyTorch backend.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from . import config
from .cpu_build import SUFFIX as _SUFFIX
from .cpu_build import Kernels
from .cpu_build import ptr as _ptr
from .tiling import Plan, gemm_columns, output_tile, plan

__all__ = [
    "available",
    "usable",
    "disabled",
    "status",
    "pac_forward",
    "pac_backward",
    "distance_forward",
    "distance_backward",
]

ABI = 3
#: Tile size for the GEMMs, in elements of the K-weighted columns of one tile (C·k² × pixels), as a
#: multiple of the PyTorch path's tile (``config.chunk_elements``, which scales both):
#: 8 × 2^17 float32 values = 4 MiB, which keeps a tile and its GEMM operands in the last-level cache
#: and bounds the extra memory at any resolution (measured: 4 and 32 were 5–10% slower, 16 a little).
TILE_FACTOR = 8


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for sfx in _SUFFIX.values():
        getattr(lib, f"pac_cols_{sfx}").argtypes = [p, p, p] + [i64] * 9 + [p, i32]
        getattr(lib, f"pac_taps_backward_{sfx}").argtypes = [p] * 5 + [i64] * 9 + [i32, p, i32]
        getattr(lib, f"distance_forward_{sfx}").argtypes = [p] * 4 + [i64] * 6 + [p, i64, p, i32]
        getattr(lib, f"distance_backward_{sfx}").argtypes = [p] * 7 + [i64] * 6 + [p, i64, p, i32]
        getattr(lib, f"distance_forward_flat_{sfx}").argtypes = [p] * 3 + [i64] * 7 + [p, i32]
        getattr(lib, f"distance_backward_flat_{sfx}").argtypes = [p] * 5 + [i64] * 7 + [p, i32]
        getattr(lib, f"pad_planes_{sfx}").argtypes = [p, p] + [i64] * 7 + [i32, i32]
        getattr(lib, f"unpad_planes_{sfx}").argtypes = [p, p] + [i64] * 7 + [i32, i32]
        for name in (
            "pac_cols",
            "pac_taps_backward",
            "distance_forward",
            "distance_backward",
            "distance_forward_flat",
            "distance_backward_flat",
            "pad_planes",
            "unpad_planes",
        ):
            getattr(lib, f"{name}_{sfx}").restype = None


KERNELS = Kernels("pac_cpu", ABI, _declare, "PAC", "PAC runs on the slower PyTorch path")
available, status, usable, _fn = KERNELS.available, KERNELS.status, KERNELS.usable, KERNELS.fn


def disabled():
    """Run PAC on the PyTorch backend inside the block: ``config.override(cpu_kernels=False)``."""
    return config.override(cpu_kernels=False)


def _geom_array(geom) -> ctypes.Array:
    (kh, kw), (sh, sw), _, (dh, dw) = geom.kernel_size, geom.stride, geom.pads, geom.dilation
    return (ctypes.c_int64 * 6)(kh, kw, sh, sw, dh, dw)


def _pad(t: torch.Tensor, pads, mode: str) -> torch.Tensor:
    """``t`` padded by zeros (mode "constant") or replication, in one pass (F.pad fills, then copies)."""
    top, bottom, left, right = pads
    t = t.contiguous()
    if not any(pads):
        return t
    b, c, h, w = t.shape
    out = t.new_empty(b, c, h + top + bottom, w + left + right)
    _fn("pad_planes", t.dtype)(
        _ptr(t), _ptr(out), b * c, h, w, top, left, *out.shape[-2:], int(mode == "replicate"), torch.get_num_threads()
    )
    return out


def _unpad(tp: torch.Tensor, pads, fold: bool) -> torch.Tensor:
    """The image part of a padded gradient, or with ``fold`` the adjoint of replicate padding."""
    top, bottom, left, right = pads
    if not any(pads):
        return tp
    b, c, hp, wp = tp.shape
    out = tp.new_empty(b, c, hp - top - bottom, wp - left - right)
    _fn("unpad_planes", tp.dtype)(
        _ptr(tp), _ptr(out), b * c, *out.shape[-2:], top, left, hp, wp, int(fold), torch.get_num_threads()
    )
    return out


def _tiles(b: int, ho: int, wo: int, per_pixel: int) -> Plan:
    return plan(b, ho, wo, per_pixel, budget=TILE_FACTOR * config.chunk_elements)


# --------------------------------------------------------------------------------------------------
# PAC:  y[b,o,p] = Σ_j Σ_c W[o,c,j] · K[b,j,p] · x_j[b,c,p] + bias[o]
def pac_forward(x, kernel, weight, bias, geom, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, xp): per tile, the K-weighted columns (one kernel pass), then one GEMM with the weight. ``xp``
    (the zero-padded input) is what :func:`pac_backward` reads, so x is padded once per step."""
    b, c, h, w = x.shape
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    xp = _pad(x, geom.pads, "constant")
    k = kernel.contiguous()
    hp, wp = xp.shape[-2:]
    y = x.new_empty(b, weight.shape[0], ho, wo)
    cols_fn, ga, nt = _fn("pac_cols", x.dtype), _geom_array(geom), torch.get_num_threads()

    def fill(tile, cols):
        cols_fn(_ptr(xp), _ptr(k), _ptr(cols), c, hp, wp, ho, wo, tile.b0, tile.nb, tile.r0, tile.rows, ga, nt)

    gemm_columns(y, weight, groups, _tiles(b, ho, wo, c * t), fill)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y, xp


def pac_backward(saved, kernel, weight, gy, geom, groups: int, need_x: bool, need_k: bool, need_w: bool):
    """(∂x, ∂K, ∂W); ``saved`` is the forward's zero-padded input. Per tile: ∂W from the recomputed
    columns (one GEMM); q = Wᵀ·gy for all taps (one GEMM), then ∂K and ∂x from q in one kernel call."""
    xp = saved
    top, bottom, left, right = geom.pads
    b, c, hp, wp = xp.shape
    h, w = hp - top - bottom, wp - left - right
    o, t = weight.shape[0], geom.taps
    g, cg, og = groups, c // groups, o // groups
    ho, wo = geom.out_size(h, w)
    k = kernel.contiguous()
    w2 = weight.reshape(g, og, cg * t)
    w2t = w2.transpose(1, 2)
    gxp = torch.empty_like(xp) if need_x else None  # zeroed by the kernel, sample by sample
    gk = xp.new_empty(b, t, ho, wo) if need_k else None
    gw2 = xp.new_zeros(g, og, cg * t) if need_w else None
    tiles = _tiles(b, ho, wo, c * t)
    cbuf = xp.new_empty(c * t * tiles.most) if need_w else None
    qbuf = xp.new_empty(c * t * tiles.most) if (need_x or need_k) else None
    gbuf = xp.new_empty(o * tiles.most)
    ga, nt = _geom_array(geom), torch.get_num_threads()
    cols_fn, taps_fn = _fn("pac_cols", xp.dtype), _fn("pac_taps_backward", xp.dtype)
    for tile in tiles.tiles:
        n = tile.nb * tile.rows * wo
        gyc = output_tile(gy, tile, g, gbuf)
        dims = (c, hp, wp, ho, wo, tile.b0, tile.nb, tile.r0, tile.rows)
        if need_w:
            cols = cbuf[: c * t * n]
            cols_fn(_ptr(xp), _ptr(k), _ptr(cols), *dims, ga, nt)
            gw2.baddbmm_(gyc, cols.view(g, cg * t, n).transpose(1, 2))
        if need_x or need_k:
            q = qbuf[: c * t * n].view(g, cg * t, n)
            torch.bmm(w2t, gyc, out=q)
            # the sample's first tile (r0 = 0) zeroes its ∂x planes before accumulating
            taps_fn(_ptr(q), _ptr(xp), _ptr(k), _ptr(gk), _ptr(gxp), *dims, int(tile.r0 == 0), ga, nt)
    gx = _unpad(gxp, geom.pads, fold=False) if need_x else None
    gw = gw2.view(weight.shape) if need_w else None
    return gx, gk, gw


# --------------------------------------------------------------------------------------------------
# PAC's adapting-kernel distance:  d[b,j,p] = Σ_g γ_g (f_j[b,g,p] − c[b,g,p])²
def _centre_taps(geom) -> tuple[ctypes.Array, int]:
    taps = geom.centre_taps
    return (ctypes.c_int64 * len(taps))(*taps), len(taps)


def _flat(geom, centre) -> bool:
    """The flat (pairwise) kernels apply where the PyTorch backend's pairs do: the window's own centre,
    stride 1, an odd kernel of more than one tap (``Geometry.symmetric``)."""
    return centre is None and geom.symmetric


def distance_forward(guide, centre, scale, geom) -> tuple[torch.Tensor, torch.Tensor]:
    """(d B×T×H'×W', fp): ``fp``, the replicate-padded guide, is what :func:`distance_backward` reads."""
    b, cg_, h, w = guide.shape
    ho, wo = geom.out_size(h, w)
    fp = _pad(guide, geom.pads, "replicate")
    hp, wp = fp.shape[-2:]
    s = None if scale is None else scale.contiguous()
    ga, nt = _geom_array(geom), torch.get_num_threads()
    if _flat(geom, centre):
        d = guide.new_empty(b, geom.taps, ho, wp)
        _fn("distance_forward_flat", guide.dtype)(
            _ptr(fp), _ptr(s), _ptr(d), b, cg_, hp, wp, ho, wo, geom.taps // 2, ga, nt
        )
        return d[..., :wo].contiguous(), fp
    cen = None if centre is None else centre.contiguous()
    d = guide.new_empty(b, geom.taps, ho, wo)
    ctaps, nct = _centre_taps(geom)
    _fn("distance_forward", guide.dtype)(
        _ptr(fp), _ptr(cen), _ptr(s), _ptr(d), b, cg_, hp, wp, ho, wo, ctaps, nct, ga, nt
    )
    return d, fp


def distance_backward(saved, centre, scale, gd, geom, need_f: bool, need_c: bool, need_s: bool):
    """∂guide, ∂centre, ∂scale; ``saved`` is the forward's replicate-padded guide."""
    fp = saved
    top, bottom, left, right = geom.pads
    b, cg_, hp, wp = fp.shape
    h, w = hp - top - bottom, wp - left - right
    ho, wo = geom.out_size(h, w)
    s = None if scale is None else scale.contiguous()
    gfp = torch.empty_like(fp)  # written whole by the kernels; an internal centre's gradient goes here too
    gs_part = fp.new_empty(b, cg_) if (need_s and s is not None) else None
    ga, nt = _geom_array(geom), torch.get_num_threads()
    gcen = None
    if _flat(geom, centre):
        gdw = F.pad(gd, (0, wp - wo)).contiguous()  # on the padded width, zero in the junk columns
        _fn("distance_backward_flat", fp.dtype)(
            _ptr(fp), _ptr(s), _ptr(gdw), _ptr(gfp), _ptr(gs_part), b, cg_, hp, wp, ho, wo, geom.taps // 2, ga, nt
        )
    else:
        cen = None if centre is None else centre.contiguous()
        gcen = torch.empty_like(cen) if (cen is not None and need_c) else None
        gd = gd.contiguous()
        ctaps, nct = _centre_taps(geom)
        _fn("distance_backward", fp.dtype)(
            _ptr(fp),
            _ptr(cen),
            _ptr(s),
            _ptr(gd),
            _ptr(gfp),
            _ptr(gcen),
            _ptr(gs_part),
            b,
            cg_,
            hp,
            wp,
            ho,
            wo,
            ctaps,
            nct,
            ga,
            nt,
        )
    gf = _unpad(gfp, geom.pads, fold=True) if need_f else None
    gs = None if gs_part is None else gs_part.sum(0)
    return gf, gcen, gs
