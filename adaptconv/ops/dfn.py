"""DFN — the local filtering layer of Dynamic Filter Networks (Jia et al., NIPS 2016).

A filter-generating network maps the guide (or x) to one k×k filter per output pixel (and per
channel group), softmax-normalised over the taps by default:

    z[b,c,p] = Σ_j F_j(b, g(c), p) · x_j[b,c,p]          (no channel mixing)
    y = Conv1×1(z) + bias                                 (projection, only when O ≠ C by default)

The filters are generated at the input resolution and read at each window's centre, so stride,
padding and dilation behave as in nn.Conv2d. ``groups`` applies to the 1×1 projection.

The filtering is a custom autograd Function (:func:`adaptconv.ops.dfn_contraction.dynamic_filter`) accumulating
over the k² taps and recomputing them in backward; :func:`dynamic_filter2d_unfold` is the
straightforward reference.
"""

from __future__ import annotations

import torch
from torch import nn

from . import config
from .base import AdaptiveConv2d, ChannelMixMixin, rank1_kernel_fit
from .dfn_contraction import dynamic_filter
from .registry import register_op
from .taps import unfold_taps, window_centres
from .tiling import geometry

NORMALIZATIONS = ("softmax", "none")


def dynamic_filter2d(x, filters, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Per-pixel filtering: ``filters`` is B×G×T×H'×W' (G channel groups, C % G == 0): B×C×H'×W'.

    Computed without the unfold unless the "unfold" implementation is selected."""
    if config.implementation == "unfold":
        return dynamic_filter2d_unfold(x, filters, kernel_size, stride, padding, dilation)
    return dynamic_filter(x, filters, geometry(tuple(kernel_size), stride, padding, dilation))


def dynamic_filter2d_unfold(x, filters, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """The straightforward reference of :func:`dynamic_filter2d` (unfold, then a weighted tap sum)."""
    b, c = x.shape[:2]
    g = filters.shape[1]
    taps = unfold_taps(x, kernel_size, stride, padding, dilation)
    taps = taps.view(b, g, c // g, *taps.shape[2:]) * filters.unsqueeze(2)
    return taps.sum(3).view(b, c, *taps.shape[-2:])


@register_op("dfn")
class DfnConv2d(ChannelMixMixin, AdaptiveConv2d):
    """Dynamic filter network local filtering layer. Options: ``filter_groups`` (channel groups with
    their own filter), ``normalize`` ("softmax" over taps | "none"), ``hidden_channels`` (generator
    width), ``projection`` (None: a 1×1 projection only when out_channels ≠ in_channels)."""

    paper = "Jia et al., NIPS 2016 (dynamic filter networks)"
    guide = "optional"
    function_preserving = False
    from_conv_note = (
        "best rank-1 fit (1×1 projection ⊗ one spatial filter); exact for 1×1 convs and, "
        "with normalize='none', for weights of rank 1"
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
        filter_groups: int = 1,
        normalize: str = "softmax",
        hidden_channels: int = 32,
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
        if not isinstance(filter_groups, int) or filter_groups < 1 or in_channels % filter_groups:
            raise ValueError(
                f"dfn: filter_groups must be a positive int dividing in_channels={in_channels}, got {filter_groups!r}"
            )
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"dfn: normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if not isinstance(hidden_channels, int) or hidden_channels < 1:
            raise ValueError(f"dfn: hidden_channels must be a positive int, got {hidden_channels!r}")
        if projection is None:
            projection = out_channels != in_channels
        if not projection and out_channels != in_channels:
            raise ValueError(
                f"dfn: projection=False needs out_channels == in_channels (got {in_channels}→{out_channels})"
            )
        self.filter_groups, self.normalize, self.hidden_channels = filter_groups, normalize, hidden_channels
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.generator = nn.Sequential(
            nn.Conv2d(self.adapt_channels, hidden_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, filter_groups * taps, 1),
        )
        self.init_channel_mix(in_channels, out_channels, groups, bias, projection)

    def filters(self, guide: torch.Tensor) -> torch.Tensor:
        """The per-pixel filters at the output grid: B×G×T×H'×W'."""
        logits = window_centres(self.generator(guide), self.kernel_size, self.stride, self.padding, self.dilation)
        logits = logits.view(logits.shape[0], self.filter_groups, -1, *logits.shape[-2:])
        return logits.softmax(2) if self.normalize == "softmax" else logits

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        z = dynamic_filter2d(x, self.filters(guide), self.kernel_size, self.stride, self.padding, self.dilation)
        return self.mix_channels(z)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> DfnConv2d:
        if options.get("projection") is False:
            raise ValueError("dfn.from_conv needs the 1×1 projection to hold the conv's channel mixing")
        options["projection"] = True
        op = cls.build_like(conv, **options)
        with torch.no_grad():
            filt, proj = rank1_kernel_fit(conv.weight)
            last = op.generator[-1]
            last.weight.zero_()
            if op.normalize == "softmax":
                # softmax can only give positive filters summing to 1: the scale moves into the projection.
                filt = filt.clamp(min=1e-6)
                total = filt.sum()
                filt, proj = filt / total, proj * total
                last.bias.copy_(filt.log().repeat(op.filter_groups))
            else:
                last.bias.copy_(filt.repeat(op.filter_groups))
            op.projection.weight.copy_(proj)
            if conv.bias is not None:
                op.projection.bias.copy_(conv.bias)
        return op

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", filter_groups={self.filter_groups}, normalize={self.normalize!r}, "
            f"hidden_channels={self.hidden_channels}"
        )
