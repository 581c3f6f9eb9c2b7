"""PAC — pixel-adaptive convolution (Su et al., CVPR 2019), its transposed form and PAC pooling.

    y[b,o,p] = Σ_c Σ_j W[o,c,j] · K_j(b,p) · x_j[b,c,p] + bias[o]
    K_j(p)   = exp(-½ Σ_g γ_g (f_g(p+j) − f_g(p))²)          (gaussian)
             = (α + Σ_g γ_g (f_g(p+j) − f_g(p))²)^(−λ)        (inverse distance, learnable α, λ)

``f`` is the guide (or the layer input when self-guided); ``γ`` is a per-guide-channel scale of the
feature distance, 1 by default (the paper's kernel). It is learnable (``learn_guide_scale``) so that
``from_conv`` can start at γ = 0, where K ≡ 1 and the layer is exactly the pretrained convolution,
and learn how much to adapt.

A learnable γ is stored as a raw value θ, γ = :data:`GUIDE_SCALE_GAIN` · |θ| (``guide_scale_raw``);
``op.guide_scale`` (read-only; :meth:`_PacOptions.set_guide_scale` writes it) computes γ. Why:

* the gain: Adam moves a parameter by about the learning rate per step whatever its gradient, so a γ
  stored as is stays ≤ ~0.06 after 60 steps at lr 1e-3 from 0: K differs from 1 by < 1e-3 and a
  swapped-in PAC trains as the plain convolution. Through the gain γ moves up to GAIN× faster (O(1)
  in ~50 steps at lr 1e-3). With plain SGD the gain multiplies γ's step by GAIN².
* |θ|, with slope +1 at θ = 0: at γ = 0 (from_conv) the gradient's sign is noise, and Adam's first
  step is a full lr whatever the gradient's size. A γ clipped at 0 (negative values cut to 0, with
  no gradient there) is lost for good once a step takes it below 0, and the layer stays the conv;
  |θ| reflects it back, so γ stays free to grow.

A state dict that holds the older ``guide_scale`` (γ itself, negative values meaning 0) still loads.

Implementation: by default the layers never materialise the ``B·C·k²·H'·W'`` unfold. The kernel's
feature distances come from :func:`adaptconv.ops.pac_contraction.pac_distance` and the contraction from
:func:`adaptconv.ops.pac_contraction.pac_contract` (Triton kernels on CUDA, compiled kernels on the
CPU, else PyTorch): custom autograd Functions that recompute the shifted taps in backward, so memory
is O(input + output + K) with K one B×k²×H'×W' map; ``shared_filters`` and :class:`PacPool2d` do not
mix channels and run DFN's per-pixel filtering (:func:`adaptconv.ops.dfn_contraction.dynamic_filter`).
The straightforward unfold formulation (:func:`pac_conv2d_unfold`, :func:`guide_taps`,
:func:`pac_kernel`) is kept as the reference; ``with adaptconv.ops.config.override(implementation="unfold")``
runs the layers with it. Both share :func:`kernel_from_distance`, which flushes weights below
√(smallest normal) to 0 (they would make the CPU's arithmetic subnormal, and slow, for no visible
change of the result).

Window centre ``f(p)``: the guide sampled at the centre of the conv window (the average of the
middle taps for even kernels). Outside the image the guide is replicated, so normalisation and
kernels never see an artificial zero feature; the input is zero-padded as in nn.Conv2d.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import config
from .base import AdaptiveConv2d, ConvWeightMixin, check_input_dtype, conv_bias_init_, kaiming_uniform_
from .dfn_contraction import dynamic_filter
from .pac_contraction import pac_contract, pac_distance
from .registry import register_op
from .taps import Pair, grouped_tap_matmul, pair, unfold_taps, valid_taps, window_centres
from .tiling import geometry

KernelType = Literal["gaussian", "inv"]
KERNEL_TYPES = ("gaussian", "inv")

# γ = GUIDE_SCALE_GAIN · |guide_scale_raw| for a learnable γ: Adam's ~lr-sized steps on the raw value
# then move γ by up to ~32·lr, to O(1) within ~50 steps at lr 1e-3 (see the module docstring). A power
# of two, so that γ ↔ raw is exact in every float dtype (γ = 1 stays exactly 1).
GUIDE_SCALE_GAIN = 32.0


def guide_taps(
    guide: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair | tuple[int, int, int, int], dilation: Pair
) -> torch.Tensor:
    """The guide's window taps, replicating the border instead of zero padding: B×Cg×T×H'×W'.

    ``padding`` is (ph, pw) for symmetric padding or (top, bottom, left, right).
    """
    if len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    top, bottom, left, right = padding
    if any(padding):
        guide = F.pad(guide, (left, right, top, bottom), mode="replicate")
    return unfold_taps(guide, kernel_size, stride, (0, 0), dilation)


def pac_kernel(
    taps: torch.Tensor,
    centre: torch.Tensor,
    kernel_type: KernelType = "gaussian",
    guide_scale: torch.Tensor | None = None,
    inv_alpha: torch.Tensor | float = 1.0,
    inv_lambda: torch.Tensor | float = 0.5,
    valid: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """The adapting kernel K: B×1×T×H'×W' from guide taps (B×Cg×T×H'×W') and centres (B×Cg×H'×W').

    ``valid`` (1×1×T×H'×W') marks taps inside the image; with ``normalize`` K is divided by its sum
    over those taps (and is zero on the others).
    """
    diff2 = (taps - centre.unsqueeze(2)).pow(2)
    if guide_scale is not None:
        diff2 = diff2 * _nonneg(guide_scale).view(1, -1, 1, 1, 1)
    dist2 = diff2.sum(1, keepdim=True)
    return kernel_from_distance(dist2, kernel_type, inv_alpha, inv_lambda, valid, normalize, dim=2)


def _nonneg(guide_scale: torch.Tensor) -> torch.Tensor:
    # Negative scales are cut to 0; where() (unlike clamp) keeps the gradient at exactly 0, the
    # value from_conv starts from.
    return torch.where(guide_scale >= 0, guide_scale, torch.zeros_like(guide_scale))


def kernel_from_distance(
    dist2: torch.Tensor,
    kernel_type: KernelType = "gaussian",
    inv_alpha: torch.Tensor | float = 1.0,
    inv_lambda: torch.Tensor | float = 0.5,
    valid: torch.Tensor | None = None,
    normalize: bool = False,
    dim: int = 1,
) -> torch.Tensor:
    """K from the scaled squared feature distances ``dist2`` (taps along ``dim``)."""
    if kernel_type == "gaussian":
        arg = -0.5 * dist2
        if arg.dtype != torch.float16:
            # Below this floor exp() would be flushed to 0 by _flush_tiny anyway; clamping first keeps
            # exp() off subnormal results, which run ~50× slower on CPUs (3.4 ms instead of 0.07 ms
            # for a B=8, 56×56 kernel). The clamped entries' gradient is 0, as the flush makes it.
            arg = arg.clamp(min=math.log(_flush_below(arg.dtype)) - 1.0)
        kernel = torch.exp(arg)
    elif kernel_type == "inv":
        alpha = inv_alpha.clamp(min=1e-4) if isinstance(inv_alpha, torch.Tensor) else inv_alpha
        lam = inv_lambda.clamp(min=0) if isinstance(inv_lambda, torch.Tensor) else inv_lambda
        kernel = (alpha + dist2).pow(-lam)
    else:
        raise ValueError(f"kernel_type must be one of {KERNEL_TYPES}, got {kernel_type!r}")
    if normalize:
        if valid is not None:
            kernel = kernel * valid
        kernel = kernel / kernel.sum(dim, keepdim=True).clamp(min=1e-12)
    return _flush_tiny(kernel)


def _flush_tiny(kernel: torch.Tensor) -> torch.Tensor:
    """Zero the weights below √(smallest normal number) (1e-19 in float32).

    Far-apart features give tiny gaussian weights (exp(-½d²) underflows for d² > ~175 in float32:
    common with self-guided, many-channel guides). Multiplied by inputs and filter weights they make
    *subnormal* numbers, on which CPU arithmetic is tens of times slower, in every product that follows
    (forward and backward). Their contribution is far below the dtype's resolution next to the centre
    tap's (K = 1), so they are flushed, after normalisation. float16's range is too short for this, and
    it is left as is.
    """
    if kernel.dtype == torch.float16:
        return kernel
    return kernel.masked_fill(kernel < _flush_below(kernel.dtype), 0.0)


def _flush_below(dtype: torch.dtype) -> float:
    """The weight below which :func:`_flush_tiny` zeroes a kernel entry: √(smallest normal)."""
    return math.sqrt(torch.finfo(dtype).tiny)


def pac_conv2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    groups: int = 1,
    shared_filters: bool = False,
) -> torch.Tensor:
    """PAC given its adapting kernel (B×1×T×H'×W'): Σ_c Σ_j W[o,c,j]·K_j·x_j + bias.

    ``weight`` is O×(C/g)×kh×kw, or with ``shared_filters`` 1×1×kh×kw: one filter applied to every
    channel, no channel mixing (O = C). Computed without the unfold (see :mod:`adaptconv.ops.pac_contraction`)
    unless the "unfold" implementation is selected; :func:`pac_conv2d_unfold` is the reference.
    """
    if config.implementation == "unfold":
        return pac_conv2d_unfold(x, kernel, weight, bias, stride, padding, dilation, groups, shared_filters)
    geom = geometry(tuple(weight.shape[-2:]), stride, padding, dilation)
    if kernel.dim() == 5:
        kernel = kernel.squeeze(1)
    if shared_filters:
        # one filter for every channel: a per-pixel filter K_j·w_j, no channel mixing
        out = dynamic_filter(x, (kernel * weight.reshape(1, -1, 1, 1)).unsqueeze(1), geom)
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    return pac_contract(x, kernel, weight, bias, geom, groups)


def pac_conv2d_unfold(
    x: torch.Tensor,
    kernel: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    groups: int = 1,
    shared_filters: bool = False,
) -> torch.Tensor:
    """The straightforward reference of :func:`pac_conv2d`: unfold the input (B×C×T×H'×W'), weight
    it by K, contract. Memory: the unfold and the product, both kept by autograd."""
    kernel_size = tuple(weight.shape[-2:])
    taps = unfold_taps(x, kernel_size, stride, padding, dilation) * kernel
    if shared_filters:
        out = (taps * weight.reshape(1, 1, -1, 1, 1)).sum(2)
    else:
        out = grouped_tap_matmul(taps, weight, groups)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class _PacOptions:
    """The options shared by the PAC layers: kernel type, normalisation and the guide metric."""

    def _init_pac_options(
        self,
        guide_channels: int,
        kernel_type: str,
        normalize_kernel: bool,
        guide_scale: float,
        learn_guide_scale: bool,
        label: str,
    ) -> None:
        if kernel_type not in KERNEL_TYPES:
            raise ValueError(f"{label}: kernel_type must be one of {KERNEL_TYPES}, got {kernel_type!r}")
        if not isinstance(normalize_kernel, bool):
            raise ValueError(f"{label}: normalize_kernel must be a bool, got {normalize_kernel!r}")
        if not isinstance(guide_scale, (int, float)) or isinstance(guide_scale, bool) or guide_scale < 0:
            raise ValueError(f"{label}: guide_scale must be a number >= 0, got {guide_scale!r}")
        self.kernel_type = kernel_type
        self.normalize_kernel = normalize_kernel
        # A fixed γ is stored as is (gain 1); a learnable one divided by the gain (module docstring).
        self.guide_scale_gain = GUIDE_SCALE_GAIN if learn_guide_scale else 1.0
        raw = torch.full((guide_channels,), float(guide_scale) / self.guide_scale_gain)
        if learn_guide_scale:
            self.guide_scale_raw = nn.Parameter(raw)
        else:
            self.register_buffer("guide_scale_raw", raw)
        if kernel_type == "inv":
            self.inv_alpha = nn.Parameter(torch.tensor(1.0))
            self.inv_lambda = nn.Parameter(torch.tensor(0.5))
        else:
            self.inv_alpha = self.inv_lambda = None

    @property
    def guide_scale(self) -> torch.Tensor:
        """γ (per guide channel), differentiable. Computed: write it with :meth:`set_guide_scale`
        (an in-place change of this tensor would not reach the layer)."""
        raw = self.guide_scale_raw
        # |θ| whose slope at 0 is +1 (torch.abs has 0 there, which would freeze from_conv's γ = 0)
        return torch.where(raw >= 0, raw, -raw) * self.guide_scale_gain

    def set_guide_scale(self, value) -> None:
        """Set γ (a number or one value per guide channel, >= 0)."""
        value = torch.as_tensor(value, dtype=self.guide_scale_raw.dtype)
        if (value < 0).any() or not torch.isfinite(value).all():
            raise ValueError(f"{type(self).__name__}.set_guide_scale: γ must be finite and >= 0, got {value.tolist()}")
        with torch.no_grad():
            self.guide_scale_raw.copy_(value / self.guide_scale_gain)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # State dicts from before the gain hold γ itself as "guide_scale" (a negative γ then acted as
        # 0): convert it to the raw value.
        old, new = prefix + "guide_scale", prefix + "guide_scale_raw"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old).clamp(min=0) / self.guide_scale_gain
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _kernel(self, taps, centre, valid):
        """K from unfolded guide taps (the reference path): B×1×T×H'×W'."""
        return pac_kernel(
            taps,
            centre,
            self.kernel_type,
            self.guide_scale,
            1.0 if self.inv_alpha is None else self.inv_alpha,
            0.5 if self.inv_lambda is None else self.inv_lambda,
            valid=valid,
            normalize=self.normalize_kernel,
        )

    def _tiled_kernel(self, guide, geom, valid, centre=None):
        """K without unfolding the guide: B×T×H'×W' (``valid``: 1×T×H'×W' or None)."""
        dist2 = pac_distance(guide, geom, _nonneg(self.guide_scale), centre)
        return kernel_from_distance(
            dist2,
            self.kernel_type,
            1.0 if self.inv_alpha is None else self.inv_alpha,
            0.5 if self.inv_lambda is None else self.inv_lambda,
            valid=valid,
            normalize=self.normalize_kernel,
            dim=1,
        )

    def _pac_repr(self) -> str:
        return f"kernel_type={self.kernel_type!r}, normalize_kernel={self.normalize_kernel}"


@register_op("pac")
class PacConv2d(ConvWeightMixin, _PacOptions, AdaptiveConv2d):
    """Pixel-adaptive convolution. Options: ``kernel_type`` ("gaussian" | "inv"),
    ``normalize_kernel``, ``shared_filters`` (one k×k filter for all channels; needs in = out,
    groups = 1), ``guide_scale`` (initial γ), ``learn_guide_scale``."""

    paper = "Su et al., CVPR 2019 (pixel-adaptive convolution)"
    guide = "optional"
    function_preserving = True
    from_conv_note = "exact: guide scale γ starts at 0, so K ≡ 1 (learn_guide_scale lets it grow)"

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
        kernel_type: KernelType = "gaussian",
        normalize_kernel: bool = False,
        shared_filters: bool = False,
        guide_scale: float = 1.0,
        learn_guide_scale: bool = True,
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
        self._init_pac_options(
            self.adapt_channels, kernel_type, normalize_kernel, guide_scale, learn_guide_scale, "pac"
        )
        self.shared_filters = bool(shared_filters)
        if shared_filters:
            if in_channels != out_channels or groups != 1:
                raise ValueError(
                    f"pac: shared_filters=True applies one filter to every channel, so it needs "
                    f"in_channels == out_channels and groups=1 (got {in_channels}→{out_channels}, groups={groups})"
                )
            kh, kw = self.kernel_size
            self.weight = nn.Parameter(torch.empty(1, 1, kh, kw))
            kaiming_uniform_(self.weight, kh * kw)
            if bias:
                self.bias = nn.Parameter(torch.empty(out_channels))
                conv_bias_init_(self.bias, kh * kw)
            else:
                self.register_parameter("bias", None)
        else:
            self.init_conv_weight()

    def adapting_kernel(self, guide: torch.Tensor) -> torch.Tensor:
        """K for a guide at the input's resolution: B×1×T×H'×W'."""
        args = (self.kernel_size, self.stride, self.padding, self.dilation)
        valid = (
            valid_taps(guide.shape[-2:], *args, device=guide.device, dtype=guide.dtype)
            if self.normalize_kernel
            else None
        )
        if config.implementation == "unfold":
            return self._kernel(guide_taps(guide, *args), window_centres(guide, *args), valid)
        return self._tiled_kernel(guide, geometry(*args), None if valid is None else valid[:, 0]).unsqueeze(1)

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        kernel = self.adapting_kernel(guide)
        return pac_conv2d(
            x,
            kernel,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.shared_filters,
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> PacConv2d:
        if options.get("shared_filters"):
            raise ValueError("pac.from_conv: shared_filters=True cannot hold a general conv weight")
        if options.get("normalize_kernel"):
            raise ValueError(
                "pac.from_conv: normalize_kernel=True divides by the tap count and cannot "
                "reproduce the conv; build it directly instead"
            )
        op = cls.build_like(conv, **options)
        op.set_guide_scale(0.0)
        op.copy_conv_weight(conv)
        return op

    def extra_repr(self) -> str:
        s = super().extra_repr() + ", " + self._pac_repr()
        return s + (", shared_filters=True" if self.shared_filters else "")


class PacConvTranspose2d(_PacOptions, nn.Module):
    """Transposed PAC for guided upsampling: zero-insert ``x`` by the stride, then a stride-1 PAC
    whose adapting kernel comes from the guide **at the output resolution**.

    Arguments follow ``nn.ConvTranspose2d`` (weight is C_in×(C_out/g)×kh×kw); ``guide_channels`` is
    required. With K ≡ 1 it is exactly ``F.conv_transpose2d``. Normalisation (``normalize_kernel``)
    divides by K's sum over taps inside the output image.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        dilation=1,
        groups=1,
        bias=True,
        *,
        guide_channels: int,
        kernel_type: KernelType = "gaussian",
        normalize_kernel: bool = False,
        guide_scale: float = 1.0,
        learn_guide_scale: bool = True,
    ):
        super().__init__()
        label = "PacConvTranspose2d"
        self.kernel_size = pair(kernel_size, "kernel_size", label, 1)
        self.stride = pair(stride, "stride", label, 1)
        self.padding = pair(padding, "padding", label, 0)
        self.output_padding = pair(output_padding, "output_padding", label, 0)
        self.dilation = pair(dilation, "dilation", label, 1)
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(
                f"{label}: output_padding={self.output_padding} must be smaller than stride "
                f"{self.stride} or dilation {self.dilation}"
            )
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{label}: in_channels={in_channels} and out_channels={out_channels} must be "
                f"divisible by groups={groups}"
            )
        if not isinstance(guide_channels, int) or guide_channels < 1:
            raise ValueError(f"{label}: guide_channels (channels of the output-resolution guide) is required")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.guide_channels = guide_channels
        self.has_bias = bool(bias)
        self._init_pac_options(guide_channels, kernel_type, normalize_kernel, guide_scale, learn_guide_scale, label)
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels // groups, kh, kw))
        fan_in = (out_channels // groups) * kh * kw  # nn.ConvTranspose2d's convention
        kaiming_uniform_(self.weight, fan_in)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
            conv_bias_init_(self.bias, fan_in)
        else:
            self.register_parameter("bias", None)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (n - 1) * s - 2 * p + d * (k - 1) + op + 1
            for n, s, p, d, k, op in zip(
                (height, width), self.stride, self.padding, self.dilation, self.kernel_size, self.output_padding
            )
        )

    def conv_equivalent_weight(self) -> torch.Tensor:
        """The stride-1 conv weight O×(C/g)×kh×kw equivalent to this transposed weight."""
        c, og, kh, kw = self.weight.shape
        g = self.groups
        w = self.weight.view(g, c // g, og, kh, kw).transpose(1, 2).reshape(g * og, c // g, kh, kw)
        return w.flip(-1, -2)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PacConvTranspose2d: input must be B×{self.in_channels}×H×W, got {tuple(x.shape)}")
        check_input_dtype("PacConvTranspose2d", self, x)
        size = self.output_size(*x.shape[-2:])
        if (
            guide is None
            or guide.dim() != 4
            or guide.shape[0] != x.shape[0]
            or guide.shape[1] != self.guide_channels
            or tuple(guide.shape[-2:]) != size
        ):
            got = None if guide is None else tuple(guide.shape)
            raise ValueError(
                f"PacConvTranspose2d: guide must be B×{self.guide_channels}×{size[0]}×{size[1]} "
                f"(the output resolution) for input {tuple(x.shape)}, got {got}"
            )
        b, c, h, w = x.shape
        (sh, sw), (kh, kw), (dh, dw) = self.stride, self.kernel_size, self.dilation
        xz = x.new_zeros(b, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
        xz[:, :, ::sh, ::sw] = x
        # Pad (or crop, when padding exceeds the dilated kernel) to the stride-1 conv's frame.
        edge = [d * (k - 1) - p for d, k, p in zip(self.dilation, self.kernel_size, self.padding)]
        oph, opw = self.output_padding
        frame = (edge[0], edge[0] + oph, edge[1], edge[1] + opw)  # top, bottom, left, right
        # The window of output p spans output positions p - top … p - top + d(k-1): it is centred on p.
        tot = (dh * (kh - 1), dw * (kw - 1))
        pads = (tot[0] // 2, tot[0] - tot[0] // 2, tot[1] // 2, tot[1] - tot[1] // 2)
        valid = None
        if self.normalize_kernel:
            ones = guide.new_ones(1, 1, *size)
            valid = unfold_taps(
                F.pad(ones, (pads[2], pads[3], pads[0], pads[1])), self.kernel_size, (1, 1), (0, 0), self.dilation
            )
        weight = self.conv_equivalent_weight()
        if config.implementation == "unfold":
            xz = F.pad(xz, (frame[2], frame[3], frame[0], frame[1]))
            taps = guide_taps(guide, self.kernel_size, (1, 1), pads, self.dilation)
            kernel = self._kernel(taps, guide, valid)
            return pac_conv2d_unfold(xz, kernel, weight, self.bias, (1, 1), (0, 0), self.dilation, self.groups)
        if min(frame) < 0:  # crop first; the rest of the frame is the contraction's zero padding
            xz = F.pad(xz, tuple(min(p, 0) for p in (frame[2], frame[3], frame[0], frame[1])))
            frame = tuple(max(p, 0) for p in frame)
        kernel = self._tiled_kernel(
            guide,
            geometry(self.kernel_size, (1, 1), pads, self.dilation),
            None if valid is None else valid[:, 0],
            centre=guide,
        )
        geom = geometry(self.kernel_size, (1, 1), frame, self.dilation)
        return pac_contract(xz, kernel, weight, self.bias, geom, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, output_padding={self.output_padding}, dilation={self.dilation}, "
            f"groups={self.groups}, guide_channels={self.guide_channels}, " + self._pac_repr()
        )


class PacPool2d(_PacOptions, nn.Module):
    """PAC pooling: ``y[b,c,p] = Σ_j K_j(p) · x_j[b,c,p]`` — no weights; a weighted sum, or a
    weighted average with ``normalize_kernel=True``. Self-guided unless ``guide_channels`` is given.
    With a constant guide and normalisation it is ``avg_pool2d(count_include_pad=False)``.
    """

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        *,
        channels: int | None = None,
        guide_channels: int | None = None,
        kernel_type: KernelType = "gaussian",
        normalize_kernel: bool = True,
        guide_scale: float = 1.0,
    ):
        super().__init__()
        label = "PacPool2d"
        self.kernel_size = pair(kernel_size, "kernel_size", label, 1)
        self.stride = pair(stride if stride is not None else kernel_size, "stride", label, 1)
        self.padding = pair(padding, "padding", label, 0)
        self.dilation = pair(dilation, "dilation", label, 1)
        if guide_channels is None and channels is None:
            raise ValueError(f"{label}: give channels= (self-guided: the guide is the input) or guide_channels=")
        self.guide_channels = guide_channels
        self.channels = channels
        self._init_pac_options(guide_channels or channels, kernel_type, normalize_kernel, guide_scale, False, label)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        if guide is None:
            if self.guide_channels is not None:
                raise ValueError(f"PacPool2d: built with guide_channels={self.guide_channels}; pass a guide")
            guide = x
        expected = self.guide_channels or self.channels
        if (
            guide.dim() != 4
            or guide.shape[1] != expected
            or guide.shape[0] != x.shape[0]
            or guide.shape[-2:] != x.shape[-2:]
        ):
            raise ValueError(
                f"PacPool2d: guide must be B×{expected}×H×W matching input {tuple(x.shape)}, got {tuple(guide.shape)}"
            )
        args = (self.kernel_size, self.stride, self.padding, self.dilation)
        valid = valid_taps(x.shape[-2:], *args, device=x.device, dtype=x.dtype) if self.normalize_kernel else None
        if config.implementation == "unfold":
            kernel = self._kernel(guide_taps(guide, *args), window_centres(guide, *args), valid)
            return (unfold_taps(x, *args) * kernel).sum(2)
        geom = geometry(*args)
        kernel = self._tiled_kernel(guide, geom, None if valid is None else valid[:, 0])
        return dynamic_filter(x, kernel.unsqueeze(1), geom)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, " + self._pac_repr()
        )
