"""CARAFE — content-aware reassembly of features (Wang et al., ICCV 2019): an upsampler.

Upsampling by an integer factor σ with one softmax-normalised k_up×k_up kernel per *output* pixel:

    W = softmax_taps(pixel_shuffle(Encoder(Compressor(x)), σ))          B×k_up²×σH×σW
    y[b,c,p'] = Σ_{n,m} W[b,(n,m),p'] · x[b, c, ⌊p'/σ⌋ + (n − r, m − r)]   r = ⌊k_up/2⌋

The compressor is a 1×1 conv to ``compressed_channels``, the content encoder a k_enc×k_enc conv to
σ²·k_up² channels (the paper's defaults: 64, k_enc = 3, k_up = 5). Taps outside the image read 0.

Implementation: the neighbourhood of source pixel ⌊p'/σ⌋ is exactly the σ-dilated neighbourhood of
p' in the nearest-upsampled input, so the reassembly is :func:`adaptconv.ops.dfn_contraction.dynamic_filter`
(a per-pixel filter, no unfold kept for backward) on ``nearest(x)`` with dilation σ and padding σ·r.
A one-hot centre kernel therefore gives nearest upsampling exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptiveModule
from .dfn_contraction import dynamic_filter
from .registry import register_op
from .tiling import geometry


def nearest_upsample(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """Nearest upsampling by an integer factor by repetition (no floating-point source index)."""
    if scale_factor == 1:
        return x
    b, c, h, w = x.shape
    s = scale_factor
    return x[:, :, :, None, :, None].expand(b, c, h, s, w, s).reshape(b, c, h * s, w * s)


def bilinear_logits(scale_factor: int, k_up: int, floor: float = 1e-3) -> torch.Tensor:
    """k_up²×σ² encoder logits (tap, sub-position) whose softmax is bilinear upsampling
    (``align_corners=False``) by σ, up to the ``floor`` given to the taps bilinear does not use
    (in the image; at its border CARAFE reads zeros where bilinear repeats the edge pixel)."""
    s, r = scale_factor, k_up // 2
    if k_up < 3:
        raise ValueError(f"carafe: a bilinear start needs k_up >= 3, got {k_up}")
    sub = torch.arange(s, dtype=torch.float64)
    src = (sub + 0.5) / s - 0.5  # source position relative to the cell's own pixel, in (−0.5, 0.5)
    i0 = torch.floor(src)
    frac = src - i0
    w1 = torch.zeros(k_up, s, dtype=torch.float64)  # (tap, sub) along one axis
    w1[(i0 + r).long(), torch.arange(s)] += 1 - frac
    w1[(i0 + 1 + r).long(), torch.arange(s)] += frac
    # (tap_y, tap_x, sub_y, sub_x) → (tap, sub): channel tap·σ² + sub as pixel_shuffle reads it
    w2 = w1[:, None, :, None] * w1[None, :, None, :]
    return w2.reshape(k_up * k_up, s * s).clamp(min=floor).log()


def carafe(x: torch.Tensor, kernels: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """Reassemble ``x`` (B×C×H×W) with per-output-pixel kernels (B×k²×σH×σW, taps row-major,
    normally summing to 1): B×C×σH×σW. The kernels are used as given (no softmax here)."""
    s = scale_factor
    b, c, h, w = x.shape
    taps = kernels.shape[1]
    k = int(round(taps**0.5))
    if k * k != taps or k % 2 == 0:
        raise ValueError(f"carafe: kernels must have k² channels for an odd k, got {taps}")
    if kernels.shape[0] not in (1, b) or tuple(kernels.shape[2:]) != (h * s, w * s):
        raise ValueError(
            f"carafe: kernels of shape {tuple(kernels.shape)} do not fit input {tuple(x.shape)} "
            f"upsampled ×{s} (expected B×{taps}×{h * s}×{w * s})"
        )
    r = k // 2
    geom = geometry((k, k), (1, 1), (s * r, s * r), (s, s))
    return dynamic_filter(nearest_upsample(x, s), kernels.unsqueeze(1), geom)


@register_op("carafe")
class Carafe(AdaptiveModule):
    """CARAFE upsampler: ``Carafe(channels, scale_factor=2, k_up=5, k_enc=3, compressed_channels=64)``;
    ``op(x)`` maps B×C×H×W to B×C×σH×σW."""

    kind = "upsampler"
    paper = "Wang et al., ICCV 2019 (CARAFE: content-aware reassembly of features)"
    guide = "none"
    from_conv_note = "not a convolution: an upsampler, used in place of bilinear/nearest upsampling"

    def __init__(
        self,
        channels: int,
        scale_factor: int = 2,
        *,
        k_up: int = 5,
        k_enc: int = 3,
        compressed_channels: int = 64,
        init: str = "uniform",
        init_floor: float = 1e-3,
    ) -> None:
        super().__init__(channels, scale_factor=scale_factor)
        if init not in ("uniform", "bilinear"):
            raise ValueError(f"carafe: init must be 'uniform' or 'bilinear', got {init!r}")
        if not 0 < init_floor < 1:
            raise ValueError(f"carafe: init_floor must be in (0, 1), got {init_floor!r}")
        for arg, value in (("k_up", k_up), ("k_enc", k_enc)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value % 2 == 0:
                raise ValueError(f"carafe: {arg} must be an odd positive int, got {value!r}")
        if not isinstance(compressed_channels, int) or isinstance(compressed_channels, bool) or compressed_channels < 1:
            raise ValueError(f"carafe: compressed_channels must be a positive int, got {compressed_channels!r}")
        self.k_up, self.k_enc = k_up, k_enc
        self.compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.encoder = nn.Conv2d(compressed_channels, scale_factor**2 * k_up**2, k_enc, padding=k_enc // 2)
        # The paper's initialisation: a near-zero encoder, so the kernels start close to uniform
        # (a k_up×k_up box filter of the nearest-upsampled input).
        nn.init.xavier_uniform_(self.compressor.weight)
        nn.init.zeros_(self.compressor.bias)
        nn.init.normal_(self.encoder.weight, std=1e-3)
        nn.init.zeros_(self.encoder.bias)
        self.init = init
        if init == "bilinear":
            # Start as bilinear upsampling instead: the encoder bias holds, per (tap, sub-position),
            # the log of bilinear's weight on that tap (floored at ``init_floor``; taps outside the
            # 2×2 bilinear support keep a small weight and a gradient). The uniform start averages
            # k_up² source pixels — at ×8 with k_up = 5 a 40-pixel box blur, which a network built
            # on it had to undo (the joint upsampling net was 3.3× worse than bilinear with it).
            with torch.no_grad():
                self.encoder.bias.copy_(bilinear_logits(scale_factor, k_up, init_floor).reshape(-1))

    def kernel_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The reassembly kernels before the softmax over the taps: B×k_up²×σH×σW (the kernel-predicting
        upsampler's contract, see :class:`~adaptconv.ops.base.AdaptiveModule`)."""
        return F.pixel_shuffle(self.encoder(self.compressor(x)), self.scale_factor)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The reassembly kernels: B×k_up²×σH×σW, softmax over the taps."""
        return F.softmax(self.kernel_logits(x), dim=1)

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        return carafe(x, self.kernels(x), self.scale_factor)

    @classmethod
    def identity_check(cls) -> str:
        # A one-hot centre kernel (encoder weight 0, centre-tap bias 0, other taps −1e4: softmax
        # gives exactly 1 and 0 in float64) must be nearest upsampling, for odd and even sizes.
        worst = 0.0
        for s, k, (h, w) in ((2, 3, (5, 6)), (3, 5, (4, 3)), (4, 3, (3, 3))):
            op = cls(3, s, k_up=k, compressed_channels=4).double()
            with torch.no_grad():
                op.encoder.weight.zero_()
                bias = torch.full((k * k, s * s), -1e4, dtype=torch.float64)
                bias[(k * k) // 2] = 0.0  # pixel_shuffle reads channel (tap, sub-position)
                op.encoder.bias.copy_(bias.reshape(-1))
            x = torch.randn(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            with torch.no_grad():
                y, ref = op(x), F.interpolate(x, scale_factor=s, mode="nearest")
            if y.shape != ref.shape:
                raise AssertionError(f"×{s}: output {tuple(y.shape)}, nearest upsampling {tuple(ref.shape)}")
            worst = max(worst, (y - ref).abs().max().item())
            if not torch.allclose(y, ref, atol=1e-12, rtol=0):
                raise AssertionError(f"one-hot centre kernel ×{s}, k_up={k}: max |Δ| {worst:.3g} vs nearest upsampling")
        return f"one-hot centre kernel == nearest upsampling (×2, ×3, ×4; max |Δ| {worst:.1e}, float64)"

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", k_up={self.k_up}, k_enc={self.k_enc}, "
            f"compressed_channels={self.compressor.out_channels}, init={self.init!r}"
        )
