"""Dynamic convolution: attention over K kernels (Chen et al., CVPR 2020).

Each sample's kernel is a softmax-weighted mixture of K kernels::

    π_b = softmax(MLP(GAP(guide_b)) / τ),   MLP = Linear → ReLU → Linear
    W̃_b = Σ_k π_{b,k} W_k,   b̃_b = Σ_k π_{b,k} b_k,   y_b = W̃_b ∗ x_b + b̃_b

The temperature τ is annealed from about 30 (near-uniform attention, so every kernel is trained) to 1
over the first part of training (``anneal``, a fraction of the budget; the paper's is its first 10 of 100
epochs): the training loop calls :meth:`DynamicConv2d.on_train_step` before each step
(:func:`adaptconv.ops.base.notify_train_step`), or a loop of your own calls :func:`anneal_temperature`. The per-sample convolutions share CondConv's batched
grouped-convolution path (:func:`adaptconv.ops.condconv.per_sample_conv2d`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import AdaptiveConv2d
from .condconv import _positive_int, init_kernel_bank, mix_kernels, per_sample_conv2d
from .registry import register_op


def _check_temperature(value, arg: str, label: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{label}: {arg} must be a finite number > 0, got {value!r}")
    return float(value)


@register_op("dynconv")
class DynamicConv2d(AdaptiveConv2d):
    """Per-sample kernel ``Σ_k π_k W_k`` with ``π = softmax(MLP(GAP(guide)) / temperature)``."""

    paper = "Chen et al., Dynamic Convolution: Attention over Convolution Kernels, CVPR 2020"
    guide = "optional"
    function_preserving = True
    from_conv_note = "exact: all K kernels (and biases) set to the conv's; the attention sums to 1"

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
        num_kernels=4,
        reduction=4,
        temperature=30.0,
        anneal=0.1,
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
        self.num_kernels = _positive_int(num_kernels, "num_kernels", label)
        self.reduction = _positive_int(reduction, "reduction", label)
        self.anneal = check_anneal(anneal, label)
        self.start_temperature = _check_temperature(temperature, "temperature", label)
        # A buffer, so a checkpoint resumes with the annealed τ (and forward never syncs to read it).
        self.register_buffer("tau", torch.tensor(self.start_temperature))
        weight, bias_ = init_kernel_bank(self, num_kernels)
        self.weight = weight
        self.register_parameter("bias", bias_)
        hidden = max(4, self.adapt_channels // reduction)
        self.attention_mlp = nn.Sequential(
            nn.Linear(self.adapt_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_kernels)
        )

    @property
    def temperature(self) -> float:
        """The softmax temperature τ."""
        return float(self.tau)

    def set_temperature(self, temperature: float) -> None:
        """Set the softmax temperature τ (> 0)."""
        self.tau.fill_(_check_temperature(temperature, "temperature", type(self).name or type(self).__name__))

    def on_train_step(self, step: int, total: int) -> None:
        """τ falls linearly from the constructor's ``temperature`` to 1 over the first ``anneal`` of the
        ``total`` steps, then stays at 1 (``anneal=None``: τ is left alone)."""
        if self.anneal is not None:
            self.set_temperature(annealed(self.start_temperature, step, total, self.anneal))

    def attention(self, guide: torch.Tensor) -> torch.Tensor:
        """Kernel attention π (B×K, rows sum to 1) for a guide (or the input when self-guided)."""
        return torch.softmax(self.attention_mlp(guide.mean(dim=(2, 3))) / self.tau, dim=1)

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        weight, bias = mix_kernels(self.attention(guide), self.weight, self.bias)
        return per_sample_conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> DynamicConv2d:
        # Built on the conv's device and in its dtype first, so the copied weights keep full precision.
        op = cls.build_like(conv, **options)
        with torch.no_grad():
            op.weight.copy_(conv.weight.unsqueeze(0).expand_as(op.weight))
            if conv.bias is not None:
                op.bias.copy_(conv.bias.unsqueeze(0).expand_as(op.bias))
        return op

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", num_kernels={self.num_kernels}, reduction={self.reduction}, "
            f"temperature={self.temperature:g}"
        )


def check_anneal(value, label: str) -> float | None:
    """``anneal``: a fraction of the training budget in [0, 1], or None for no schedule."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{label}: anneal must be a fraction of the training budget in [0, 1] or None, got {value!r}")
    return float(value)


def annealed(start: float, step: int, total: int, anneal: float, end: float = 1.0) -> float:
    """τ at step ``step`` (0-based) of ``total``: linear from ``start`` to ``end`` over the first
    ``max(1, int(anneal · total))`` steps (``anneal=0``: ``end`` from the second step on)."""
    steps = max(1, int(anneal * total))
    return start + (end - start) * min(max(step / steps, 0.0), 1.0)


def anneal_temperature(model: nn.Module, progress: float, start: float = 30.0, end: float = 1.0) -> float:
    """Set τ on every :class:`DynamicConv2d` in ``model``, linearly from ``start`` (progress 0) to ``end``
    (progress ≥ 1; progress is clamped to [0, 1]); return τ.

    Call it from the training loop, e.g. each epoch with ``progress = epoch / anneal_epochs``.
    """
    start = _check_temperature(start, "start", "anneal_temperature")
    end = _check_temperature(end, "end", "anneal_temperature")
    if not isinstance(progress, (int, float)) or isinstance(progress, bool) or math.isnan(progress):
        raise ValueError(f"anneal_temperature: progress must be a number, got {progress!r}")
    t = min(max(float(progress), 0.0), 1.0)
    tau = start + (end - start) * t
    for module in model.modules():
        if isinstance(module, DynamicConv2d):
            module.set_temperature(tau)
    return tau
