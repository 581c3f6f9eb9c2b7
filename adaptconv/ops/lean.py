"""Memory-lean tap contractions for the pixel-adaptive operators (PAC, PAKA, DFN, ACDA).

The straightforward formulation of a pixel-adaptive convolution unfolds the input into its k² window
taps (``B·C·k²·H'·W'`` values), multiplies them by the per-pixel kernel (another tensor of that size)
and lets autograd keep both for the backward pass. The functions here compute the same quantities
without ever holding that tensor:

- every heavy contraction is a custom :class:`torch.autograd.Function` that saves only its inputs
  (``x``, the per-pixel kernel or factors, the weight) and **recomputes** the shifted taps in backward;
  the adaptive branches that produce the per-pixel kernels stay ordinary autograd code;
- the work runs over *tiles* of output pixels (whole samples when they are small, else blocks of
  output rows of one sample) sized so that one tap's ``C × pixels`` block has about
  :data:`_CHUNK` elements (``chunk_elements`` changes it): the temporaries of a tile are a few such
  blocks (the k² taps stacked, k² of them) and stay in cache, whatever the image size;
- inside a tile the contraction with the spatially shared weight is a GEMM: the forward stacks the
  K-weighted taps channel-major (F.unfold's order, so that K ≡ 1 sums exactly like ``nn.Conv2d``),
  the weight gradient uses the same stacked block, the input and kernel gradients one GEMM per tap
  (``W_jᵀ · gy``) followed by cheap per-tap products.

Peak memory is then ``O(input + output + per-pixel kernel + one tile)``; for PAC the kernel is
``B×k²×H'×W'`` (one scalar per pixel and tap, shared by the channels: C times smaller than the unfold).

PAC's adapting kernel needs the feature distance of every tap, ``Σ_g γ_g (f_j − c)²``: a second
Function, :func:`pac_distance`, computes it tap by tap from the guide, never unfolding it either; for
stride 1 and odd kernels it uses the symmetry d(p, p+δ) = d(p+δ, p) to compute each pair of opposite
taps once.

Geometry: ``geom = (kernel_size, stride, pads, dilation)`` with ``pads = (top, bottom, left, right)``;
tap ``j = a·kw + b`` of output pixel ``(i, q)`` reads the padded input at
``(i·sh + a·dh, q·sw + b·dw)``, exactly as ``F.unfold``. Inputs are zero padded, PAC guides are
replicate padded.

:func:`implementation` switches the operators back to the unfold reference (kept for the tests and the
benchmarks); the default is ``"lean"``. PAC's contraction and distance run elsewhere where they can
(:func:`_pac_backend`): on CUDA the Triton kernels of :mod:`adaptconv.ops.triton_pac`, on the CPU the
compiled kernels of :mod:`adaptconv.ops.cpu_pac` (same tiles, same GEMMs, the element-wise passes
fused); this PyTorch code is the fallback for every other case, and the reference both are tested
against.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import cpu_pac

__all__ = [
    "Geometry", "geometry", "implementation", "get_implementation", "chunk_elements",
    "pac_contract", "pac_distance", "dynamic_filter", "paka_contract", "acda_contract",
]

IMPLEMENTATIONS = ("lean", "unfold")
_IMPL = ["lean"]
#: Tile size: elements of one tap's C × pixels block (2^17 float32 values = 512 KiB, which stays in a
#: core's cache through the per-tap passes; a stacked k²·C × pixels block is k² times that, 4.5 MiB
#: for k = 3). ``ADAPTCONV_LEAN_CHUNK`` overrides it.
_CHUNK = [int(os.environ.get("ADAPTCONV_LEAN_CHUNK", 1 << 17))]


def get_implementation() -> str:
    """``"lean"`` (the default) or ``"unfold"`` (the straightforward reference)."""
    return _IMPL[0]


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
    """Run the pixel-adaptive operators with ``name`` ("lean" | "unfold") inside the block.

    Only the forward pass reads it: a graph built under "unfold" backpropagates through the unfold.
    """
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    old, _IMPL[0] = _IMPL[0], name
    try:
        yield
    finally:
        _IMPL[0] = old


@contextlib.contextmanager
def chunk_elements(n: int) -> Iterator[None]:
    """Temporarily set the tile size (elements of one tap's C × pixels block; see :data:`_CHUNK`).

    The backward pass reads it too: run it inside the block as well."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"chunk_elements must be a positive int, got {n!r}")
    old, _CHUNK[0] = _CHUNK[0], n
    try:
        yield
    finally:
        _CHUNK[0] = old


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
        (kh, kw), (sh, sw), (t, b, l, r), (dh, dw) = self.kernel_size, self.stride, self.pads, self.dilation
        return (h + t + b - dh * (kh - 1) - 1) // sh + 1, (w + l + r - dw * (kw - 1) - 1) // sw + 1


def geometry(kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> Geometry:
    """A :class:`Geometry` from pairs; ``padding`` is (ph, pw) or (top, bottom, left, right)."""
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    return Geometry(tuple(kernel_size), tuple(stride), padding, tuple(dilation))


def _chunks(b: int, ho: int, wo: int, per_pixel: int, budget: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(b0, b1, r0, r1) tiles covering B×H': at most about ``budget/per_pixel`` pixels each (at least
    one output row; ``budget`` defaults to :data:`_CHUNK`); whole samples when one fits, else balanced
    blocks of output rows of one sample."""
    budget = _CHUNK[0] if budget is None else budget
    per_sample = per_pixel * ho * wo
    if per_sample <= budget:
        nb = max(1, budget // max(per_sample, 1))
        nb = math.ceil(b / math.ceil(b / nb))  # balanced
        for b0 in range(0, b, nb):
            yield b0, min(b, b0 + nb), 0, ho
        return
    rows = max(1, budget // max(per_pixel * wo, 1))
    n = math.ceil(ho / rows)
    rows = math.ceil(ho / n)
    for b0 in range(b):
        for r0 in range(0, ho, rows):
            yield b0, b0 + 1, r0, min(ho, r0 + rows)


def _row_span(geom: Geometry, r0: int, r1: int) -> tuple[int, int]:
    """Padded-input rows [lo, hi) read by output rows [r0, r1)."""
    return r0 * geom.stride[0], (r1 - 1) * geom.stride[0] + (geom.kernel_size[0] - 1) * geom.dilation[0] + 1


def _gather(t: torch.Tensor, b0: int, b1: int, lo: int, hi: int, pads, mode: str) -> torch.Tensor:
    """Rows [lo, hi) (padded coordinates) of samples b0:b1 of ``t`` padded by ``pads``: nb×C×(hi-lo)×W_pad."""
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
        out[:, :, i0 + top - lo: i1 + top - lo, left: left + w] = src[:, :, i0:i1]
    return out


def _scatter_add(gt: torch.Tensor, g: torch.Tensor, b0: int, b1: int, lo: int, hi: int, pads, mode: str) -> None:
    """The adjoint of :func:`_gather`: add ``g`` (a padded chunk's gradient) into ``gt``."""
    top, bottom, left, right = pads
    h, w = gt.shape[-2:]
    dst = gt[b0:b1]
    if mode == "replicate":
        core = g[..., left: left + w]
        if left or right:
            core = core.clone()
            if left:
                core[..., :1] += g[..., :left].sum(-1, keepdim=True)
            if right:
                core[..., -1:] += g[..., left + w:].sum(-1, keepdim=True)
        # padded rows above the image read row 0, rows below it row h-1, the others their own row
        i0, i1 = max(lo, top), min(hi, top + h)
        if i1 > i0:
            dst[:, :, i0 - top: i1 - top] += core[:, :, i0 - lo: i1 - lo]
        if lo < top:
            dst[:, :, :1] += core[:, :, : min(hi, top) - lo].sum(2, keepdim=True)
        if hi > top + h:
            dst[:, :, -1:] += core[:, :, max(lo, top + h) - lo:].sum(2, keepdim=True)
        return
    i0, i1 = max(lo - top, 0), min(hi - top, h)
    if i1 > i0:
        dst[:, :, i0:i1] += g[:, :, i0 + top - lo: i1 + top - lo, left: left + w]


def _tap(xc: torch.Tensor, geom: Geometry, j: int, rows: int, wo: int) -> torch.Tensor:
    """Tap ``j`` of a padded chunk (whose first row is the first output row's window top): nb×C×rows×W'."""
    kw = geom.kernel_size[1]
    a, b = divmod(j, kw)
    s0, s1, s2, s3 = xc.stride()
    return xc.as_strided(
        (xc.shape[0], xc.shape[1], rows, wo), (s0, s1, s2 * geom.stride[0], s3 * geom.stride[1]),
        xc.storage_offset() + a * geom.dilation[0] * s2 + b * geom.dilation[1] * s3)


def _centre(gc: torch.Tensor, geom: Geometry, rows: int, wo: int) -> torch.Tensor:
    """The window centre of a padded guide chunk (the average of the middle taps for even kernels),
    summed in the order of :func:`adaptconv.ops.taps.window_centres` so the values agree exactly."""
    kh, kw = geom.kernel_size
    rs, qs = sorted({(kh - 1) // 2, kh // 2}), sorted({(kw - 1) // 2, kw // 2})
    out = None
    for r in rs:
        for q in qs:
            s = _tap(gc, geom, r * kw + q, rows, wo)
            out = s if out is None else out + s
    n = len(rs) * len(qs)
    return out if n == 1 else out / n


def _rows(t: torch.Tensor, b0: int, b1: int, r0: int, r1: int) -> torch.Tensor:
    return t[b0:b1, ..., r0:r1, :]


def _use_triton(x: torch.Tensor) -> bool:
    if not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    from . import triton_pac

    return triton_pac.available()


# --------------------------------------------------------------------------------------------------
# PAC:  y[b,o,p] = Σ_j Σ_c W[o,c,j] · K[b,j,p] · x_j[b,c,p] + bias[o]
#
# Per tile of N output pixels (a few samples, or a few rows of one sample): the K-weighted taps of the
# tile, stacked (C/g·k²×N), contracted with W in one GEMM (forward, and ∂W in backward); per tap j
# in backward, q = W_jᵀ·gy (one GEMM), ∂K_j = Σ_c q ⊙ x_j and ∂x += K_j ⊙ q at the tap's shift.
def _aliasing(stride: int) -> bool:
    """A channel stride that is a multiple of 2 KiB of floats maps every channel's row to the same
    cache sets (a 256×256 map: 256 KiB apart): GEMMs and passes over such views thrash the caches, so
    the tile is copied to a contiguous buffer instead."""
    return stride % 512 == 0


def _tile_out(y: torch.Tensor, b0, b1, r0, r1, g: int) -> torch.Tensor | None:
    """y[b0:b1, :, r0:r1] as a g×(O/g)×N matrix view a GEMM can use directly, or None (then the tile
    goes through a contiguous buffer): one sample, and a channel stride that does not alias."""
    o, ho, wo = y.shape[1:]
    if b1 - b0 != 1 or _aliasing(ho * wo):
        return None
    return y[b0].view(g, o // g, ho * wo)[:, :, r0 * wo: r1 * wo]


def _tap_gc(xc: torch.Tensor, geom: Geometry, j: int, rows: int, wo: int, g: int) -> torch.Tensor:
    """Tap j of a padded chunk as g×(C/g)×nb×rows×W' (channels first, the layout of the GEMMs)."""
    nb, c = xc.shape[:2]
    cg = c // g
    a, b = divmod(j, geom.kernel_size[1])
    s0, s1, s2, s3 = xc.stride()
    return xc.as_strided(
        (g, cg, nb, rows, wo), (cg * s1, s1, s0, s2 * geom.stride[0], s3 * geom.stride[1]),
        xc.storage_offset() + a * geom.dilation[0] * s2 + b * geom.dilation[1] * s3)


def _tap_weights(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """O×(C/g)×kh×kw → T×g×(O/g)×(C/g): the per-tap weight matrices."""
    o, cg = weight.shape[:2]
    return weight.reshape(groups, o // groups, cg, -1).permute(3, 0, 1, 2).contiguous()


def pac_forward(x, kernel, weight, bias, geom: Geometry, groups: int) -> torch.Tensor:
    """Per tile: the K-weighted taps stacked channel-major (C/g·k² × N, F.unfold's order, so the GEMM
    sums in nn.Conv2d's order and K ≡ 1 reproduces it exactly), contracted with W in one GEMM."""
    b, c, h, w = x.shape
    o = weight.shape[0]
    t = geom.taps
    g, cg, og = groups, c // groups, o // groups
    ho, wo = geom.out_size(h, w)
    w2 = weight.reshape(g, og, cg * t)
    y = x.new_empty(b, o, ho, wo)
    chunks = list(_chunks(b, ho, wo, c))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in chunks) * wo
    cbuf = x.new_empty(t * c * most)
    abuf = x.new_empty(o * most)
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        n = nb * rows * wo
        xc = _gather(x, b0, b1, *_row_span(geom, r0, r1), geom.pads, "zeros")
        kts = _rows(kernel, b0, b1, r0, r1).unbind(1)
        cols = cbuf[: t * c * n].view(g, cg, t, nb, rows, wo)
        for j in range(t):
            torch.mul(_tap_gc(xc, geom, j, rows, wo, g), kts[j], out=cols[:, :, j])
        _gemm_tile(y, w2, cols.view(g, cg * t, n), b0, b1, r0, r1, abuf)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


def _gemm_tile(y, w2, cols, b0, b1, r0, r1, abuf) -> None:
    """y[b0:b1, :, r0:r1] = w2 @ cols (g×(O/g)×K @ g×K×N), straight into y when it is one sample."""
    g, og = w2.shape[:2]
    n = cols.shape[-1]
    acc = _tile_out(y, b0, b1, r0, r1, g)
    if acc is not None:
        torch.bmm(w2, cols, out=acc)
        return
    acc = abuf[: g * og * n].view(g, og, n)
    torch.bmm(w2, cols, out=acc)
    nb = b1 - b0
    y[b0:b1, :, r0:r1] = acc.view(g * og, nb, r1 - r0, y.shape[-1]).transpose(0, 1)


def pac_backward(x, kernel, weight, gy, geom: Geometry, groups: int, need_x: bool, need_k: bool, need_w: bool):
    """Per tile: the K-weighted taps of all k² offsets (T×C/g×N) for one GEMM giving ∂W (a long
    reduction over pixels is far more efficient with the taps stacked); then per tap j the GEMM
    q = W_jᵀ gy (the gradient of K_j ⊙ x_j), ∂K_j = Σ_c q ⊙ x_j and ∂x += K_j ⊙ q at the tap's shift."""
    b, c, h, w = x.shape
    o = weight.shape[0]
    t = geom.taps
    g, cg, og = groups, c // groups, o // groups
    ho, wo = geom.out_size(h, w)
    wtt = _tap_weights(weight, g).transpose(2, 3).unbind(0)  # T × [g×(C/g)×(O/g)]
    gx = torch.zeros_like(x) if need_x else None
    gk = kernel.new_empty(kernel.shape) if need_k else None
    gwt = x.new_zeros(g, t * cg, og) if need_w else None  # ∂Wᵀ, rows tap-major (j·C/g + c)
    chunks = list(_chunks(b, ho, wo, c))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in chunks) * wo
    cbuf = x.new_empty(t * c * most) if need_w else None
    qbuf = x.new_empty(c * most)
    pbuf = x.new_empty(c * most)
    gbuf = x.new_empty(o * most)
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        n = nb * rows * wo
        lo, hi = _row_span(geom, r0, r1)
        xc = _gather(x, b0, b1, lo, hi, geom.pads, "zeros")
        kts = _rows(kernel, b0, b1, r0, r1).unbind(1)
        gyc = _tile_out(gy, b0, b1, r0, r1, g) if gy.is_contiguous() else None
        if gyc is None:
            gyc = gbuf[: o * n].view(g, og, n)
            gyc.view(o, nb, rows, wo).copy_(gy[b0:b1, :, r0:r1].transpose(0, 1))
        if need_w:
            cols = cbuf[: t * c * n].view(g, t, cg, nb, rows, wo)
            for j in range(t):
                torch.mul(_tap_gc(xc, geom, j, rows, wo, g), kts[j], out=cols[:, j])
            gwt.baddbmm_(cols.view(g, t * cg, n), gyc.transpose(1, 2))
        if need_x or need_k:
            q = qbuf[: c * n].view(g, cg, nb, rows, wo)
            qm = q.view(g, cg, n)
            p = pbuf[: c * n].view(g, cg, nb, rows, wo)
            gxc = torch.zeros_like(xc) if need_x else None
            for j in range(t):
                torch.bmm(wtt[j], gyc, out=qm)  # W_jᵀ gy: the gradient of K_j ⊙ x_j
                if need_k:
                    gk[b0:b1, j, r0:r1] = torch.mul(q, _tap_gc(xc, geom, j, rows, wo, g), out=p).sum((0, 1))
                if need_x:
                    _tap_gc(gxc, geom, j, rows, wo, g).addcmul_(q, kts[j])
            if need_x:
                _scatter_add(gx, gxc, b0, b1, lo, hi, geom.pads, "zeros")
    gw = None
    if need_w:
        gw = gwt.view(g, t, cg, og).permute(0, 3, 2, 1).reshape(weight.shape)
    return gx, gk, gw


def _pac_backend(*tensors):
    """Where PAC runs: the Triton kernels on CUDA, the compiled CPU kernels on CPU (float32/64), else
    this module's PyTorch code (any device and dtype). The backward pass uses the forward's choice."""
    if _use_triton(tensors[0]):
        from . import triton_pac

        return triton_pac
    if cpu_pac.usable(*tensors):
        return cpu_pac
    return sys.modules[__name__]


class _PacContract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, weight, bias, geom, groups):
        ctx.geom, ctx.groups, ctx.has_bias = geom, groups, bias is not None
        ctx.backend = _pac_backend(x, kernel, weight, bias)
        ctx.padded = ctx.backend is cpu_pac
        if ctx.padded:  # the compiled kernels read the padded input: keep it rather than pad x twice
            y, xp = ctx.backend.pac_forward(x, kernel, weight, bias, geom, groups, keep_padded=True)
            ctx.save_for_backward(xp, kernel, weight)
            return y
        ctx.save_for_backward(x, kernel, weight)
        return ctx.backend.pac_forward(x, kernel, weight, bias, geom, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, kernel, weight = ctx.saved_tensors
        nx, nk, nw, nb = ctx.needs_input_grad[:4]
        if ctx.padded:
            gx, gk, gw = ctx.backend.pac_backward(None, kernel, weight, gy, ctx.geom, ctx.groups, nx, nk, nw, xp=x)
        else:
            gx, gk, gw = ctx.backend.pac_backward(x, kernel, weight, gy, ctx.geom, ctx.groups, nx, nk, nw)
        gb = gy.sum((0, 2, 3)) if ctx.has_bias and nb else None
        return gx, gk, gw, gb, None, None


def pac_contract(x: torch.Tensor, kernel: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 geom: Geometry, groups: int = 1) -> torch.Tensor:
    """``Σ_c Σ_j W[o,c,j]·K[b,j,p]·x_j[b,c,p] + bias[o]`` without the unfold.

    ``kernel``: B×T×H'×W' (or B×1×T×H'×W'; batch 1 broadcasts); ``weight``: O×(C/g)×kh×kw.
    """
    b = x.shape[0]
    if kernel.dim() == 5:
        kernel = kernel.squeeze(1)
    ho, wo = geom.out_size(*x.shape[-2:])
    kernel = kernel.expand(b, geom.taps, ho, wo)
    return _PacContract.apply(x, kernel, weight, bias, geom, groups)


# --------------------------------------------------------------------------------------------------
# PAC's adapting-kernel distance:  d[b,j,p] = Σ_g γ_g (f_j[b,g,p] − c[b,g,p])²
def _centre_taps(geom: Geometry) -> list[int]:
    kh, kw = geom.kernel_size
    return [r * kw + q for r in sorted({(kh - 1) // 2, kh // 2}) for q in sorted({(kw - 1) // 2, kw // 2})]


def distance_forward(guide, centre, scale, geom: Geometry) -> torch.Tensor:
    b, cg_, h, w = guide.shape
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    out = guide.new_empty(b, t, ho, wo)
    if _symmetric(geom, centre):
        return _distance_forward_pairs(guide, scale, geom)
    chunks = list(_chunks(b, ho, wo, cg_))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in chunks) * wo
    ebuf = guide.new_empty(cg_ * most)
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        n = rows * wo
        gc = _gather(guide, b0, b1, *_row_span(geom, r0, r1), geom.pads, "replicate")
        c = _centre(gc, geom, rows, wo) if centre is None else _rows(centre, b0, b1, r0, r1)
        e = ebuf[: cg_ * nb * n].view(nb, cg_, rows, wo)
        for j in range(t):
            torch.sub(_tap(gc, geom, j, rows, wo), c, out=e)
            e.mul_(e)
            if scale is None:
                out[b0:b1, j, r0:r1] = e.sum(1)
            else:
                for s in range(nb):
                    torch.mv(e[s].view(cg_, n).t(), scale, out=out[b0 + s, j].view(-1)[r0 * wo: r1 * wo])
    return out


def distance_backward(guide, centre, scale, gd, geom: Geometry, need_f: bool, need_c: bool, need_s: bool):
    """Gradients of Σ_g s_g (f_j − c)². With t_j = gd_j·(f_j − c): ∂f (at tap j) = 2s·t_j,
    ∂c = −2s·Σ_j t_j, and ∂s = Σ_j Σ_p t_j·(f_j − c) = Σ_q f·A + Σ_p c·(−Σ_j t_j) with A the taps'
    t_j accumulated where they were read (so ∂s costs no per-tap pass)."""
    if _symmetric(geom, centre):
        return _distance_backward_pairs(guide, scale, gd, geom, need_f, need_s)
    b, cg_, h, w = guide.shape
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    internal = centre is None
    gf = torch.zeros_like(guide) if need_f else None
    gcen = torch.zeros_like(centre) if (not internal and need_c) else None
    gs = guide.new_zeros(cg_) if need_s else None
    s4 = None if scale is None else scale.view(1, -1, 1, 1)
    need_a = need_f or need_s
    chunks = list(_chunks(b, ho, wo, cg_))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in chunks) * wo
    ebuf = guide.new_empty(cg_ * most)
    accbuf = guide.new_empty(cg_ * most)
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        lo, hi = _row_span(geom, r0, r1)
        gc = _gather(guide, b0, b1, lo, hi, geom.pads, "replicate")
        c = _centre(gc, geom, rows, wo) if internal else _rows(centre, b0, b1, r0, r1)
        gdc = _rows(gd, b0, b1, r0, r1)
        e = ebuf[: cg_ * nb * rows * wo].view(nb, cg_, rows, wo)
        acc = accbuf[: cg_ * nb * rows * wo].view(nb, cg_, rows, wo).zero_()  # −Σ_j t_j
        a = torch.zeros_like(gc) if need_a else None  # Σ_j t_j where tap j was read
        for j in range(t):
            torch.sub(_tap(gc, geom, j, rows, wo), c, out=e)
            e.mul_(gdc[:, j, None])
            if need_a:
                _tap(a, geom, j, rows, wo).add_(e)
            acc.sub_(e)
        if need_s:
            gs += (gc * a).sum((0, 2, 3)) + (c * acc).sum((0, 2, 3))
        if s4 is not None:
            acc.mul_(2 * s4)
        else:
            acc.mul_(2)
        if need_f:
            a.mul_(2 * s4 if s4 is not None else 2)
            if internal:
                taps = _centre_taps(geom)
                share = acc / len(taps) if len(taps) > 1 else acc
                for j in taps:
                    _tap(a, geom, j, rows, wo).add_(share)
            _scatter_add(gf, a, b0, b1, lo, hi, geom.pads, "replicate")
        if gcen is not None:
            gcen[b0:b1, :, r0:r1] = acc
    return gf, gcen, gs


# Stride 1, odd kernel, the window centre as the centre: the distance is symmetric,
# d(p, p+δ) = d(p+δ, p), so the taps ±δ share one difference E_δ(q) = f(q+δ) − f(q), computed once on
# a box slightly larger than the tile (the centre tap's distance is exactly 0). This halves the work.
def _symmetric(geom: Geometry, centre) -> bool:
    kh, kw = geom.kernel_size
    return centre is None and geom.stride == (1, 1) and kh % 2 == 1 and kw % 2 == 1 and geom.taps > 1


def _pair_boxes(geom: Geometry, rows: int, wo: int):
    """For each tap pair (j, mirror): the box origin, its size, δ, and where taps j and mirror read it."""
    (kh, kw), (dh, dw) = geom.kernel_size, geom.dilation
    ch, cw = (kh - 1) // 2 * dh, (kw - 1) // 2 * dw
    t = geom.taps
    out = []
    for j in range(t // 2):
        a, b = divmod(j, kw)
        oj = (a * dh, b * dw)
        om = (2 * ch - oj[0], 2 * cw - oj[1])
        delta = (oj[0] - ch, oj[1] - cw)
        r_lo, c_lo = min(ch, om[0]), min(cw, om[1])
        size = (rows + abs(delta[0]), wo + abs(delta[1]))
        out.append((j, t - 1 - j, (r_lo, c_lo), size, delta, (ch - r_lo, cw - c_lo), (om[0] - r_lo, om[1] - c_lo)))
    return out


def _box(t: torch.Tensor, origin, size) -> torch.Tensor:
    return t[:, :, origin[0]: origin[0] + size[0], origin[1]: origin[1] + size[1]]


def _distance_forward_pairs(guide, scale, geom: Geometry) -> torch.Tensor:
    b, cg_, h, w = guide.shape
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    out = guide.new_empty(b, t, ho, wo)
    out[:, t // 2] = 0
    chunks = list(_chunks(b, ho, wo, cg_))
    (kh, kw), (dh, dw) = geom.kernel_size, geom.dilation
    most = max((b1 - b0) * (r1 - r0 + (kh - 1) * dh) for b0, b1, r0, r1 in chunks) * (wo + (kw - 1) * dw)
    ebuf = guide.new_empty(cg_ * most)
    dbuf = guide.new_empty(most)
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        gc = _gather(guide, b0, b1, *_row_span(geom, r0, r1), geom.pads, "replicate")
        for j, jm, origin, size, delta, at_j, at_m in _pair_boxes(geom, rows, wo):
            n = size[0] * size[1]
            e = ebuf[: nb * cg_ * n].view(nb, cg_, *size)
            torch.sub(_box(gc, (origin[0] + delta[0], origin[1] + delta[1]), size), _box(gc, origin, size), out=e)
            e.mul_(e)
            d = dbuf[: nb * n].view(nb, *size)
            if scale is None:
                torch.sum(e, 1, out=d)
            else:
                for s_ in range(nb):
                    torch.mv(e[s_].view(cg_, n).t(), scale, out=d[s_].view(-1))
            out[b0:b1, j, r0:r1] = d[:, at_j[0]: at_j[0] + rows, at_j[1]: at_j[1] + wo]
            out[b0:b1, jm, r0:r1] = d[:, at_m[0]: at_m[0] + rows, at_m[1]: at_m[1] + wo]
    return out


def _distance_backward_pairs(guide, scale, gd, geom: Geometry, need_f: bool, need_s: bool):
    b, cg_, h, w = guide.shape
    ho, wo = geom.out_size(h, w)
    gf = torch.zeros_like(guide) if need_f else None
    gs = guide.new_zeros(cg_) if need_s else None
    chunks = list(_chunks(b, ho, wo, cg_))
    (kh, kw), (dh, dw) = geom.kernel_size, geom.dilation
    most = max((b1 - b0) * (r1 - r0 + (kh - 1) * dh) for b0, b1, r0, r1 in chunks) * (wo + (kw - 1) * dw)
    ebuf = guide.new_empty(cg_ * most)
    gbuf = guide.new_empty(most)
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        lo, hi = _row_span(geom, r0, r1)
        gc = _gather(guide, b0, b1, lo, hi, geom.pads, "replicate")
        gdc = _rows(gd, b0, b1, r0, r1)
        a = torch.zeros_like(gc)  # +t at q+δ, −t at q, t = G·E_δ
        for j, jm, origin, size, delta, at_j, at_m in _pair_boxes(geom, rows, wo):
            n = size[0] * size[1]
            g2 = gbuf[: nb * n].view(nb, *size).zero_()
            g2[:, at_j[0]: at_j[0] + rows, at_j[1]: at_j[1] + wo] += gdc[:, j]
            g2[:, at_m[0]: at_m[0] + rows, at_m[1]: at_m[1] + wo] += gdc[:, jm]
            e = ebuf[: nb * cg_ * n].view(nb, cg_, *size)
            shifted = (origin[0] + delta[0], origin[1] + delta[1])
            torch.sub(_box(gc, shifted, size), _box(gc, origin, size), out=e)
            e.mul_(g2[:, None])
            _box(a, shifted, size).add_(e)
            _box(a, origin, size).sub_(e)
        if need_s:
            gs += (gc * a).sum((0, 2, 3))  # Σ_q f·a = Σ t·E_δ
        if need_f:
            a.mul_(2 * scale.view(1, -1, 1, 1) if scale is not None else 2)
            _scatter_add(gf, a, b0, b1, lo, hi, geom.pads, "replicate")
    return gf, None, gs


class _PacDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, guide, centre, scale, geom):
        ctx.geom = geom
        ctx.compiled = cpu_pac.usable(guide, centre, scale)
        if ctx.compiled:  # the kernels read the replicate-padded guide: keep it for the backward
            d, fp = cpu_pac.distance_forward(guide, centre, scale, geom, keep_padded=True)
            ctx.save_for_backward(fp, centre, scale)
            return d
        ctx.save_for_backward(guide, centre, scale)
        return distance_forward(guide, centre, scale, geom)

    @staticmethod
    @once_differentiable
    def backward(ctx, gd):
        guide, centre, scale = ctx.saved_tensors
        nf, nc, ns = ctx.needs_input_grad[:3]
        if ctx.compiled:
            gf, gc, gs = cpu_pac.distance_backward(None, centre, scale, gd, ctx.geom, nf, nc,
                                                   ns and scale is not None, fp=guide)
        else:
            gf, gc, gs = distance_backward(guide, centre, scale, gd.contiguous(), ctx.geom, nf, nc,
                                           ns and scale is not None)
        return gf, gc, gs, None


def pac_distance(guide: torch.Tensor, geom: Geometry, scale: torch.Tensor | None = None,
                 centre: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_g scale_g (f_j − c)²`` for every tap: B×T×H'×W', ``f`` replicate-padded by ``geom.pads``.

    ``centre`` (B×Cg×H'×W') defaults to the guide at each window's centre (the average of the middle
    taps for even kernels), as :func:`adaptconv.ops.taps.window_centres` computes it.
    """
    if scale is not None and scale.dtype != guide.dtype:
        scale = scale.to(guide.dtype)
    return _PacDistance.apply(guide, centre, scale, geom)


# --------------------------------------------------------------------------------------------------
# Dynamic (per-pixel, per-channel-group) filtering:  z[b,c,p] = Σ_j F[b,g(c),j,p] · x_j[b,c,p]
def dynamic_forward(x, filters, geom: Geometry) -> torch.Tensor:
    b, c, h, w = x.shape
    g = filters.shape[1]
    cg = c // g
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    y = x.new_zeros(b, c, ho, wo)
    for b0, b1, r0, r1 in _chunks(b, ho, wo, c):
        nb, rows = b1 - b0, r1 - r0
        xc = _gather(x, b0, b1, *_row_span(geom, r0, r1), geom.pads, "zeros")
        fc = filters[b0:b1, :, :, r0:r1]
        yc = y[b0:b1, :, r0:r1].view(nb, g, cg, rows, wo)
        for j in range(t):
            yc.addcmul_(_tap(xc, geom, j, rows, wo).view(nb, g, cg, rows, wo), fc[:, :, j, None])
    return y


def dynamic_backward(x, filters, gy, geom: Geometry, need_x: bool, need_f: bool):
    b, c, h, w = x.shape
    g = filters.shape[1]
    cg = c // g
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    gx = torch.zeros_like(x) if need_x else None
    gf = filters.new_empty(filters.shape) if need_f else None
    for b0, b1, r0, r1 in _chunks(b, ho, wo, c):
        nb, rows = b1 - b0, r1 - r0
        lo, hi = _row_span(geom, r0, r1)
        xc = _gather(x, b0, b1, lo, hi, geom.pads, "zeros")
        fc = filters[b0:b1, :, :, r0:r1]
        gyc = gy[b0:b1, :, r0:r1].reshape(nb, g, cg, rows, wo)
        gxc = torch.zeros_like(xc) if need_x else None
        for j in range(t):
            if need_f:
                gf[b0:b1, :, j, r0:r1] = (gyc * _tap(xc, geom, j, rows, wo).view(nb, g, cg, rows, wo)).sum(2)
            if need_x:
                _tap(gxc, geom, j, rows, wo).view(nb, g, cg, rows, wo).addcmul_(gyc, fc[:, :, j, None])
        if need_x:
            _scatter_add(gx, gxc, b0, b1, lo, hi, geom.pads, "zeros")
    return gx, gf


class _DynamicFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, filters, geom):
        ctx.geom = geom
        ctx.save_for_backward(x, filters)
        return dynamic_forward(x, filters, geom)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, filters = ctx.saved_tensors
        gx, gf = dynamic_backward(x, filters, gy, ctx.geom, *ctx.needs_input_grad[:2])
        return gx, gf, None


def dynamic_filter(x: torch.Tensor, filters: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """``Σ_j F[b,g(c),j,p]·x_j[b,c,p]`` without the unfold; ``filters``: B×G×T×H'×W' (batch 1
    broadcasts; C % G == 0). No channel mixing: output B×C×H'×W'."""
    b = x.shape[0]
    ho, wo = geom.out_size(*x.shape[-2:])
    filters = filters.expand(b, filters.shape[1], geom.taps, ho, wo)
    return _DynamicFilter.apply(x, filters, geom)


# --------------------------------------------------------------------------------------------------
# PAKA:  y[b,o,p] = Σ_j Σ_c W[o,c,j] · x_j[b,c,p] · (1 + tanh(A_c[b,c,p] + A_s[b,j,p])) + bias[o]
# The factor is per (channel, tap) and pixel: as PAC, per tile and tap, with the factor recomputed.
def _gc_view(t: torch.Tensor, b0, b1, r0, r1, g: int) -> torch.Tensor:
    """t[b0:b1, :, r0:r1] (nb×C×rows×W') as g×(C/g)×nb×rows×W'."""
    v = t[b0:b1, :, r0:r1]
    nb, c = v.shape[:2]
    return v.view(nb, g, c // g, *v.shape[2:]).permute(1, 2, 0, 3, 4)


def _gc_tile(t: torch.Tensor, b0, b1, r0, r1, g: int, buf: torch.Tensor) -> torch.Tensor:
    """:func:`_gc_view`, copied into ``buf`` (contiguous) when the channel stride aliases."""
    v = _gc_view(t, b0, b1, r0, r1, g)
    if not _aliasing(t.stride(1)):
        return v
    out = buf[: v.numel()].view(v.shape)
    out.copy_(v)
    return out


def paka_forward(x, a_c, a_s, weight, bias, geom: Geometry, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    o = weight.shape[0]
    t = geom.taps
    g, cg, og = groups, c // groups, o // groups
    ho, wo = geom.out_size(h, w)
    w2 = weight.reshape(g, og, cg * t)
    y = x.new_empty(b, o, ho, wo)
    chunks = list(_chunks(b, ho, wo, c))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in chunks) * wo
    cbuf = x.new_empty(t * c * most)
    abuf = x.new_empty(o * most)
    acbuf = x.new_empty(c * most)
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        n = nb * rows * wo
        xc = _gather(x, b0, b1, *_row_span(geom, r0, r1), geom.pads, "zeros")
        ac = _gc_tile(a_c, b0, b1, r0, r1, g, acbuf)
        ats = _rows(a_s, b0, b1, r0, r1).unbind(1)
        cols = cbuf[: t * c * n].view(g, cg, t, nb, rows, wo)
        for j in range(t):
            xj = _tap_gc(xc, geom, j, rows, wo, g)
            p = cols[:, :, j]
            torch.add(ac, ats[j], out=p).tanh_()
            torch.addcmul(xj, p, xj, out=p)  # x_j·(1 + tanh)
        _gemm_tile(y, w2, cols.view(g, cg * t, n), b0, b1, r0, r1, abuf)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


def paka_backward(x, a_c, a_s, weight, gy, geom: Geometry, groups: int, need_x, need_ac, need_as, need_w):
    b, c, h, w = x.shape
    o = weight.shape[0]
    t = geom.taps
    g, cg, og = groups, c // groups, o // groups
    ho, wo = geom.out_size(h, w)
    wtt = _tap_weights(weight, g).transpose(2, 3).unbind(0)
    gx = torch.zeros_like(x) if need_x else None
    gac = a_c.new_zeros(a_c.shape) if need_ac else None
    gas = a_s.new_empty(a_s.shape) if need_as else None
    gwt = x.new_zeros(g, t * cg, og) if need_w else None
    chunks = list(_chunks(b, ho, wo, c))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in chunks) * wo
    tbuf = x.new_empty(t * c * most)  # tanh(A_c + A_s[j]) of every tap
    cbuf = x.new_empty(t * c * most) if need_w else None
    qbuf = x.new_empty(c * most)
    pbuf = x.new_empty(c * most)
    gbuf = x.new_empty(o * most)
    acbuf = x.new_empty(c * most)
    gacbuf = x.new_empty(c * most) if need_ac else None
    one = x.new_ones(())
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        n = nb * rows * wo
        lo, hi = _row_span(geom, r0, r1)
        xc = _gather(x, b0, b1, lo, hi, geom.pads, "zeros")
        ac = _gc_tile(a_c, b0, b1, r0, r1, g, acbuf)
        ats = _rows(a_s, b0, b1, r0, r1).unbind(1)
        th = tbuf[: t * c * n].view(t, g, cg, nb, rows, wo)
        for j in range(t):
            torch.add(ac, ats[j], out=th[j]).tanh_()
        gyc = _tile_out(gy, b0, b1, r0, r1, g) if gy.is_contiguous() else None
        if gyc is None:
            gyc = gbuf[: o * n].view(g, og, n)
            gyc.view(o, nb, rows, wo).copy_(gy[b0:b1, :, r0:r1].transpose(0, 1))
        if need_w:
            cols = cbuf[: t * c * n].view(g, t, cg, nb, rows, wo)
            for j in range(t):
                xj = _tap_gc(xc, geom, j, rows, wo, g)
                torch.addcmul(xj, th[j], xj, out=cols[:, j])
            gwt.baddbmm_(cols.view(g, t * cg, n), gyc.transpose(1, 2))
        if need_x or need_ac or need_as:
            q = qbuf[: c * n].view(g, cg, nb, rows, wo)
            qm = q.view(g, cg, n)
            p = pbuf[: c * n].view(g, cg, nb, rows, wo)
            gxc = torch.zeros_like(xc) if need_x else None
            gacc = None
            if need_ac:
                gacc = _gc_view(gac, b0, b1, r0, r1, g)
                if _aliasing(gac.stride(1)):
                    gacc = gacbuf[: c * n].view(gacc.shape).zero_()
            for j in range(t):
                torch.bmm(wtt[j], gyc, out=qm)  # the gradient of x_j·(1 + tanh)
                if need_x:
                    _tap_gc(gxc, geom, j, rows, wo, g).add_(q).addcmul_(q, th[j])
                if need_ac or need_as:
                    torch.addcmul(one, th[j], th[j], value=-1, out=th[j])  # 1 − tanh²
                    torch.mul(q, _tap_gc(xc, geom, j, rows, wo, g), out=p).mul_(th[j])
                    if need_ac:
                        gacc.add_(p)
                    if need_as:
                        gas[b0:b1, j, r0:r1] = p.sum((0, 1))
            if need_ac and gacc.data_ptr() == gacbuf.data_ptr():
                _gc_view(gac, b0, b1, r0, r1, g).copy_(gacc)
            if need_x:
                _scatter_add(gx, gxc, b0, b1, lo, hi, geom.pads, "zeros")
    gw = gwt.view(g, t, cg, og).permute(0, 3, 2, 1).reshape(weight.shape) if need_w else None
    return gx, gac, gas, gw


class _PakaContract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a_c, a_s, weight, bias, geom, groups):
        ctx.geom, ctx.groups, ctx.has_bias = geom, groups, bias is not None
        ctx.save_for_backward(x, a_c, a_s, weight)
        return paka_forward(x, a_c, a_s, weight, bias, geom, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, a_c, a_s, weight = ctx.saved_tensors
        nx, nac, nas, nw, nb = ctx.needs_input_grad[:5]
        gx, gac, gas, gw = paka_backward(x, a_c, a_s, weight, gy, ctx.geom, ctx.groups, nx, nac, nas, nw)
        gb = gy.sum((0, 2, 3)) if ctx.has_bias and nb else None
        return gx, gac, gas, gw, gb, None, None


def paka_contract(x, channel_att, tap_att, weight, bias, geom: Geometry, groups: int = 1) -> torch.Tensor:
    """PAKA without the unfold: ``channel_att`` B×C×H'×W', ``tap_att`` B×T×H'×W' (batch 1 broadcasts)."""
    b, c = x.shape[:2]
    ho, wo = geom.out_size(*x.shape[-2:])
    channel_att = channel_att.expand(b, c, ho, wo)
    tap_att = tap_att.expand(b, geom.taps, ho, wo)
    return _PakaContract.apply(x, channel_att, tap_att, weight, bias, geom, groups)


# --------------------------------------------------------------------------------------------------
# ACDA:  Z[b,c,m,p] = Σ_j D[b,m,j,p] · x_j[b,c,p];  y = Conv1×1(Z; coef) + bias
# Per pixel, Z is the small product (M×T)·(T×C) of the atoms and the taps: per tile, the taps are laid
# out pixel-major (N×T×C, from a channels-last copy of the tile) and Z is one batched matmul; the
# 1×1 mixing is a GEMM. Z is recomputed in backward, never stored.
def _tap_cl(xcl: torch.Tensor, geom: Geometry, j: int, rows: int, wo: int) -> torch.Tensor:
    """Tap j of a channels-last padded tile (nb×H_in×W_in×C): nb×rows×W'×C."""
    a, b = divmod(j, geom.kernel_size[1])
    s0, s1, s2, s3 = xcl.stride()
    return xcl.as_strided((xcl.shape[0], rows, wo, xcl.shape[3]), (s0, s1 * geom.stride[0], s2 * geom.stride[1], s3),
                          xcl.storage_offset() + a * geom.dilation[0] * s1 + b * geom.dilation[1] * s2)


def _acda_tile(x, atoms, geom, b0, b1, r0, r1, wo, xbuf, dbuf):
    """(padded tile, pixel-major taps N×T×C, pixel-major atoms N×M×T)."""
    nb, rows = b1 - b0, r1 - r0
    c, (m, t) = x.shape[1], atoms.shape[1:3]
    n = nb * rows * wo
    lo, hi = _row_span(geom, r0, r1)
    xc = _gather(x, b0, b1, lo, hi, geom.pads, "zeros")
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
    chunks = list(_chunks(b, ho, wo, c))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in chunks) * wo
    xbuf, dbuf, zbuf, abuf = (x.new_empty(most * k) for k in (t * c, m * t, m * c, o))
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        n = nb * rows * wo
        _, cols, d = _acda_tile(x, atoms, geom, b0, b1, r0, r1, wo, xbuf, dbuf)
        z = torch.bmm(d, cols, out=zbuf[: n * m * c].view(n, m, c))
        acc = _tile_out(y, b0, b1, r0, r1, g)
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
    chunks = list(_chunks(b, ho, wo, c))
    most = max((b1 - b0) * (r1 - r0) for b0, b1, r0, r1 in chunks) * wo
    xbuf, dbuf, zbuf, gbuf, tbuf = (x.new_empty(most * k) for k in (t * c, m * t, m * c, o, t * c))
    for b0, b1, r0, r1 in chunks:
        nb, rows = b1 - b0, r1 - r0
        n = nb * rows * wo
        lo, hi = _row_span(geom, r0, r1)
        xc, cols, d = _acda_tile(x, atoms, geom, b0, b1, r0, r1, wo, xbuf, dbuf)
        gyc = _tile_out(gy, b0, b1, r0, r1, g) if gy.is_contiguous() else None
        if gyc is None:
            gyc = gbuf[: o * n].view(g, og, n)
            gyc.view(o, nb, rows, wo).copy_(gy[b0:b1, :, r0:r1].transpose(0, 1))
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
                _scatter_add(gx, gxcl.permute(0, 3, 1, 2), b0, b1, lo, hi, geom.pads, "zeros")
    gw = None
    if need_w:
        gw = gw2.view(g, og, m, cg).transpose(2, 3).reshape(coef.shape)
    return gx, gd, gw


class _AcdaContract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, atoms, coef, bias, geom, groups):
        ctx.geom, ctx.groups, ctx.has_bias = geom, groups, bias is not None
        ctx.save_for_backward(x, atoms, coef)
        return acda_forward(x, atoms, coef, bias, geom, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, atoms, coef = ctx.saved_tensors
        nx, nd, nw, nb = ctx.needs_input_grad[:4]
        gx, gd, gw = acda_backward(x, atoms, coef, gy, ctx.geom, ctx.groups, nx, nd, nw)
        gb = gy.sum((0, 2, 3)) if ctx.has_bias and nb else None
        return gx, gd, gw, gb, None, None


def acda_contract(x, atoms, coef, bias, geom: Geometry, groups: int = 1) -> torch.Tensor:
    """ACDA without the unfold (and without storing Z): ``atoms`` B×M×T×H'×W' (batch 1 broadcasts),
    ``coef`` O×(C/g·M)×1×1 with input index c·M + m."""
    b = x.shape[0]
    ho, wo = geom.out_size(*x.shape[-2:])
    atoms = atoms.expand(b, atoms.shape[1], geom.taps, ho, wo)
    return _AcdaContract.apply(x, atoms, coef, bias, geom, groups)
