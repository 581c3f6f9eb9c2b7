"""Deformable convolution v1/v2 on the CPU: compiled bilinear sampling around MKL GEMMs.

torchvision's CPU ``deform_conv2d`` samples the whole B·C·k²·H'·W' column buffer one element at a
time and then loops over the batch; a training step of a 64→64 layer at 56×56 costs about 70×
``nn.Conv2d``. Here the work is split the way :mod:`adaptconv.ops.cpu_pac` splits PAC's:

- forward, per tile of output pixels of one sample: ``deform_cols`` (``csrc/deform_cpu.cpp``) writes
  the sampled taps (pixels × k²·C, mask folded in) from the channels-last input, where a corner's C
  values are contiguous; one GEMM per conv group with the weight gives the tile's output;
- backward, per tile: the same columns again and one GEMM give ∂W; one GEMM gives the columns'
  gradient ``gyᵀ·W``, and ``deform_backward`` turns it, in one pass, into ∂x (scattered to the four
  corners) and ∂offset / ∂mask (the sampled values' derivatives summed over the channels of each offset
  group). The threads split the tile's pixels, each but the first scattering into its own ∂x plane of
  one sample, added up after the sample (:data:`PRIVATE_BYTES` caps those planes; past it they split
  the channels, in whole cache lines, so that no two write the same element).

Nothing of size k²·C per pixel outlives a tile (about :data:`TILE_BYTES`), so the extra memory is the
channels-last copy of x (kept for the backward) and the tile buffers.

The arithmetic is torchvision's: the same sampling points, the four corners each read only inside
the image, the same gradients (``tests/ops/test_cpu_deform.py`` compares them in float64). A point
with no corner in the image (a NaN or infinite offset included) reads 0 and gets no gradient.

The library is compiled on first use by :mod:`adaptconv.ops.cpu_build`, like every compiled CPU kernel
(about 2 s, cached per source, compiler and CPU). Without a compiler, with ``config.cpu_kernels`` off
(``ADAPTCONV_CPU_KERNELS=0``, ``config.override(cpu_kernels=False)``, :func:`disabled`), and for dtypes
other than float32/float64, the operators call torchvision's kernel instead.
"""

from __future__ import annotations

import ctypes
import math

import torch

from . import config
from .cpu_build import SUFFIX as _SUFFIX
from .cpu_build import Kernels
from .cpu_build import ptr as _ptr

__all__ = ["available", "usable", "takes", "disabled", "status", "deform_conv2d", "TILE_BYTES", "PRIVATE_BYTES"]

ABI = 3
#: Bytes of one tile's column buffer (pixels × k²·C); the backward holds two. Half the last-level
#: cache share of a core keeps a tile and its GEMM operands in cache (see the benchmark's notes).
TILE_BYTES = 1 << 20
#: Most bytes of the per-thread ∂x planes (one sample each, for every thread but the first) that let
#: the backward split a tile's pixels between threads; above it they split the channels instead, which
#: repeats the per-tap set-up in every thread and scales worse.
PRIVATE_BYTES = 64 << 20


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for sfx in _SUFFIX.values():
        getattr(lib, f"deform_cols_{sfx}").argtypes = [p] * 4 + [i64] * 9 + [p, p, i32]
        getattr(lib, f"deform_channels_last_{sfx}").argtypes = [p, p, i64, i64, i64, i32]
        getattr(lib, f"deform_backward_{sfx}").argtypes = [p] * 8 + [i64] * 9 + [p, i32]
        getattr(lib, f"deform_reduce_{sfx}").argtypes = [p, p, i64, i64, i32]
        for name in ("deform_cols", "deform_channels_last", "deform_backward", "deform_reduce"):
            getattr(lib, f"{name}_{sfx}").restype = None


KERNELS = Kernels(
    "deform_cpu", ABI, _declare, "deformable-convolution", "deform/mdeform run torchvision's slower CPU kernel"
)
available, status, usable, _fn = KERNELS.available, KERNELS.status, KERNELS.usable, KERNELS.fn


def takes(x, *others) -> bool:
    """The compiled kernels take these tensors: float32/float64 CPU tensors, kernels on, and an input
    plane of fewer than 2³¹ pixels (the kernels index pixels with int32)."""
    return usable(x, *others) and x.shape[-2] * x.shape[-1] < 2**31


def disabled():
    """Run torchvision's kernel inside the block (forward; a graph built outside keeps its backward):
    ``config.override(cpu_kernels=False)``, which turns every compiled CPU kernel off."""
    return config.override(cpu_kernels=False)


def _tiles(pixels: int, row_elems: int, itemsize: int) -> list[tuple[int, int]]:
    """(p0, n) blocks of one sample's output pixels, balanced, each about TILE_BYTES of columns."""
    most = max(1, TILE_BYTES // max(1, row_elems * itemsize))
    count = math.ceil(pixels / most)
    size = math.ceil(pixels / count)
    return [(p0, min(size, pixels - p0)) for p0 in range(0, pixels, size)]


# --------------------------------------------------------------------------------------------------
class _Geometry:
    """Everything the kernels and the GEMMs need, from the shapes (already validated by the caller)."""

    def __init__(self, x, offset, weight, stride, padding, dilation):
        self.b, self.c, self.h, self.w = x.shape
        self.o, self.cg, self.kh, self.kw = weight.shape
        self.taps = self.kh * self.kw
        self.groups = self.c // self.cg
        self.og = self.o // self.groups
        self.ogroups = offset.shape[1] // (2 * self.taps)
        self.ho, self.wo = offset.shape[2:]
        self.g8 = (ctypes.c_int64 * 8)(
            self.kh, self.kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]
        )
        self.tiles = _tiles(self.ho * self.wo, self.taps * self.c, x.element_size())
        self.most = max(n for _, n in self.tiles)

    def sample_args(self, p0, n):
        return (self.c, self.h, self.w, self.ho, self.wo, self.groups, self.ogroups, p0, n, self.g8)

    def block(self, k):
        """Columns of conv group k in a cols row, and its output channels."""
        tcg = self.taps * self.cg
        return slice(k * tcg, (k + 1) * tcg), slice(k * self.og, (k + 1) * self.og)


def _weight_rows(weight, geo):
    """The weight as groups × O/groups × (tap, channel), the columns' order."""
    return weight.permute(0, 2, 3, 1).reshape(geo.groups, geo.og, geo.taps * geo.cg)


def _per_sample(t):
    """``t`` if each sample of it is contiguous (all the kernels need; e.g. v2's offsets and mask, which
    are channel slices of one side-conv output), else a contiguous copy."""
    return t if t is None or t[0].is_contiguous() else t.contiguous()


def _channels_last(x):
    """B×H×W×C copy of a B×C×H×W tensor (the compiled transpose; torch's is slow on narrow maps)."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1)  # already laid out so: a view
    x = x.contiguous()
    b, c, h, w = x.shape
    xh = x.new_empty(b, h, w, c)
    _fn("deform_channels_last", x.dtype)(_ptr(x), _ptr(xh), b, c, h * w, torch.get_num_threads())
    return xh


def _forward(x, offset, mask, weight, bias, geo):
    """The output (B×O×H'W'), the inputs as the kernels read them (x channels last), and how many
    offsets were NaN or infinite (those points read 0)."""
    xh = _channels_last(x)
    offset, mask = _per_sample(offset), _per_sample(mask)
    wr = _weight_rows(weight, geo)
    y = x.new_empty(geo.b, geo.o, geo.ho * geo.wo)
    cols = x.new_empty(geo.most, geo.taps * geo.c)
    sample, nt = _fn("deform_cols", x.dtype), torch.get_num_threads()
    nonfinite = ctypes.c_int64(0)
    for b in range(geo.b):
        for p0, n in geo.tiles:
            sample(
                _ptr(xh[b]),
                _ptr(offset[b]),
                _ptr(None if mask is None else mask[b]),
                _ptr(cols),
                *geo.sample_args(p0, n),
                ctypes.byref(nonfinite),
                nt,
            )
            for k in range(geo.groups):
                cblock, oblock = geo.block(k)
                out = y[b, oblock, p0 : p0 + n]
                if bias is None:
                    torch.mm(wr[k], cols[:n, cblock].t(), out=out)
                else:
                    torch.addmm(bias[oblock, None], wr[k], cols[:n, cblock].t(), out=out)
    return y, xh, offset, mask, nonfinite.value


class _DeformConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, stride, padding, dilation, found):
        geo = _Geometry(x, offset, weight, stride, padding, dilation)
        y, xh, offset, mask, nonfinite = _forward(x, offset, mask, weight, bias, geo)
        found[0] = nonfinite
        ctx.geo = geo
        ctx.has_bias = bias is not None
        ctx.save_for_backward(xh, offset, mask, weight)
        return y.view(geo.b, geo.o, geo.ho, geo.wo)

    @staticmethod
    def backward(ctx, gy):
        xh, offset, mask, weight = ctx.saved_tensors
        geo = ctx.geo
        need_x, need_off, need_mask, need_w, need_b = ctx.needs_input_grad[:5]
        need_mask = need_mask and mask is not None
        hw = geo.ho * geo.wo
        gy = gy.contiguous().view(geo.b, geo.o, hw)
        wr = _weight_rows(weight, geo)
        gxh = torch.zeros_like(xh) if need_x else None
        goff = torch.empty_like(offset) if need_off else None
        gmask = torch.empty_like(mask) if need_mask else None
        gwr = weight.new_zeros(geo.groups, geo.og, geo.taps * geo.cg) if need_w else None
        sample_back = need_x or need_off or need_mask
        cols = xh.new_empty(geo.most, geo.taps * geo.c) if need_w else None
        gcols = xh.new_empty(geo.most, geo.taps * geo.c) if sample_back else None
        sample, scatter = _fn("deform_cols", xh.dtype), _fn("deform_backward", xh.dtype)
        nt = torch.get_num_threads()
        plane = geo.h * geo.w * geo.c
        priv = None
        if need_x and nt > 1 and (nt - 1) * plane * xh.element_size() <= PRIVATE_BYTES:
            priv = xh.new_zeros(nt - 1, plane)
        for b in range(geo.b):
            mb = None if mask is None else mask[b]
            for p0, n in geo.tiles:
                if need_w:
                    sample(_ptr(xh[b]), _ptr(offset[b]), _ptr(mb), _ptr(cols), *geo.sample_args(p0, n), None, nt)
                for k in range(geo.groups):
                    cblock, oblock = geo.block(k)
                    gyt = gy[b, oblock, p0 : p0 + n]
                    if need_w:
                        gwr[k].addmm_(gyt, cols[:n, cblock])
                    if sample_back:
                        torch.mm(gyt.t(), wr[k], out=gcols[:n, cblock])
                if sample_back:
                    scatter(
                        _ptr(xh[b]),
                        _ptr(offset[b]),
                        _ptr(mb),
                        _ptr(gcols),
                        _ptr(None if gxh is None else gxh[b]),
                        _ptr(priv),
                        _ptr(None if goff is None else goff[b]),
                        _ptr(None if gmask is None else gmask[b]),
                        *geo.sample_args(p0, n),
                        nt,
                    )
            if priv is not None:
                _fn("deform_reduce", xh.dtype)(_ptr(gxh[b]), _ptr(priv), nt - 1, plane, nt)
        gx = gxh.permute(0, 3, 1, 2).contiguous() if need_x else None
        gw = None
        if need_w:
            gw = gwr.view(geo.o, geo.kh, geo.kw, geo.cg).permute(0, 3, 1, 2).contiguous()
        gb = gy.sum((0, 2)) if (need_b and ctx.has_bias) else None
        return gx, goff, gmask, gw, gb, None, None, None, None


def deform_conv2d(
    x, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None, nonfinite=None
):
    """torchvision's ``deform_conv2d`` computed by the compiled kernels (shapes validated by the
    caller, :func:`adaptconv.ops.deform.deform_conv2d`; stride/padding/dilation as pairs). A point whose
    offset is NaN or infinite reads 0; with ``nonfinite`` a list, its first item is set to how many
    offsets were (counted while sampling, so a caller needs no pass of its own to find them)."""
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    found = nonfinite if nonfinite is not None else [0]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, offset, mask, weight, bias)):
        y = _DeformConv.apply(x, offset, mask, weight, bias, stride, padding, dilation, found)
    else:  # inference: no autograd node, and nothing kept for a backward
        geo = _Geometry(x, offset, weight, stride, padding, dilation)
        y, *_, found[0] = _forward(x, offset, mask, weight, bias, geo)
        y = y.view(geo.b, geo.o, geo.ho, geo.wo)
    return y
