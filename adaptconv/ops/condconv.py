"""CondConv: conditionally parameterised convolutions (Yang et al., NeurIPS 2019).

Each sample gets its own kernel, a routed mixture of E expert kernels::

    r_b = sigmoid(Linear(GAP(guide_b)))  ∈ [0, 1]^E
    W_b = Σ_i r_{b,i} W_i,     β_b = Σ_i r_{b,i} β_i,     y_b = conv2d(x_b; W_b) + β_b

The per-sample convolutions run as one grouped convolution over the whole batch (the batch folded into
the groups), see :func:`per_sample_conv2d`. This materialises B·O·(C/g)·kh·kw weights, the memory cost
users of CondConv / dynamic convolution meet at large batch.

Unlike timm's ``CondConv2d`` (routing computed outside the layer, ``'same'`` padding by default), this
operator computes its own routing and follows ``nn.Conv2d``'s default of zero padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptiveConv2d, conv_bias_init_, kaiming_uniform_
from .registry import register_op
from .taps import pair

ROUTINGS = ("sigmoid", "softmax")


def per_sample_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """Convolve each sample with its own kernel: ``x`` B×C×H×W, ``weight`` B×O×(C/g)×kh×kw, ``bias`` B×O.

    Computed as a single grouped convolution: the input viewed as 1×(B·C)×H×W, the weights as
    (B·O)×(C/g)×kh×kw, ``groups=B·g``.
    """
    b, c, h, w = x.shape
    if weight.dim() != 5 or weight.shape[0] != b or weight.shape[2] * groups != c or weight.shape[1] % groups:
        raise ValueError(
            f"per_sample_conv2d: weight must be B×O×(C/g)×kh×kw = {b}×O×{c // groups}×kh×kw "
            f"with O divisible by groups={groups}, got shape {tuple(weight.shape)}"
        )
    o = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (b, o):
        raise ValueError(f"per_sample_conv2d: bias must be B×O = {(b, o)}, got shape {tuple(bias.shape)}")
    out = F.conv2d(
        x.reshape(1, b * c, h, w),
        weight.reshape(b * o, *weight.shape[2:]),
        None if bias is None else bias.reshape(b * o),
        pair(stride, "stride", "per_sample_conv2d", 1),
        pair(padding, "padding", "per_sample_conv2d", 0),
        pair(dilation, "dilation", "per_sample_conv2d", 1),
        b * groups,
    )
    return out.view(b, o, *out.shape[2:])


def mix_kernels(coeffs: torch.Tensor, kernels: torch.Tensor, biases: torch.Tensor | None):
    """Per-sample kernels ``Σ_i coeffs[b,i]·kernels[i]`` (B×O×C/g×kh×kw) and biases (B×O, or None)."""
    weight = (coeffs @ kernels.flatten(1)).view(coeffs.shape[0], *kernels.shape[1:])
    bias = None if biases is None else coeffs @ biases
    return weight, bias


def condconv2d(
    x: torch.Tensor,
    routing: torch.Tensor,
    experts: torch.Tensor,
    expert_bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """CondConv with explicit routing weights: ``routing`` B×E, ``experts`` E×O×(C/g)×kh×kw, ``expert_bias`` E×O.

    ``y_b = conv2d(x_b; Σ_i r_{b,i} W_i) + Σ_i r_{b,i} β_i``.
    """
    if routing.dim() != 2 or routing.shape[0] != x.shape[0] or routing.shape[1] != experts.shape[0]:
        raise ValueError(
            f"condconv2d: routing must be B×E = {(x.shape[0], experts.shape[0])}, got shape {tuple(routing.shape)}"
        )
    if expert_bias is not None and tuple(expert_bias.shape) != tuple(experts.shape[:2]):
        raise ValueError(
            f"condconv2d: expert_bias must be E×O = {tuple(experts.shape[:2])}, got shape {tuple(expert_bias.shape)}"
        )
    weight, bias = mix_kernels(routing, experts, expert_bias)
    return per_sample_conv2d(x, weight, bias, stride, padding, dilation, groups)


def _positive_int(value, arg: str, label: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{label}: {arg} must be a positive int, got {value!r}")
    return value


def init_kernel_bank(op: AdaptiveConv2d, count: int) -> tuple[nn.Parameter, nn.Parameter | None]:
    """``count`` independent kernels (count×O×C/g×kh×kw) and biases (count×O), each initialised like nn.Conv2d."""
    kh, kw = op.kernel_size
    fan_in = (op.in_channels // op.groups) * kh * kw
    weight = nn.Parameter(torch.empty(count, op.out_channels, op.in_channels // op.groups, kh, kw))
    kaiming_uniform_(weight, fan_in)
    bias = None
    if op.has_bias:
        bias = nn.Parameter(torch.empty(count, op.out_channels))
        conv_bias_init_(bias, fan_in)
    return weight, bias


@register_op("condconv")
class CondConv2d(AdaptiveConv2d):
    """Per-sample mixture of ``num_experts`` expert kernels, routed by ``sigmoid(Linear(GAP(guide)))``.

    ``routing="softmax"`` replaces the sigmoid by a softmax over experts (weights sum to 1).
    """

    paper = "Yang et al., CondConv: Conditionally Parameterized Convolutions for Efficient Inference, NeurIPS 2019"
    guide = "optional"
    function_preserving = True
    from_conv_note = (
        "exact: routing Linear weight zeroed (routing = its bias's activation r0, constant), "
        "expert i = conv weight/(E·r0_i), likewise the bias"
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
        num_experts=4,
        routing="sigmoid",
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
        self.num_experts = _positive_int(num_experts, "num_experts", label)
        if routing not in ROUTINGS:
            raise ValueError(f"{label}: routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")
        self.routing = routing
        weight, bias = init_kernel_bank(self, num_experts)
        self.weight = weight
        self.register_parameter("bias", bias)
        self.route = nn.Linear(self.adapt_channels, num_experts)

    def routing_weights(self, guide: torch.Tensor) -> torch.Tensor:
        """Routing weights r (B×E) for a guide (or the input when self-guided)."""
        logits = self.route(guide.mean(dim=(2, 3)))
        return torch.sigmoid(logits) if self.routing == "sigmoid" else torch.softmax(logits, dim=1)

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return condconv2d(
            x,
            self.routing_weights(guide),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> CondConv2d:
        # Built on the conv's device and in its dtype first, so the copied weights keep full precision.
        op = cls.build_like(conv, **options)
        with torch.no_grad():
            # Zero the routing weight: routing is then r0, the (input-independent) activation of its
            # bias. The bias keeps its random initialisation so the experts start at different scales
            # and get different gradients (identical experts with identical routing never diverge).
            op.route.weight.zero_()
            r0 = op.routing_weights(conv.weight.new_zeros(1, op.adapt_channels, 1, 1))[0]  # E
            scale = 1.0 / (op.num_experts * r0)
            op.weight.copy_(scale.view(-1, 1, 1, 1, 1) * conv.weight.unsqueeze(0))
            if conv.bias is not None:
                op.bias.copy_(scale.view(-1, 1) * conv.bias.unsqueeze(0))
        return op

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_experts={self.num_experts}, routing={self.routing!r}"
