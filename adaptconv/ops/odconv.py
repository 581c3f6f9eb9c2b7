"""ODConv: omni-dimensional dynamic convolution (Li et al., ICLR 2022).

K candidate kernels, modulated per sample along all four dimensions of the kernel space by attentions
computed from the global average of the guide (or of x)::

    h = ReLU(LN(FC(GAP(g))))
    α_c = σ(FC_c(h)/τ) ∈ R^C,  α_f = σ(FC_f(h)/τ) ∈ R^O,  α_s = σ(FC_s(h)/τ) ∈ R^{k×k},
    α_w = softmax(FC_w(h)/τ) ∈ R^K
    y = (α_f ⊙ Σ_i α_w,i · α_s ⊙ W_i) ∗ (α_c ⊙ x) + bias

As in the reference implementation, α_s, α_c and α_f are shared by the K kernels, α_c scales the input
and α_f the output (equivalent to scaling the kernel, cheaper), a head is skipped (attention 1) where
it is redundant: α_f for depthwise convs (in = out = groups), α_s for 1×1 kernels, α_w for K = 1.
The per-sample kernels run as one grouped convolution
(:func:`adaptconv.ops.condconv.per_sample_conv2d`).

Differences from the reference: BatchNorm after the FC is replaced by LayerNorm (``norm="layer"``,
or none with ``norm="none"``). The reference's BatchNorm normalises a B×A×1×1 map over the batch,
which raises at batch size 1 in training (one value per channel) and makes a sample's output depend on
the rest of its batch; LayerNorm normalises each sample's A features on their own. ``bias`` (absent
in the reference) is one static bias added after the output attention, so K=1 with every attention 1
is exactly ``nn.Conv2d``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import AdaptiveConv2d, conv_bias_init_
from .condconv import _positive_int, init_kernel_bank, mix_kernels, per_sample_conv2d
from .dynconv import annealed, check_anneal
from .registry import register_op

NORMS = ("layer", "none")


def odconv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    channel_att: torch.Tensor | None = None,
    filter_att: torch.Tensor | None = None,
    spatial_att: torch.Tensor | None = None,
    kernel_att: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """ODConv with explicit attentions (None = all ones): ``weight`` K×O×(C/g)×kh×kw, ``channel_att``
    B×C, ``filter_att`` B×O, ``spatial_att`` B×kh×kw (or B×kh·kw), ``kernel_att`` B×K, ``bias`` O."""
    b = x.shape[0]
    k, o = weight.shape[:2]
    if kernel_att is None:
        if k != 1:
            raise ValueError(f"odconv2d: kernel_att is needed with {k} kernels")
        w = weight.expand(b, *weight.shape[1:])
    else:
        if tuple(kernel_att.shape) != (b, k):
            raise ValueError(f"odconv2d: kernel_att must be B×K = {(b, k)}, got shape {tuple(kernel_att.shape)}")
        w, _ = mix_kernels(kernel_att, weight, None)
    if spatial_att is not None:
        w = w * spatial_att.reshape(b, 1, 1, *weight.shape[-2:])
    if channel_att is not None:
        x = x * channel_att.reshape(b, x.shape[1], 1, 1)
    y = per_sample_conv2d(x, w, None, stride, padding, dilation, groups)
    if filter_att is not None:
        y = y * filter_att.reshape(b, o, 1, 1)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _init_head(fc: nn.Linear) -> None:
    # The reference's initialisation of its 1×1 convs (kaiming normal, fan_out, ReLU; zero bias).
    nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
    if fc.bias is not None:
        nn.init.zeros_(fc.bias)


@register_op("odconv")
class ODConv2d(AdaptiveConv2d):
    """Omni-dimensional dynamic convolution: K kernels × kernel, spatial, input- and output-channel
    attentions. Options: ``num_kernels`` (K, paper: 4; 1 gives "ODConv 1×"), ``reduction`` and
    ``min_channels`` (attention width ``max(int(C·reduction), min_channels)``, paper: 1/16 and 16),
    ``norm`` ("layer" | "none", see the module docstring), ``temperature`` (τ, paper: 1), ``anneal``
    (None: τ stays; a fraction of the budget: τ falls linearly from ``temperature`` to 1 over it, as
    dynamic convolution's schedule, see :meth:`on_train_step`)."""

    paper = "Li et al., Omni-Dimensional Dynamic Convolution, ICLR 2022"
    guide = "optional"
    function_preserving = True
    from_conv_note = (
        "exact: attention head weights zeroed (attentions = their bias's constant activations), "
        "kernels = conv weight / (α_f·α_c·α_s) plus fresh kernels minus their α_w-mean "
        "(which cancel), so the kernels differ and the attentions can learn"
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
        num_kernels: int = 4,
        reduction: float = 0.0625,
        min_channels: int = 16,
        norm: str = "layer",
        temperature: float = 1.0,
        anneal: float | None = None,
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
        self.num_kernels = _positive_int(num_kernels, "num_kernels", label)
        self.min_channels = _positive_int(min_channels, "min_channels", label)
        if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or not 0 < reduction <= 64:
            raise ValueError(f"{label}: reduction must be a number in (0, 64], got {reduction!r}")
        if norm not in NORMS:
            raise ValueError(f"{label}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.reduction, self.norm = float(reduction), norm
        self.start_temperature = _check_temperature(temperature, label)
        self.register_buffer("tau", torch.tensor(self.start_temperature))
        self.anneal = check_anneal(anneal, label)
        self.weight, _ = init_kernel_bank(self, self.num_kernels)
        kh, kw = self.kernel_size
        if self.has_bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
            conv_bias_init_(self.bias, (in_channels // groups) * kh * kw)
        else:
            self.register_parameter("bias", None)
        hidden = max(int(self.adapt_channels * self.reduction), self.min_channels)
        self.fc = nn.Linear(self.adapt_channels, hidden, bias=norm == "none")
        self.fc_norm = nn.LayerNorm(hidden) if norm == "layer" else nn.Identity()
        depthwise = in_channels == groups == out_channels
        self.channel_fc = nn.Linear(hidden, in_channels)
        self.filter_fc = None if depthwise else nn.Linear(hidden, out_channels)
        self.spatial_fc = None if kh * kw == 1 else nn.Linear(hidden, kh * kw)
        self.kernel_fc = None if self.num_kernels == 1 else nn.Linear(hidden, self.num_kernels)
        for fc in (self.fc, self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if fc is not None:
                _init_head(fc)

    @property
    def temperature(self) -> float:
        """The attention temperature τ."""
        return float(self.tau)

    def set_temperature(self, temperature: float) -> None:
        """Set the attention temperature τ (> 0)."""
        self.tau.fill_(_check_temperature(temperature, type(self).name or type(self).__name__))

    def on_train_step(self, step: int, total: int) -> None:
        if self.anneal is not None:
            self.set_temperature(annealed(self.start_temperature, step, total, self.anneal))

    def attentions(self, guide: torch.Tensor):
        """(α_c B×C, α_f B×O or None, α_s B×k² or None, α_w B×K or None) for a guide (or x)."""
        h = torch.relu(self.fc_norm(self.fc(guide.mean(dim=(2, 3)))))

        def gate(fc):
            return None if fc is None else torch.sigmoid(fc(h) / self.tau)

        kernel = None if self.kernel_fc is None else torch.softmax(self.kernel_fc(h) / self.tau, dim=1)
        return gate(self.channel_fc), gate(self.filter_fc), gate(self.spatial_fc), kernel

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        ca, fa, sa, ka = self.attentions(guide)
        return odconv2d(
            x, self.weight, ca, fa, sa, ka, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> ODConv2d:
        # Built on the conv's device and in its dtype first, so the copied weights keep full precision.
        op = cls.build_like(conv, **options)
        o, cpg, kh, kw = conv.weight.shape
        g = conv.groups
        with torch.no_grad():
            for fc in (op.channel_fc, op.filter_fc, op.spatial_fc, op.kernel_fc):
                if fc is not None:
                    fc.weight.zero_()  # the attentions become the constants σ(bias/τ), softmax(bias/τ)
            ca, fa, sa, ka = op.attentions(conv.weight.new_zeros(1, op.adapt_channels, 1, 1))
            # scale[o, c', j] = α_f[o]·α_c[input channel of (o, c')]·α_s[j]: divide it out of the kernel
            scale = ca[0].view(g, 1, cpg).expand(g, o // g, cpg).reshape(o, cpg, 1, 1)
            if fa is not None:
                scale = scale * fa[0].view(o, 1, 1, 1)
            if sa is not None:
                scale = scale * sa[0].view(1, 1, kh, kw)
            base = conv.weight / scale
            if ka is None:
                op.weight.copy_(base.unsqueeze(0))
            else:
                # Identical kernels with equal attention get equal gradients and never diverge (nor
                # can the kernel attention learn): add the fresh kernels minus their α_w-weighted
                # mean, which sums to zero under α_w.
                fresh = op.weight.clone()
                mean = (ka[0].view(-1, 1, 1, 1, 1) * fresh).sum(0)
                op.weight.copy_(base.unsqueeze(0) + fresh - mean.unsqueeze(0))
            if conv.bias is not None:
                op.bias.copy_(conv.bias)
        return op

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", num_kernels={self.num_kernels}, reduction={self.reduction}, norm={self.norm!r}"
        )


def _check_temperature(value, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{label}: temperature must be a finite number > 0, got {value!r}")
    return float(value)
