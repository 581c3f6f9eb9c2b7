"""DDF: decoupled dynamic filters (Zhou et al., CVPR 2021, "Decoupled Dynamic Filter Networks").

The depthwise filter of channel c at output pixel p is the product of a per-sample *channel* filter
and a per-pixel *spatial* filter, each normalised over its k² taps (FilterNorm)::

    C[b,c,:] = FN_c(MLP(GAP(g_b))[c])   ⊙ σ_c          (B×C×k²; MLP = 1×1 → ReLU → 1×1, σ learnt)
    S[b,h,:,p] = FN(Conv1×1(g)[b,h,:,p]) · gain/k        (B×heads×k²×H'×W', read at window centres)
    z[b,c,p] = Σ_j C[b,c,j] · S[b,head(c),j,p] · x_j[b,c,p]
    y = Conv1×1(z) + bias        (the 1×1 projection exists only when out_channels ≠ in_channels)

``FN`` standardises over the taps (zero mean, unit *unbiased* std, + 1e-10, as the reference
FilterNorm); ``gain`` is ReLU's gain √2 and k = √(kh·kw). With a single tap (1×1 kernels) the
standardisation would zero every filter, so it is skipped there. The statistics are computed in at
least float32 so fp16/bf16 filters stay normalised.

Differences from the reference implementation (CUDA-only, fp32-only, odd square kernels, 'same'
padding): the filtering below is plain PyTorch, so it runs on the CPU and in fp16/bf16; any kernel
size, padding and dilation works because the spatial branch reads the guide at the window centres
(for the paper's geometry that is the reference's strided 1×1 conv); the 1×1 projection (our
addition, as for involution) makes it a drop-in for ``nn.Conv2d(in, out, ...)``; ``groups`` applies to
that projection (without it the operator is depthwise, which satisfies any grouping).

The filtering is an autograd Function looping over the k² taps, recomputing them in backward: it
never materialises the B·C·k²·H'·W' unfold nor the full per-pixel, per-channel filter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import config, cpu_dynfilter
from .base import AdaptiveConv2d, ChannelMixMixin
from .registry import register_op
from .taps import Pair, conv_output_size, unfold_taps, window_centres
from .tiling import geometry

RELU_GAIN = math.sqrt(2.0)


def filter_norm(f: torch.Tensor, dim: int) -> torch.Tensor:
    """The reference FilterNorm's standardisation over the taps (``dim``): zero mean, unit unbiased
    std (+1e-10). Identity for a single tap. Computed in at least float32."""
    if f.shape[dim] == 1:
        return f
    work = f.float() if f.dtype in (torch.float16, torch.bfloat16) else f
    work = work - work.mean(dim, keepdim=True)
    # the unbiased std of the centred taps, as sqrt(Σ²/(n−1)): torch.std's Welford pass over a short
    # middle dimension cost a fifth of a small layer's inference
    std = work.square().sum(dim, keepdim=True).div_(f.shape[dim] - 1).sqrt_()
    return (work / (std + 1e-10)).to(f.dtype)


def _tap(t: torch.Tensor, j: int, kernel_size: Pair, stride: Pair, dilation: Pair, ho: int, wo: int) -> torch.Tensor:
    """Tap ``j`` of a padded B×C×H×W tensor: the B×C×H'×W' strided view it contributes."""
    a, e = divmod(j, kernel_size[1])
    r, q = a * dilation[0], e * dilation[1]
    return t[:, :, r : r + (ho - 1) * stride[0] + 1 : stride[0], q : q + (wo - 1) * stride[1] + 1 : stride[1]]


def _ddf_forward(x, ch, sp, kernel_size, stride, padding, dilation):
    b, c, h, w = x.shape
    heads = sp.shape[1]
    ho, wo = conv_output_size((h, w), kernel_size, stride, padding, dilation)
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    ch5 = ch.view(b, heads, c // heads, -1, 1, 1)
    y = x.new_zeros(b, heads, c // heads, ho, wo)
    for j in range(ch.shape[-1]):
        xj = _tap(xp, j, kernel_size, stride, dilation, ho, wo).reshape(b, heads, c // heads, ho, wo)
        y.addcmul_(xj * ch5[:, :, :, j], sp[:, :, None, j])
    return y.view(b, c, ho, wo)


def _ddf_backward(x, ch, sp, gy, kernel_size, stride, padding, dilation, need_x, need_ch, need_sp):
    b, c, h, w = x.shape
    heads = sp.shape[1]
    ho, wo = gy.shape[-2:]
    ph, pw = padding
    xp = F.pad(x, (pw, pw, ph, ph))
    ch5 = ch.view(b, heads, c // heads, -1, 1, 1)
    gy5 = gy.reshape(b, heads, c // heads, ho, wo)
    gxp = torch.zeros_like(xp) if need_x else None
    gch = torch.empty_like(ch) if need_ch else None
    gsp = torch.empty_like(sp) if need_sp else None
    for j in range(ch.shape[-1]):
        spj = sp[:, :, None, j]
        if need_ch or need_sp:
            q = gy5 * _tap(xp, j, kernel_size, stride, dilation, ho, wo).reshape(b, heads, c // heads, ho, wo)
            if need_ch:
                gch[:, :, j] = (q * spj).sum((-2, -1)).view(b, c)
            if need_sp:
                gsp[:, :, j] = (q * ch5[:, :, :, j]).sum(2)
        if need_x:
            gxj = _tap(gxp, j, kernel_size, stride, dilation, ho, wo).view(b, heads, c // heads, ho, wo)
            gxj.addcmul_(gy5 * ch5[:, :, :, j], spj)
    gx = gxp[:, :, ph : ph + h, pw : pw + w] if need_x else None
    return gx, gch, gsp


class _DecoupledFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ch, sp, kernel_size, stride, padding, dilation):
        ctx.geom = (kernel_size, stride, padding, dilation)
        # on CPU tensors the compiled dynamic-filter kernels, with the channel filter as their scale
        ctx.compiled = cpu_dynfilter.usable(x, ch, sp)
        if ctx.compiled:
            y, saved = cpu_dynfilter.dynamic_forward(x, sp, geometry(*ctx.geom), scale=ch)
        else:
            y, saved = _ddf_forward(x, ch, sp, kernel_size, stride, padding, dilation), x
        ctx.save_for_backward(saved, ch, sp)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        saved, ch, sp = ctx.saved_tensors
        nx, nch, nsp = ctx.needs_input_grad[:3]
        if ctx.compiled:
            gx, gsp, gch = cpu_dynfilter.dynamic_backward(
                saved, sp, gy, geometry(*ctx.geom), nx, nsp, scale=ch, need_s=nch
            )
        else:
            gx, gch, gsp = _ddf_backward(saved, ch, sp, gy.contiguous(), *ctx.geom, nx, nch, nsp)
        return gx, gch, gsp, None, None, None, None


def _check(x, ch, sp, kernel_size, stride, padding, dilation) -> None:
    b, c, h, w = x.shape
    t = kernel_size[0] * kernel_size[1]
    ho, wo = conv_output_size((h, w), kernel_size, stride, padding, dilation)
    if tuple(ch.shape) != (b, c, t):
        raise ValueError(f"ddf2d: channel filter must be B×C×k² = {(b, c, t)}, got shape {tuple(ch.shape)}")
    if sp.dim() != 5 or sp.shape[0] != b or c % sp.shape[1] or tuple(sp.shape[2:]) != (t, ho, wo):
        raise ValueError(
            f"ddf2d: spatial filter must be B×heads×k²×H'×W' = {b}×heads×{t}×{ho}×{wo} with heads "
            f"dividing C={c}, got shape {tuple(sp.shape)}"
        )


def ddf2d(
    x: torch.Tensor,
    channel_filter: torch.Tensor,
    spatial_filter: torch.Tensor,
    kernel_size: Pair,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
) -> torch.Tensor:
    """Decoupled dynamic filtering: ``z[b,c,p] = Σ_j C[b,c,j]·S[b,head(c),j,p]·x_j[b,c,p]``.

    ``channel_filter`` B×C×k², ``spatial_filter`` B×heads×k²×H'×W' (channel c uses head
    ``c // (C/heads)``). Tap-wise, without the unfold, unless the "unfold" implementation of
    :mod:`adaptconv.ops.config` is selected."""
    _check(x, channel_filter, spatial_filter, kernel_size, stride, padding, dilation)
    if config.implementation == "unfold":
        return ddf2d_unfold(x, channel_filter, spatial_filter, kernel_size, stride, padding, dilation)
    return _DecoupledFilter.apply(
        x,
        channel_filter.contiguous(),
        spatial_filter.contiguous(),
        tuple(kernel_size),
        tuple(stride),
        tuple(padding),
        tuple(dilation),
    )


def ddf2d_unfold(x, channel_filter, spatial_filter, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """The straightforward reference of :func:`ddf2d` (unfold, then a weighted tap sum)."""
    b, c = x.shape[:2]
    heads, t = spatial_filter.shape[1:3]
    taps = unfold_taps(x, kernel_size, stride, padding, dilation)
    taps = taps.view(b, heads, c // heads, t, *taps.shape[-2:])
    filt = channel_filter.view(b, heads, c // heads, t, 1, 1) * spatial_filter.unsqueeze(2)
    return (taps * filt).sum(3).view(b, c, *taps.shape[-2:])


@register_op("ddf")
class DdfConv2d(ChannelMixMixin, AdaptiveConv2d):
    """Decoupled dynamic filter: channel filter (from GAP) × spatial filter (per pixel), depthwise.

    Options: ``heads`` (spatial filters, each shared by C/heads channels; paper: 1), ``se_ratio``
    (channel-branch bottleneck ratio, paper: 0.2; the bottleneck has ``max(4, int(C·se_ratio))``
    channels, the floor only matters below 20 channels), ``projection`` (None: a 1×1 projection only
    when out_channels ≠ in_channels).
    """

    paper = "Zhou et al., Decoupled Dynamic Filter Networks, CVPR 2021"
    guide = "optional"
    function_preserving = False
    from_conv_note = (
        "constant filters (generators' output weights zeroed) fitted per input channel "
        "(1×1 projection ⊗ depthwise filter, rank-1 SVD); exact for depthwise, 1×1 and "
        "depthwise-separable weights"
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
        heads: int = 1,
        se_ratio: float = 0.2,
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
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or in_channels % heads:
            raise ValueError(f"ddf: heads must be a positive int dividing in_channels={in_channels}, got {heads!r}")
        if isinstance(se_ratio, bool) or not isinstance(se_ratio, (int, float)) or not 0 < se_ratio <= 64:
            raise ValueError(f"ddf: se_ratio must be a number in (0, 64], got {se_ratio!r}")
        if projection is None:
            projection = out_channels != in_channels
        if not projection and out_channels != in_channels:
            raise ValueError(
                f"ddf: projection=False needs out_channels == in_channels (got {in_channels}→{out_channels})"
            )
        self.heads, self.se_ratio = heads, float(se_ratio)
        taps = self.kernel_size[0] * self.kernel_size[1]
        # The reference's fixed spatial FilterNorm scale: ReLU gain / kernel size.
        self.spatial_gain = RELU_GAIN / math.sqrt(taps)
        self.spatial = nn.Conv2d(self.adapt_channels, heads * taps, 1)
        mid = max(4, int(self.adapt_channels * self.se_ratio))
        self.channel_mlp = nn.Sequential(
            nn.Linear(self.adapt_channels, mid), nn.ReLU(inplace=True), nn.Linear(mid, in_channels * taps)
        )
        # The channel FilterNorm's learnt per-(channel, tap) scale, initialised as the reference's.
        self.channel_std = nn.Parameter(torch.randn(in_channels, taps) * self.spatial_gain)
        self.init_channel_mix(in_channels, out_channels, groups, bias, projection)

    def channel_filters(self, guide: torch.Tensor) -> torch.Tensor:
        """The per-sample channel filters: B×C×k²."""
        raw = self.channel_mlp(guide.mean(dim=(2, 3))).view(guide.shape[0], self.in_channels, -1)
        return filter_norm(raw, 2) * self.channel_std

    def spatial_filters(self, guide: torch.Tensor) -> torch.Tensor:
        """The per-pixel spatial filters at the output grid: B×heads×k²×H'×W'."""
        centres = window_centres(guide, self.kernel_size, self.stride, self.padding, self.dilation)
        raw = self.spatial(centres)
        raw = raw.view(raw.shape[0], self.heads, -1, *raw.shape[-2:])
        return filter_norm(raw, 2) * self.spatial_gain

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        z = ddf2d(
            x,
            self.channel_filters(guide),
            self.spatial_filters(guide),
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )
        return self.mix_channels(z)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> DdfConv2d:
        depthwise = conv.groups == conv.in_channels == conv.out_channels
        if options.get("projection") is None:
            options["projection"] = not depthwise
        if not options["projection"] and not depthwise:
            raise ValueError(
                "ddf.from_conv needs the 1×1 projection to hold the conv's channel mixing "
                "(only a depthwise conv can do without it)"
            )
        op = cls.build_like(conv, **options)
        o, cpg, kh, kw = conv.weight.shape
        c, t, g = op.in_channels, kh * kw, conv.groups
        with torch.no_grad():
            w = conv.weight.detach().double()
            if op.projection is None:
                target = w.reshape(c, t)
            else:
                # Per input channel, the (O/g)×k² block of weights it feeds ≈ P[:,c] ⊗ D[c,:] (rank 1).
                blocks = w.reshape(g, o // g, cpg, t).transpose(1, 2)  # g × C/g × O/g × k²
                u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
                target = (vh[..., 0, :] * s[..., :1]).reshape(c, t)
                op.projection.weight.copy_(u[..., :, 0].transpose(1, 2).reshape(o, cpg, 1, 1))
                if conv.bias is not None:
                    op.projection.bias.copy_(conv.bias)
            if op.projection is None and conv.bias is not None:
                op.bias.copy_(conv.bias)
            # Constant filters: zero the generators' output weights, biases an alternating ±1 pattern
            # (non-zero after normalisation on every tap); the learnt channel scale σ then absorbs
            # target / (C_hat · S_hat) exactly.
            pattern = torch.tensor([1.0 if j % 2 == 0 else -1.0 for j in range(t)], dtype=torch.float64)
            op.spatial.weight.zero_()
            op.spatial.bias.copy_(pattern.repeat(op.heads))
            op.channel_mlp[-1].weight.zero_()
            op.channel_mlp[-1].bias.copy_(pattern.repeat(c))
            normed = filter_norm(pattern.view(1, t), 1)[0]
            op.channel_std.copy_(target / (normed * normed * op.spatial_gain))
        return op

    def extra_repr(self) -> str:
        return super().extra_repr() + f", heads={self.heads}, se_ratio={self.se_ratio}"
