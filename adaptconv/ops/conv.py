"""The baseline: a plain, content-agnostic convolution behind the common interface."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptiveConv2d, ConvWeightMixin
from .registry import register_op


@register_op("conv")
class Conv2d(ConvWeightMixin, AdaptiveConv2d):
    """``nn.Conv2d`` itself (zero padding), the reference every adaptive operator is compared with."""

    paper = "standard convolution (baseline)"
    guide = "none"
    function_preserving = True
    from_conv_note = "exact copy"

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
        self.init_conv_weight()

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> Conv2d:
        op = cls.build_like(conv, **options)
        op.copy_conv_weight(conv)
        return op
