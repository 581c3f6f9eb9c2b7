"""An example adaptconv plugin: a convolution gated per pixel by its guide.

Only the public API is used: subclass ``AdaptiveConv2d``, declare the metadata, implement
``adaptive_forward`` and ``from_conv``. The entry point in ``pyproject.toml`` registers it; there is
no need to call ``register_op``.
"""

import torch
from torch import nn

from adaptconv import AdaptiveConv2d, window_centres

__all__ = ["GatedConv2d"]


class GatedConv2d(AdaptiveConv2d):
    paper = "example plugin (pixel-gated convolution)"
    guide = "optional"
    supports = frozenset({"stride", "padding", "dilation", "groups", "bias"})
    function_preserving = True
    from_conv_note = "exact: the gate starts at zero"

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
        self.conv = nn.Conv2d(
            in_channels, out_channels, self.kernel_size, self.stride, self.padding, self.dilation, groups, bias
        )
        self.gate = nn.Conv2d(self.adapt_channels, out_channels, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        gate = window_centres(self.gate(guide), self.kernel_size, self.stride, self.padding, self.dilation)
        return self.conv(x) * (1 + torch.tanh(gate))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> "GatedConv2d":
        op = cls.build_like(conv, **options)
        op.conv.load_state_dict(conv.state_dict())
        return op
