"""Involution (Li et al., CVPR 2021, "Involution: Inverting the Inherence of Convolution").

Each output pixel gets a k×k kernel generated from the pixel itself, shared by the C/G channels of
each of G groups and applied depthwise (no channel mixing)::

    H[b,:,p] = Conv1×1(ReLU(BN(Conv1×1(g[b,:,p]))))      ∈ R^{G·k²}   (g: pooled input or guide)
    z[b,c,p] = Σ_j H[b, group(c), j, p] · x_j[b,c,p]
    y = Conv1×1(z) + bias           (the 1×1 projection exists only when out_channels ≠ in_channels)

The projection is our addition: the operator is a drop-in for ``nn.Conv2d(in, out, ...)`` and
involution itself keeps the channel count. ``groups`` applies to that projection; without it the
operator is depthwise, which already satisfies any channel grouping.

Stride as in the paper: the kernel-generation input is average-pooled s×s (the paper's
``AvgPool2d(s, s)``) before the generator. We pool the map of window centres (``window_centres`` at
stride 1), so any padding and dilation works; for the paper's geometry (odd k, padding (k-1)·d/2)
this is exactly ``AvgPool2d(s, s)`` of the input, with ``ceil_mode`` so odd sizes give nn.Conv2d's
output size. The generator then runs on the output grid only.

The per-pixel filtering is :func:`adaptconv.ops.dfn.dynamic_filter2d` (the tap-wise autograd Function
of :mod:`adaptconv.ops.dfn_contraction`, which never materialises the B·C·k²·H'·W' unfold).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptiveConv2d, ChannelMixMixin, rank1_kernel_fit
from .dfn import dynamic_filter2d
from .registry import register_op
from .taps import window_centres


def _positive_int(value, arg: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"involution: {arg} must be a positive int, got {value!r}")
    return value


def involution_groups(channels: int, group_channels: int) -> int:
    """Number of kernel groups G: ``channels // group_channels`` (the paper's rule) when that divides
    ``channels``, else the largest divisor of ``channels`` below it (at least 1), so any width works."""
    target = max(1, channels // group_channels)
    return max(g for g in range(1, target + 1) if channels % g == 0)


def involution_input(guide: torch.Tensor, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """The kernel-generation input on the output grid: the window centres, average-pooled s×s."""
    centres = window_centres(guide, kernel_size, (1, 1), padding, dilation)
    if stride == (1, 1):
        return centres
    return F.avg_pool2d(centres, stride, stride, ceil_mode=True)


@register_op("involution")
class Involution2d(ChannelMixMixin, AdaptiveConv2d):
    """Involution: per-pixel kernels generated from the pixel, shared within channel groups.

    Options: ``group_channels`` (channels per kernel group, paper: 16), ``reduction`` (generator
    bottleneck ratio, paper: 4; the bottleneck has ``max(4, C // reduction)`` channels, the floor only
    matters below 16 channels), ``norm`` ("batch" as in the paper | "none"; BatchNorm over a 1×1 output
    map cannot train at batch size 1), ``projection`` (None: a 1×1 projection only when
    out_channels ≠ in_channels).
    """

    paper = "Li et al., Involution: Inverting the Inherence of Convolution for Visual Recognition, CVPR 2021"
    guide = "optional"
    function_preserving = False
    from_conv_note = (
        "best rank-1 fit (1×1 projection ⊗ one constant kernel from the generator's bias); "
        "exact for 1×1 convs and weights of rank 1"
    )

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
        guide_channels=None,
        group_channels: int = 16,
        reduction: int = 4,
        norm: str = "batch",
        projection: bool | None = None,
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
        self.group_channels = _positive_int(group_channels, "group_channels")
        self.reduction = _positive_int(reduction, "reduction")
        if norm not in ("batch", "none"):
            raise ValueError(f"involution: norm must be 'batch' or 'none', got {norm!r}")
        if projection is None:
            projection = out_channels != in_channels
        if not projection and out_channels != in_channels:
            raise ValueError(
                f"involution: projection=False needs out_channels == in_channels (got {in_channels}→{out_channels})"
            )
        self.norm = norm
        self.filter_groups = involution_groups(in_channels, self.group_channels)
        taps = self.kernel_size[0] * self.kernel_size[1]
        hidden = max(4, self.adapt_channels // self.reduction)
        self.reduce = nn.Conv2d(self.adapt_channels, hidden, 1, bias=norm == "none")
        self.reduce_norm = nn.BatchNorm2d(hidden) if norm == "batch" else nn.Identity()
        self.span = nn.Conv2d(hidden, self.filter_groups * taps, 1)
        self.init_channel_mix(in_channels, out_channels, groups, bias, projection)

    def kernels(self, guide: torch.Tensor) -> torch.Tensor:
        """The per-pixel kernels on the output grid: B×G×k²×H'×W'."""
        g = involution_input(guide, self.kernel_size, self.stride, self.padding, self.dilation)
        h = self.span(F.relu(self.reduce_norm(self.reduce(g))))
        return h.view(h.shape[0], self.filter_groups, -1, *h.shape[-2:])

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        z = dynamic_filter2d(x, self.kernels(guide), self.kernel_size, self.stride, self.padding, self.dilation)
        return self.mix_channels(z)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> Involution2d:
        if options.get("projection") is False:
            raise ValueError("involution.from_conv needs the 1×1 projection to hold the conv's channel mixing")
        options["projection"] = True
        op = cls.build_like(conv, **options)
        with torch.no_grad():
            # W[o,c,:] ≈ P[o,c]·f, the best rank-1 fit. The kernel is made constant (generator output
            # weight zeroed, bias = f for every group), so the operator starts as
            # depthwise-conv-with-f followed by the projection P.
            filt, proj = rank1_kernel_fit(conv.weight)
            op.span.weight.zero_()
            op.span.bias.copy_(filt.repeat(op.filter_groups))
            op.projection.weight.copy_(proj)
            if conv.bias is not None:
                op.projection.bias.copy_(conv.bias)
        return op

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", filter_groups={self.filter_groups}, reduction={self.reduction}, "
            f"norm={self.norm!r}"
        )
