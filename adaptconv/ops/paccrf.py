"""PAC-CRF — mean-field CRF inference with pixel-adaptive messages (Su et al., CVPR 2019, §4.2): a refiner.

Input: unary logits ``U`` (B×L×H×W) and a guide image ``I`` (B×Cg×H×W, RGB by default). Output:
refined logits of the same shape, after a fixed number of mean-field iterations:

    Q      = softmax_L(logits)                                      (logits₀ = U)
    m[l,p] = Σ_{j ≠ centre} K_j(p) · Q[l, p + j·d]                  (a PAC of Q, no filter weights)
    logits = U + Σ_l' C[l,l'] · m[l',p]                             (compatibility transform)

with the Gaussian kernel over the features f = [y, x, r, g, b] of the dense CRF's appearance kernel,

    K_j(p) = exp(−½ (‖Δpos‖² / σ_pos² + ‖I(p + j·d) − I(p)‖² / σ_col²)),

a k×k window of dilation d around each pixel (taps outside the image send no message), optionally
normalised to sum to 1 over the window (``normalize_kernel``: each message is then a weighted average
of the neighbours' label distributions). σ_pos and σ_col are learnable (``learn_scales``, stored as
logarithms so they stay positive). ``C`` is a learnable L×L matrix (a 1×1 conv over labels)
initialised to the Potts model, ``C = −w·(1 − I)``: a neighbour of another label costs ``w``. With
``C = 0`` the output is the unaries unchanged.

Implementation: PAC's machinery: :func:`~adaptconv.ops.pac_contraction.pac_distance`
on the guide with two coordinate channels prepended (so the scales are its per-channel ``scale``), the
kernel from :func:`~adaptconv.ops.pac.kernel_from_distance`, and every message a
:func:`~adaptconv.ops.dfn_contraction.dynamic_filter` (no unfold is kept for backward). K is computed once and
reused by every iteration.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptiveModule
from .dfn_contraction import dynamic_filter
from .pac import kernel_from_distance
from .pac_contraction import pac_distance
from .registry import register_op
from .taps import valid_taps
from .tiling import geometry


def message_mask(
    size: tuple[int, int], kernel_size: int, dilation: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """1×T×H×W: 1 for taps inside the image, 0 outside and at the window centre (no self-message)."""
    r = kernel_size // 2
    mask = valid_taps(
        size, (kernel_size,) * 2, (1, 1), (r * dilation,) * 2, (dilation,) * 2, device=device, dtype=dtype
    )[:, 0].clone()
    mask[:, (kernel_size * kernel_size) // 2] = 0
    return mask


def with_coordinates(guide: torch.Tensor) -> torch.Tensor:
    """[y, x, guide…]: B×(2+Cg)×H×W, positions in pixels."""
    b, _, h, w = guide.shape
    ys = torch.arange(h, device=guide.device, dtype=guide.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.arange(w, device=guide.device, dtype=guide.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([ys, xs, guide], 1)


def crf_kernel(
    guide: torch.Tensor,
    kernel_size: int,
    dilation: int,
    pos_scale: torch.Tensor,
    color_scale: torch.Tensor,
    normalize: bool,
) -> torch.Tensor:
    """The message kernel K: B×T×H×W (zero at the centre tap and outside the image), in the guide's dtype."""
    dtype = guide.dtype
    if dtype in (torch.float16, torch.bfloat16):
        # Half precision cannot hold pixel coordinates past 256 (bf16) nor the small Gaussian weights
        # a normalised window may consist of (0/0); K is small (B×k²×H×W): compute it in float32.
        guide = guide.float()
    cg = guide.shape[1]
    r = kernel_size // 2
    geom = geometry((kernel_size, kernel_size), (1, 1), (r * dilation, r * dilation), (dilation, dilation))
    gamma = torch.cat(
        [
            pos_scale.to(guide.dtype).pow(-2).reshape(1).expand(2),
            color_scale.to(guide.dtype).pow(-2).reshape(1).expand(cg),
        ]
    )
    dist2 = pac_distance(with_coordinates(guide), geom, gamma)
    mask = message_mask(tuple(guide.shape[-2:]), kernel_size, dilation, guide.device, guide.dtype)
    kernel = kernel_from_distance(dist2, "gaussian", valid=mask, normalize=normalize, dim=1)
    return (kernel if normalize else kernel * mask).to(dtype)


def mean_field(
    unary: torch.Tensor, kernel: torch.Tensor, compat: torch.Tensor, num_iters: int, kernel_size: int, dilation: int
) -> torch.Tensor:
    """``num_iters`` mean-field steps from ``unary`` logits with message kernel ``kernel`` (B×T×H×W)
    and compatibility ``compat`` (L×L): the refined logits."""
    labels = unary.shape[1]
    r = kernel_size // 2
    geom = geometry((kernel_size, kernel_size), (1, 1), (r * dilation, r * dilation), (dilation, dilation))
    weight = compat.to(unary.dtype).view(labels, labels, 1, 1)
    filters = kernel.unsqueeze(1)
    logits = unary
    for _ in range(num_iters):
        message = dynamic_filter(F.softmax(logits, dim=1), filters, geom)
        logits = unary + F.conv2d(message, weight)
    return logits


@register_op("paccrf")
class PacCRF(AdaptiveModule):
    """PAC-CRF refinement head: ``PacCRF(num_labels, guide_channels=3, num_iters=5, kernel_size=5, ...)``;
    ``op(logits, image)`` returns refined logits of the same shape."""

    kind = "refiner"
    paper = "Su et al., CVPR 2019 (pixel-adaptive convolution; PAC-CRF)"
    guide = "required"
    from_conv_note = "not a convolution: a mean-field CRF head that refines logits with a guide image"

    def __init__(
        self,
        channels: int,
        *,
        guide_channels: int = 3,
        num_iters: int = 5,
        kernel_size: int = 5,
        dilation: int = 1,
        pos_scale: float = 3.0,
        color_scale: float = 0.1,
        learn_scales: bool = True,
        normalize_kernel: bool = True,
        compat_weight: float = 1.0,
    ) -> None:
        super().__init__(channels, guide_channels=guide_channels)
        for arg, value, low in (
            ("num_iters", num_iters, 0),
            ("kernel_size", kernel_size, 1),
            ("dilation", dilation, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"paccrf: {arg} must be an int >= {low}, got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"paccrf: kernel_size must be odd (the window is centred on the pixel), got {kernel_size}")
        for arg, value in (("pos_scale", pos_scale), ("color_scale", color_scale)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"paccrf: {arg} must be a number > 0, got {value!r}")
        self.num_iters, self.kernel_size, self.dilation = num_iters, kernel_size, dilation
        self.normalize_kernel = bool(normalize_kernel)
        scales = {"log_pos_scale": math.log(pos_scale), "log_color_scale": math.log(color_scale)}
        for attr, value in scales.items():
            t = torch.tensor(float(value))
            if learn_scales:
                setattr(self, attr, nn.Parameter(t))
            else:
                self.register_buffer(attr, t)
        potts = -float(compat_weight) * (1.0 - torch.eye(channels))
        self.compat = nn.Parameter(potts)  # C[l, l']: the effect of label l' next door on label l

    def message_kernel(self, guide: torch.Tensor) -> torch.Tensor:
        """K: B×k²×H×W for a guide at the logits' resolution."""
        return crf_kernel(
            guide,
            self.kernel_size,
            self.dilation,
            self.log_pos_scale.exp(),
            self.log_color_scale.exp(),
            self.normalize_kernel,
        )

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        kernel = self.message_kernel(guide)
        return mean_field(x, kernel, self.compat, self.num_iters, self.kernel_size, self.dilation)

    @classmethod
    def identity_check(cls) -> str:
        # Zero compatibility: no pairwise term, so the unaries come back unchanged (exactly).
        gen = torch.Generator().manual_seed(0)
        for normalize in (True, False):
            op = cls(4, num_iters=3, kernel_size=3, normalize_kernel=normalize).double()
            with torch.no_grad():
                op.compat.zero_()
            x = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=gen)
            image = torch.rand(2, 3, 5, 6, dtype=torch.float64, generator=gen)
            with torch.no_grad():
                y = op(x, image)
            if not torch.equal(y, x):
                raise AssertionError(
                    f"compat = 0 (normalize_kernel={normalize}): output differs from the unaries "
                    f"by {(y - x).abs().max().item():.3g}"
                )
        # Constant guide: the message is the spatial Gaussian smoothing of Q (centre tap 0).
        op = cls(3, num_iters=1, kernel_size=5, dilation=2, pos_scale=2.5, normalize_kernel=False).double()
        x = torch.randn(1, 3, 7, 8, dtype=torch.float64, generator=gen)
        image = torch.full((1, 3, 7, 8), 0.3, dtype=torch.float64)
        off = torch.arange(-2, 3, dtype=torch.float64) * 2
        sigma = op.log_pos_scale.detach().exp()  # 2.5 up to the float32 rounding of its logarithm
        g = torch.exp(-0.5 * (off[:, None] ** 2 + off[None, :] ** 2) / sigma**2)
        g[2, 2] = 0
        q = F.softmax(x, 1)
        message = F.conv2d(q, g.expand(3, 1, 5, 5), padding=4, dilation=2, groups=3)
        with torch.no_grad():
            y = op(x, image)
        ref = x + F.conv2d(message, op.compat.detach().view(3, 3, 1, 1))
        if not torch.allclose(y, ref, atol=1e-10, rtol=0):
            raise AssertionError(
                f"constant guide: message is not spatial Gaussian smoothing "
                f"(max |Δ| {(y - ref).abs().max().item():.3g})"
            )
        return "compat = 0 ⇒ unaries unchanged (exact); constant guide ⇒ spatial Gaussian smoothing message"

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", num_iters={self.num_iters}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, normalize_kernel={self.normalize_kernel}"
        )
