"""PAKA — pixel-adaptive kernel attention (Sagong et al., arXiv 2107.13144).

    y[b,o,p] = Σ_c Σ_j W[o,c,j] · x_j[b,c,p] · (1 + tanh(A_c[b,c,p] + A_s[b,j,p])) + bias[o]

A channel map ``A_c`` (1×1 → ReLU → 1×1 with reduction r) and a tap map ``A_s`` (3×3 → ReLU → 1×1
to k² channels) are computed from the guide (the multi-modal variant) or from x itself, at the
input's resolution, then read at each conv window's centre. Their last convs start at zero, so the
factor starts at exactly 1 and a freshly built or hot-swapped PAKA is exactly the convolution.

The factor is per (channel, tap) and pixel, so it cannot leave the channel sum: the contraction is a
custom autograd Function (:func:`adaptconv.ops.paka_contraction.paka_contract`) that builds the factor-weighted
taps chunk by chunk and recomputes them in backward, never holding the B·C·k²·H'·W' unfold.
:func:`paka_conv2d_unfold` is the straightforward reference.
"""

from __future__ import annotations

import torch
from torch import nn

from . import config
from .base import AdaptiveConv2d, ConvWeightMixin
from .paka_contraction import paka_contract
from .registry import register_op
from .taps import grouped_tap_matmul, unfold_taps, window_centres
from .tiling import geometry


def paka_conv2d(x, channel_att, tap_att, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """PAKA given its attention maps at the output grid: ``channel_att`` B×C×H'×W', ``tap_att`` B×T×H'×W'.

    Computed without the unfold unless the "unfold" implementation is selected."""
    if config.implementation == "unfold":
        return paka_conv2d_unfold(x, channel_att, tap_att, weight, bias, stride, padding, dilation, groups)
    geom = geometry(tuple(weight.shape[-2:]), stride, padding, dilation)
    return paka_contract(x, channel_att, tap_att, weight, bias, geom, groups)


def paka_conv2d_unfold(
    x, channel_att, tap_att, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1
):
    """The straightforward reference of :func:`paka_conv2d` (unfold, factor and product all B·C·k²·H'·W')."""
    taps = unfold_taps(x, tuple(weight.shape[-2:]), stride, padding, dilation)
    factor = 1 + torch.tanh(channel_att.unsqueeze(2) + tap_att.unsqueeze(1))
    out = grouped_tap_matmul(taps * factor, weight, groups)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


@register_op("paka")
class PakaConv2d(ConvWeightMixin, AdaptiveConv2d):
    """Pixel-adaptive kernel attention. Options: ``reduction`` (channel-branch reduction r),
    ``hidden_channels`` (width of both attention branches; default max(8, C_guide // r))."""

    paper = "Sagong et al., arXiv 2107.13144 (pixel-adaptive kernel attention)"
    guide = "optional"
    function_preserving = True
    from_conv_note = "exact: the attention branches' last convs start at zero, so the factor is 1"

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
        reduction: int = 4,
        hidden_channels: int | None = None,
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
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"paka: reduction must be a positive int, got {reduction!r}")
        if hidden_channels is None:
            hidden_channels = max(8, self.adapt_channels // reduction)
        if not isinstance(hidden_channels, int) or hidden_channels < 1:
            raise ValueError(f"paka: hidden_channels must be a positive int, got {hidden_channels!r}")
        self.reduction, self.hidden_channels = reduction, hidden_channels
        cg, taps = self.adapt_channels, self.kernel_size[0] * self.kernel_size[1]
        self.channel_branch = nn.Sequential(
            nn.Conv2d(cg, hidden_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_channels, in_channels, 1)
        )
        self.tap_branch = nn.Sequential(
            nn.Conv2d(cg, hidden_channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden_channels, taps, 1)
        )
        for last in (self.channel_branch[-1], self.tap_branch[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.init_conv_weight()

    def attention(self, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_c B×C×H'×W', A_s B×T×H'×W') at the output grid."""
        geom = (self.kernel_size, self.stride, self.padding, self.dilation)
        return (window_centres(self.channel_branch(guide), *geom), window_centres(self.tap_branch(guide), *geom))

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        a_c, a_s = self.attention(guide)
        return paka_conv2d(x, a_c, a_s, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> PakaConv2d:
        op = cls.build_like(conv, **options)
        op.copy_conv_weight(conv)
        return op

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reduction={self.reduction}, hidden_channels={self.hidden_channels}"
