"""Deformable convolution v1 (Dai et al., ICCV 2017) and v2 / modulated (Zhu et al., CVPR 2019).

Each tap of the window is moved by a learned, per-pixel fractional offset and read with bilinear
interpolation (zero outside the image); v2 also scales each tap by a learned per-pixel mask::

    y(p) = Σ_j w_j · m_j(p) · x(p·s − pad + j·d + Δp_j(p)) + b        (v1: m ≡ 1)

The offsets Δp (and the mask logits) come from one side convolution on the guide (or on ``x`` when
self-guided) with the operator's kernel size, stride, padding and dilation, so it is H'×W' like the
output; it is zero-initialised, so a fresh layer samples the regular grid. With ``offset_groups=G``
the input channels are split into G contiguous groups, each with its own offsets (and mask).

The sampling is :mod:`adaptconv.ops.cpu_deform`'s compiled kernels for float32/float64 CPU tensors
(bilinear sampling into tiles, MKL GEMMs; a training step about 15-20× faster than torchvision's CPU
kernel, equal to it in float64), and ``torchvision.ops.deform_conv2d`` everywhere else (CUDA, float16,
or with the CPU kernels off). The offset layout is torchvision's, interleaved per tap,
``[dy_0, dx_0, dy_1, dx_1, …]`` for each offset group in turn, taps in row-major order. bfloat16 on
the CPU has no kernel (refused with a TypeError); torchvision's CUDA backward uses atomic adds and is
not bit-deterministic.

Mask scaling: v2's mask is ``mask_scale · sigmoid(logit)``. With the default ``mask_scale=2`` a
zero-initialised mask branch gives a mask of exactly 1, so a fresh (or hot-swapped) layer computes the
plain convolution. ``mask_scale=1`` is the paper's plain sigmoid, whose zero-initialised mask is 0.5 —
the well-known surprise that a freshly built v2 layer outputs ``0.5·conv + b``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

from . import cpu_deform
from .base import AdaptiveConv2d, ConvWeightMixin
from .registry import register_op
from .taps import conv_output_size, pair


# --------------------------------------------------------------------------------------------------
# Functional forms
def _deform(x, offset, weight, bias, stride, padding, dilation, mask, fname):
    stride = pair(stride, "stride", fname, minimum=1)
    padding = pair(padding, "padding", fname, minimum=0)
    dilation = pair(dilation, "dilation", fname, minimum=1)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"{fname}: x must be B×C×H×W and weight O×(C/g)×kh×kw, got shapes "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    b, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if c % cg or o % (c // cg):
        raise ValueError(
            f"{fname}: weight shape {tuple(weight.shape)} does not fit an input with {c} channels "
            "(C must be a multiple of weight.shape[1] and O of the implied groups)"
        )
    ho, wo = conv_output_size((h, w), (kh, kw), stride, padding, dilation)
    taps = kh * kw
    if (
        offset.dim() != 4
        or offset.shape[0] != b
        or tuple(offset.shape[2:]) != (ho, wo)
        or offset.shape[1] % (2 * taps)
        or offset.shape[1] == 0
    ):
        raise ValueError(
            f"{fname}: offset must be B×(2·offset_groups·{taps})×{ho}×{wo} for this input and "
            f"weight, got shape {tuple(offset.shape)}"
        )
    groups = offset.shape[1] // (2 * taps)
    if c % groups:
        raise ValueError(f"{fname}: offset_groups={groups} (from the offset shape) must divide the {c} input channels")
    if mask is not None and tuple(mask.shape) != (b, groups * taps, ho, wo):
        raise ValueError(
            f"{fname}: mask must be B×(offset_groups·{taps})×{ho}×{wo} = "
            f"{(b, groups * taps, ho, wo)}, got shape {tuple(mask.shape)}"
        )
    return _sample(x, offset, weight, bias, stride, padding, dilation, mask)


def _kernel(x, offset, weight, bias, stride, padding, dilation, mask):
    """The sampling kernel: the compiled CPU one (float32/float64 CPU tensors, :mod:`.cpu_deform`),
    else torchvision's (CUDA, other dtypes, or the CPU kernels off)."""
    if cpu_deform.takes(x, offset, weight, bias, mask):
        return cpu_deform.deform_conv2d(x, offset, weight, bias, pair(stride), pair(padding), pair(dilation), mask)
    return _tv_deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


def _sample(x, offset, weight, bias, stride, padding, dilation, mask):
    """The kernel with the non-finite offsets kept out of it (see the module docstring): they are
    sampled as 0 and the output pixels that had one are set to NaN."""
    # The compiled CPU kernels count the non-finite offsets while sampling. For torchvision's kernel on
    # the CPU one reduction tells (a NaN or ±inf makes the sum non-finite; a finite sum that overflows
    # only sends a finite input the slow way); on CUDA a branch would synchronise.
    if cpu_deform.takes(x, offset, weight, bias, mask):
        found = [0]
        geometry = pair(stride), pair(padding), pair(dilation)
        y = cpu_deform.deform_conv2d(x, offset, weight, bias, *geometry, mask, found)
        if not found[0]:
            return y
    elif offset.device.type == "cpu" and math.isfinite(offset.sum().item()):
        return _kernel(x, offset, weight, bias, stride, padding, dilation, mask)
    finite = torch.isfinite(offset)
    safe = torch.where(finite, offset, torch.zeros((), dtype=offset.dtype, device=offset.device))
    y = _kernel(x, safe, weight, bias, stride, padding, dilation, mask)
    return y.masked_fill(~finite.all(dim=1, keepdim=True), float("nan"))


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
) -> torch.Tensor:
    """Deformable convolution v1 with explicit offsets.

    ``offset`` is B×(2·G·kh·kw)×H'×W', interleaved ``[dy_0, dx_0, dy_1, dx_1, …]`` per offset group
    (G is read from its shape); ``groups`` is implied by ``weight.shape[1]``.
    """
    return _deform(x, offset, weight, bias, stride, padding, dilation, None, "deform_conv2d")


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
) -> torch.Tensor:
    """Deformable convolution v2: like :func:`deform_conv2d`, each tap scaled by ``mask``
    (B×(G·kh·kw)×H'×W', already activated — no sigmoid is applied here). The bias is not masked."""
    return _deform(x, offset, weight, bias, stride, padding, dilation, mask, "modulated_deform_conv2d")


# --------------------------------------------------------------------------------------------------
class _DeformConvBase(ConvWeightMixin, AdaptiveConv2d):
    """Shared machinery: the main weight, the zero-initialised side conv, validation, from_conv."""

    guide = "optional"
    function_preserving = True
    #: Side-conv output channels per offset group per tap: 2 (dy, dx), plus 1 for the mask in v2.
    _side_per_tap: int = 2

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        *,
        offset_groups=1,
        guide_channels=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            guide_channels=guide_channels,
        )
        label = type(self).name or type(self).__name__
        if not isinstance(offset_groups, int) or isinstance(offset_groups, bool) or offset_groups < 1:
            raise ValueError(f"{label}: offset_groups must be a positive int, got {offset_groups!r}")
        if in_channels % offset_groups:
            raise ValueError(f"{label}: offset_groups={offset_groups} must divide in_channels={in_channels}")
        self.offset_groups = offset_groups
        self.init_conv_weight()
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.num_offset_channels = 2 * offset_groups * taps
        self.offset_conv = nn.Conv2d(
            self.adapt_channels,
            self._side_per_tap * offset_groups * taps,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=True,
        )
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def offsets_and_mask(self, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The offsets (B×2Gk²×H'×W', interleaved dy/dx) and the mask (v2) or ``None`` (v1)."""
        return self.offset_conv(guide), None

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(guide)
        return _sample(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options):
        # Built on the conv's device and in its dtype first, so the copied weights keep full precision.
        op = cls.build_like(conv, **options)
        op.copy_conv_weight(conv)
        op._init_identity_mask()
        return op

    def _init_identity_mask(self) -> None:
        """Make the freshly copied layer compute the conv exactly (v1: zero offsets suffice)."""

    def extra_repr(self) -> str:
        return super().extra_repr() + f", offset_groups={self.offset_groups}"


@register_op("deform")
class DeformConv2d(_DeformConvBase):
    """Deformable convolution v1: per-pixel, per-tap learned offsets with bilinear sampling."""

    paper = "Dai et al., Deformable Convolutional Networks, ICCV 2017"
    from_conv_note = "exact: weight and bias copied, offset conv zero (regular sampling grid)"


@register_op("mdeform")
class ModulatedDeformConv2d(_DeformConvBase):
    """Deformable convolution v2: offsets plus a per-pixel, per-tap mask ``mask_scale·sigmoid(·)``."""

    paper = "Zhu et al., Deformable ConvNets v2: More Deformable, Better Results, CVPR 2019"
    from_conv_note = (
        "exact: weight and bias copied, offsets zero, mask bias set so the mask is 1 "
        "(for mask_scale <= 1, where a mask of 1 is unreachable, the weight is divided by the "
        "initial mask mask_scale/2 instead)"
    )
    _side_per_tap = 3

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        *,
        offset_groups=1,
        mask_scale=2.0,
        guide_channels=None,
    ):
        label = type(self).name or type(self).__name__
        if (
            not isinstance(mask_scale, (int, float))
            or isinstance(mask_scale, bool)
            or not math.isfinite(mask_scale)
            or mask_scale <= 0
        ):
            raise ValueError(f"{label}: mask_scale must be a finite number > 0, got {mask_scale!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            offset_groups=offset_groups,
            guide_channels=guide_channels,
        )
        self.mask_scale = float(mask_scale)

    def offsets_and_mask(self, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        side = self.offset_conv(guide)
        n = self.num_offset_channels
        return side[:, :n], self.mask_scale * torch.sigmoid(side[:, n:])

    def _init_identity_mask(self) -> None:
        # mask = mask_scale·sigmoid(bias) = 1  ⇔  bias = logit(1/mask_scale), finite only for mask_scale > 1;
        # otherwise the mask stays at its zero-logit value mask_scale/2 and the weight is divided by it.
        with torch.no_grad():
            if self.mask_scale > 1.0:
                p = 1.0 / self.mask_scale
                self.offset_conv.bias[self.num_offset_channels :] = math.log(p / (1.0 - p))
            else:
                self.weight.div_(self.mask_scale * 0.5)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_scale={self.mask_scale}"
