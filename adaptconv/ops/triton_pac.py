"""PAC's Triton backend: kernels for the PAC contraction, forward and backward (used on CUDA).

It implements :class:`adaptconv.ops.pac_contraction.PacBackend`; the feature distance has no Triton
kernel and runs the PyTorch backend's code (:mod:`adaptconv.ops.torch_pac`), which is cheap next to
the contraction.

    y[b,o,p] = Σ_j Σ_c W[o,c,j] · K[b,j,p] · x[b,c,p·s + j·d − pad] + bias[o]

Each kernel is an implicit GEMM: the K-weighted taps are read straight from ``x`` (zero outside the
image) tile by tile and never written to memory.

- forward: tiles of (output pixels × output channels), accumulating ``(x_j ⊙ K_j) @ W_jᵀ`` over taps
  and channel blocks;
- grad x: a *gather* over the taps (for each input pixel, the output pixels whose window reads it),
  so it is deterministic (no atomics), for any stride and dilation;
- grad K: per (pixel block, tap), ``Σ_c x_j[c] · (Wᵀ gy)[c]``;
- grad W: per (out block, in block, tap, pixel split) partial sums, reduced with ``torch.sum``
  (deterministic).

Float32 tiles use TF32 tensor cores exactly when ``torch.backends.cudnn.allow_tf32`` is set (as
``nn.Conv2d`` does); float16/bfloat16 accumulate in float32. Other dtypes use the PyTorch path.

The kernels are built lazily, so importing this module does not import Triton. With the environment
variable ``TRITON_INTERPRET=1`` they run in Triton's interpreter on CPU tensors: that is how the test
suite checks them against the PyTorch backend on a machine without a GPU (passing this module as
``pac_contract``'s ``backend``; :func:`usable` itself accepts CUDA tensors only).
"""

from __future__ import annotations

import functools
import os

import torch

from . import torch_pac

__all__ = [
    "available",
    "interpreting",
    "usable",
    "pac_forward",
    "pac_backward",
    "distance_forward",
    "distance_backward",
]


@functools.cache
def _triton():
    try:
        import triton
        import triton.language as tl
    except Exception:  # pragma: no cover - triton missing or broken
        return None
    return triton, tl


def interpreting() -> bool:
    """Whether Triton's interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Triton can be imported (it is needed only for CUDA tensors, or in interpreter mode)."""
    return _triton() is not None


def usable(*tensors: torch.Tensor | None) -> bool:
    """CUDA tensors in float16/bfloat16/float32, and Triton importable (checked last: importing it is slow)."""
    x = tensors[0]
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32) and available()


# --------------------------------------------------------------------------------------------------
# Kernel sources. They are plain functions here and wrapped by ``triton.jit`` (or the interpreter) in
# :func:`_kernels`, so that the decision to interpret is taken when first used, not at import.
def _pac_fwd_kernel(
    x_ptr,
    k_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    B,
    C,
    H,
    W,
    O,
    HO,
    WO,
    CG,
    OG,
    SH,
    SW,
    PT,
    PL,
    DH,
    DW,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    gi = tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = tl.arange(0, BLOCK_C)
    npix = B * HO * WO
    p_mask = offs_p < npix
    o_mask = offs_o < OG
    bi = (offs_p // (HO * WO)).to(tl.int64)
    rem = offs_p % (HO * WO)
    oh = rem // WO
    ow = rem % WO
    o_glob = gi * OG + offs_o
    acc = tl.full((BLOCK_P, BLOCK_O), 0.0, tl.float32)
    for j in tl.static_range(KH * KW):
        a = j // KW
        bb = j % KW
        ih = oh * SH - PT + a * DH
        iw = ow * SW - PL + bb * DW
        inside = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        kj = tl.load(k_ptr + (bi * (KH * KW) + j) * (HO * WO) + rem, mask=p_mask, other=0.0).to(tl.float32)
        for c0 in range(0, CG, BLOCK_C):
            cc = c0 + offs_c
            c_mask = cc < CG
            c_glob = (gi * CG + cc).to(tl.int64)
            x_off = (bi[:, None] * C + c_glob[None, :]) * (H * W) + (ih * W + iw)[:, None]
            xt = tl.load(x_ptr + x_off, mask=inside[:, None] & c_mask[None, :], other=0.0)
            xt = (xt.to(tl.float32) * kj[:, None]).to(w_ptr.dtype.element_ty)
            w_off = (o_glob[None, :] * CG + cc[:, None]) * (KH * KW) + j
            wt = tl.load(w_ptr + w_off, mask=c_mask[:, None] & o_mask[None, :], other=0.0)
            acc += tl.dot(xt, wt, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o_glob, mask=o_mask, other=0.0).to(tl.float32)[None, :]
    y_off = (bi[:, None] * O + o_glob[None, :].to(tl.int64)) * (HO * WO) + rem[:, None]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=p_mask[:, None] & o_mask[None, :])


def _pac_bwd_x_kernel(
    gy_ptr,
    k_ptr,
    w_ptr,
    gx_ptr,
    B,
    C,
    H,
    W,
    O,
    HO,
    WO,
    CG,
    OG,
    SH,
    SW,
    PT,
    PL,
    DH,
    DW,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    gi = tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # input pixels
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_o = tl.arange(0, BLOCK_O)
    npix = B * H * W
    p_mask = offs_p < npix
    c_mask = offs_c < CG
    bi = (offs_p // (H * W)).to(tl.int64)
    rem = offs_p % (H * W)
    ih = rem // W
    iw = rem % W
    acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    for j in tl.static_range(KH * KW):
        a = j // KW
        bb = j % KW
        nh = ih + PT - a * DH
        nw = iw + PL - bb * DW
        ok = p_mask & (nh >= 0) & (nw >= 0)
        nh = tl.where(ok, nh, 0)
        nw = tl.where(ok, nw, 0)
        oh = nh // SH
        ow = nw // SW
        ok = ok & (oh * SH == nh) & (ow * SW == nw) & (oh < HO) & (ow < WO)
        opix = oh * WO + ow
        kj = tl.load(k_ptr + (bi * (KH * KW) + j) * (HO * WO) + opix, mask=ok, other=0.0).to(tl.float32)
        for o0 in range(0, OG, BLOCK_O):
            oo = o0 + offs_o
            o_mask = oo < OG
            o_glob = (gi * OG + oo).to(tl.int64)
            g_off = (bi[:, None] * O + o_glob[None, :]) * (HO * WO) + opix[:, None]
            gt = tl.load(gy_ptr + g_off, mask=ok[:, None] & o_mask[None, :], other=0.0)
            gt = (gt.to(tl.float32) * kj[:, None]).to(w_ptr.dtype.element_ty)
            w_off = (o_glob[:, None] * CG + offs_c[None, :]) * (KH * KW) + j
            wt = tl.load(w_ptr + w_off, mask=o_mask[:, None] & c_mask[None, :], other=0.0)
            acc += tl.dot(gt, wt, input_precision=PREC)
    c_glob = (gi * CG + offs_c).to(tl.int64)
    x_off = (bi[:, None] * C + c_glob[None, :]) * (H * W) + rem[:, None]
    tl.store(gx_ptr + x_off, acc.to(gx_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


def _pac_bwd_k_kernel(
    x_ptr,
    gy_ptr,
    w_ptr,
    gk_ptr,
    B,
    C,
    H,
    W,
    O,
    HO,
    WO,
    CG,
    OG,
    G,
    SH,
    SW,
    PT,
    PL,
    DH,
    DW,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    j = tl.program_id(1)
    a = j // KW
    bb = j % KW
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    offs_o = tl.arange(0, BLOCK_O)
    npix = B * HO * WO
    p_mask = offs_p < npix
    bi = (offs_p // (HO * WO)).to(tl.int64)
    rem = offs_p % (HO * WO)
    oh = rem // WO
    ow = rem % WO
    ih = oh * SH - PT + a * DH
    iw = ow * SW - PL + bb * DW
    inside = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    # Σ_c as a product with ones (column 0 of a BLOCK_P×16 result): the kernels use Triton builtins
    # only, so they also run in the interpreter of a process that imported Triton in compiled mode.
    gk = tl.full((BLOCK_P, 16), 0.0, tl.float32)
    ones = tl.full((BLOCK_C, 16), 1.0, tl.float32)
    for gi in range(0, G):
        for c0 in range(0, CG, BLOCK_C):
            cc = c0 + offs_c
            c_mask = cc < CG
            t = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
            for o0 in range(0, OG, BLOCK_O):
                oo = o0 + offs_o
                o_mask = oo < OG
                o_glob = (gi * OG + oo).to(tl.int64)
                g_off = (bi[:, None] * O + o_glob[None, :]) * (HO * WO) + rem[:, None]
                gt = tl.load(gy_ptr + g_off, mask=p_mask[:, None] & o_mask[None, :], other=0.0)
                w_off = (o_glob[:, None] * CG + cc[None, :]) * (KH * KW) + j
                wt = tl.load(w_ptr + w_off, mask=o_mask[:, None] & c_mask[None, :], other=0.0)
                t += tl.dot(gt, wt, input_precision=PREC)
            c_glob = (gi * CG + cc).to(tl.int64)
            x_off = (bi[:, None] * C + c_glob[None, :]) * (H * W) + (ih * W + iw)[:, None]
            xt = tl.load(x_ptr + x_off, mask=inside[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
            gk += tl.dot(t * xt, ones, input_precision="ieee")
    col = tl.arange(0, 16)
    k_off = (bi * (KH * KW) + j) * (HO * WO) + rem
    tl.store(
        gk_ptr + k_off[:, None] + col[None, :] * 0,
        gk.to(gk_ptr.dtype.element_ty),
        mask=p_mask[:, None] & (col[None, :] == 0),
    )


def _pac_bwd_w_kernel(
    x_ptr,
    k_ptr,
    gy_ptr,
    gw_ptr,
    B,
    C,
    H,
    W,
    O,
    HO,
    WO,
    CG,
    OG,
    G,
    PIX_PER_SPLIT,
    SH,
    SW,
    PT,
    PL,
    DH,
    DW,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_z = tl.program_id(2)  # (split, group, tap)
    j = pid_z % (KH * KW)
    gi = (pid_z // (KH * KW)) % G
    split = pid_z // (KH * KW * G)
    a = j // KW
    bb = j % KW
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    o_mask = offs_o < OG
    c_mask = offs_c < CG
    o_glob = (gi * OG + offs_o).to(tl.int64)
    c_glob = (gi * CG + offs_c).to(tl.int64)
    npix = B * HO * WO
    acc = tl.full((BLOCK_O, BLOCK_C), 0.0, tl.float32)
    start = split * PIX_PER_SPLIT
    for p0 in range(0, PIX_PER_SPLIT, BLOCK_P):
        offs_p = start + p0 + tl.arange(0, BLOCK_P)
        p_mask = (offs_p < npix) & (p0 + tl.arange(0, BLOCK_P) < PIX_PER_SPLIT)
        bi = (offs_p // (HO * WO)).to(tl.int64)
        rem = offs_p % (HO * WO)
        oh = rem // WO
        ow = rem % WO
        ih = oh * SH - PT + a * DH
        iw = ow * SW - PL + bb * DW
        inside = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        kj = tl.load(k_ptr + (bi * (KH * KW) + j) * (HO * WO) + rem, mask=p_mask, other=0.0).to(tl.float32)
        x_off = (bi[:, None] * C + c_glob[None, :]) * (H * W) + (ih * W + iw)[:, None]
        xt = tl.load(x_ptr + x_off, mask=inside[:, None] & c_mask[None, :], other=0.0)
        xt = (xt.to(tl.float32) * kj[:, None]).to(gy_ptr.dtype.element_ty)
        g_off = (bi[None, :] * O + o_glob[:, None]) * (HO * WO) + rem[None, :]
        gt = tl.load(gy_ptr + g_off, mask=o_mask[:, None] & p_mask[None, :], other=0.0)
        acc += tl.dot(gt, xt, input_precision=PREC)
    # partials: split × O × CG × T
    w_off = ((split * O + o_glob[:, None]) * CG + offs_c[None, :]) * (KH * KW) + j
    tl.store(gw_ptr + w_off, acc, mask=o_mask[:, None] & c_mask[None, :])


@functools.cache
def _kernels(interpret: bool):
    triton, tl = _triton()
    # The kernels name ``tl`` as a module global (this module imports without Triton).
    globals()["tl"] = tl
    fns = (_pac_fwd_kernel, _pac_bwd_x_kernel, _pac_bwd_k_kernel, _pac_bwd_w_kernel)
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return tuple(InterpretedFunction(fn) for fn in fns)
    return tuple(triton.jit(fn) for fn in fns)


# --------------------------------------------------------------------------------------------------
def _check(x: torch.Tensor) -> bool:
    if _triton() is None:
        raise RuntimeError("triton_pac: Triton is not importable")
    interpret = interpreting()
    if not x.is_cuda and not interpret:
        raise RuntimeError("triton_pac: CPU tensors need Triton's interpreter (TRITON_INTERPRET=1)")
    return interpret


def _prec(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _block(n: int, lo: int = 16, hi: int = 64) -> int:
    b = lo
    while b < n and b < hi:
        b *= 2
    return b


def _geom_args(geom):
    (kh, kw), (sh, sw), (pt, _, pl, _), (dh, dw) = geom.kernel_size, geom.stride, geom.pads, geom.dilation
    return kh, kw, sh, sw, pt, pl, dh, dw


def pac_forward(x, kernel, weight, bias, geom, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x): the forward of the PAC contraction; the backward reads x itself."""
    saved = x
    interpret = _check(x)
    fwd = _kernels(interpret)[0]
    x, kernel, weight = x.contiguous(), kernel.contiguous(), weight.contiguous()
    b, c, h, w = x.shape
    o = weight.shape[0]
    kh, kw, sh, sw, pt, pl, dh, dw = _geom_args(geom)
    ho, wo = geom.out_size(h, w)
    cg, og = c // groups, o // groups
    y = x.new_empty(b, o, ho, wo)
    bp, bo, bc = 64, _block(og), _block(cg, hi=32)
    grid = (-(-b * ho * wo // bp), -(-og // bo), groups)
    fwd[grid](
        x,
        kernel,
        weight,
        bias if bias is not None else weight,
        y,
        b,
        c,
        h,
        w,
        o,
        ho,
        wo,
        cg,
        og,
        sh,
        sw,
        pt,
        pl,
        dh,
        dw,
        KH=kh,
        KW=kw,
        HAS_BIAS=bias is not None,
        BLOCK_P=bp,
        BLOCK_O=bo,
        BLOCK_C=bc,
        PREC=_prec(x.dtype),
    )
    return y, saved


def pac_backward(saved, kernel, weight, gy, geom, groups: int, need_x: bool, need_k: bool, need_w: bool):
    """(∂x, ∂K, ∂W) of the PAC contraction; ``saved`` is x."""
    x = saved
    interpret = _check(x)
    _, bwd_x, bwd_k, bwd_w = _kernels(interpret)
    x, kernel, weight, gy = x.contiguous(), kernel.contiguous(), weight.contiguous(), gy.contiguous()
    b, c, h, w = x.shape
    o = weight.shape[0]
    kh, kw, sh, sw, pt, pl, dh, dw = _geom_args(geom)
    ho, wo = geom.out_size(h, w)
    cg, og = c // groups, o // groups
    prec = _prec(x.dtype)
    dims = (b, c, h, w, o, ho, wo, cg, og)
    geo = (sh, sw, pt, pl, dh, dw)
    gx = gk = gw = None
    if need_x:
        gx = torch.empty_like(x)
        bp, bc, bo = 64, _block(cg), _block(og, hi=32)
        grid = (-(-b * h * w // bp), -(-cg // bc), groups)
        bwd_x[grid](gy, kernel, weight, gx, *dims, *geo, KH=kh, KW=kw, BLOCK_P=bp, BLOCK_C=bc, BLOCK_O=bo, PREC=prec)
    if need_k:
        gk = torch.empty_like(kernel)
        bp, bc, bo = 64, _block(cg, hi=32), _block(og, hi=32)
        grid = (-(-b * ho * wo // bp), kh * kw)
        bwd_k[grid](x, gy, weight, gk, *dims, groups, *geo, KH=kh, KW=kw, BLOCK_P=bp, BLOCK_C=bc, BLOCK_O=bo, PREC=prec)
    if need_w:
        bo, bc, bp = _block(og), _block(cg), 64
        npix = b * ho * wo
        tiles = -(-og // bo) * -(-cg // bc) * kh * kw * groups
        splits = max(1, min(-(-npix // bp), 512 // tiles if not interpret else 2))
        per_split = -(-npix // splits)
        per_split = -(-per_split // bp) * bp
        splits = -(-npix // per_split)
        part = torch.zeros(splits, o, cg, kh * kw, device=x.device, dtype=torch.float32)
        grid = (-(-og // bo), -(-cg // bc), splits * groups * kh * kw)
        bwd_w[grid](
            x,
            kernel,
            gy,
            part,
            *dims,
            groups,
            per_split,
            *geo,
            KH=kh,
            KW=kw,
            BLOCK_O=bo,
            BLOCK_C=bc,
            BLOCK_P=bp,
            PREC=prec,
        )
        gw = part.sum(0).view(o, cg, kh, kw).to(weight.dtype)
    return gx, gk, gw


# The feature distance: the PyTorch backend's code (no Triton kernel).
distance_forward = torch_pac.distance_forward
distance_backward = torch_pac.distance_backward
