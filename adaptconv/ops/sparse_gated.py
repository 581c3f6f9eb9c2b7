"""Spatially sparse gated convolution (Verelst & Tuytelaars, CVPR 2020, "Dynamic Convolutions:
Exploiting Spatial Sparsity for Faster Inference").

A small mask unit decides, per output pixel, whether the convolution runs there::

    logit = window_centre(Conv1×1(guide))        B×1×H'×W'   (the guide is x when self-guided)
    m     = Gumbel-sigmoid straight-through hard mask of logit    (training)
          = [logit ≥ 0]                                            (eval)
    y     = m ⊙ conv(x)              (residual=False)
    y     = x + m ⊙ conv(x)          (residual=True: the gated residual block of the paper)

A sparsity loss ``sparsity_weight · (mean(m) − budget)²`` (:meth:`SparseGatedConv2d.auxiliary_loss`,
from the last forward's straight-through mask) pulls the active fraction toward ``budget``; the trial's
training loop adds it to the task loss. The loss here is per layer, a simplification of the paper's
FLOP-weighted network-level criterion.

Two computations of the same function:

- the dense masked path (training, any forward that needs gradients, and the reference):
  ``conv2d(x) * m``;
- the sparse path (eval mode without grad): gathers the receptive fields of the active output
  pixels only (channels-last input, one extra zero row standing for the padding), multiplies them by
  the weight, and scatters the results into the output, so its cost falls with the active fraction.
  Its output is channels-last in memory (same values and shape as nn.Conv2d's).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptiveConv2d, ConvWeightMixin
from .registry import register_op
from .taps import window_centres

Pair = tuple[int, int]

#: Elements of the gathered patch matrix per chunk of active pixels (about 8 MiB in float32): keeps
#: the gather and its matmul in cache instead of materialising every receptive field at once.
_CHUNK_ELEMENTS = 1 << 21


def gumbel_sigmoid_mask(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class Gumbel-softmax on ``logits``: ``(soft, hard)``.

    ``soft = sigmoid((logit + g₁ − g₂)/τ)``; g₁ − g₂ of two Gumbel(0, 1) is Logistic(0, 1), drawn
    from one uniform of torch's global RNG (so a seeded trial reproduces). ``hard = [soft ≥ ½]``.
    """
    u = torch.rand_like(logits, dtype=torch.float32).clamp_(1e-6, 1 - 1e-6).to(logits.dtype)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    return soft, (soft >= 0.5).to(logits.dtype)


@functools.lru_cache(maxsize=8)
def tap_index(batch: int, in_size: Pair, out_size: Pair, kernel_size: Pair, stride: Pair, padding: Pair,
              dilation: Pair, device: torch.device) -> torch.Tensor:
    """(B·H'·W')×(kh·kw) flat indices into B·H·W of the input pixel each tap of each output pixel
    reads; ``B·H·W`` where the tap falls in the zero padding (the caller appends a zero row there).

    Depends only on the shapes and the geometry, so it is cached (a few entries: inference repeats
    the same shapes) and the sparse path only gathers rows of it.
    """
    h, w = in_size
    ho, wo = out_size
    ty = torch.arange(kernel_size[0], device=device) * dilation[0] - padding[0]
    tx = torch.arange(kernel_size[1], device=device) * dilation[1] - padding[1]
    iy = (torch.arange(ho, device=device) * stride[0]).unsqueeze(1) + ty  # H'×kh
    ix = (torch.arange(wo, device=device) * stride[1]).unsqueeze(1) + tx  # W'×kw
    inside = ((iy >= 0) & (iy < h)).view(ho, 1, -1, 1) & ((ix >= 0) & (ix < w)).view(1, wo, 1, -1)
    flat = (iy * w).view(ho, 1, -1, 1) + ix.view(1, wo, 1, -1)  # H'×W'×kh×kw
    image = torch.where(inside, flat, torch.full_like(flat, -1)).view(1, ho * wo, -1)
    offsets = (torch.arange(batch, device=device) * (h * w)).view(-1, 1, 1)
    index = torch.where(image >= 0, image + offsets, torch.full_like(image, batch * h * w))
    return index.view(batch * ho * wo, -1)


def channels_last_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B×C×H×W) as (B·H·W + 1)×C rows, pixel-major, with one zero row at the end that the
    taps falling in the zero padding index (see :func:`tap_index`)."""
    b, c, h, w = x.shape
    rows = x.new_empty(b * h * w + 1, c)
    rows[:-1].view(b, h, w, c).copy_(x.permute(0, 2, 3, 1))
    rows[-1].zero_()
    return rows


def sparse_masked_conv2d(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         stride: Pair = (1, 1), padding: Pair = (0, 0), dilation: Pair = (1, 1), groups: int = 1,
                         residual: bool = False, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(x) * mask`` (plus ``x`` when ``residual``) computed at the active pixels only.

    ``mask`` is B×1×H'×W' (non-zero = active; its values are not multiplied in, it is a 0/1 mask).
    Forward only (no autograd through the gather): the inference path. The output is channels-last
    in memory. ``rows``: :func:`channels_last_rows` of ``x`` if the caller has it (with ``residual``
    it is overwritten with the output).
    """
    b, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    ho, wo = mask.shape[2:]
    active = mask.reshape(-1).nonzero().squeeze(1)  # flat indices into B·H'·W'
    taps = tap_index(b, (h, w), (ho, wo), (kh, kw), tuple(stride), tuple(padding), tuple(dilation),
                     x.device).index_select(0, active)
    t = kh * kw
    og = o // groups
    if rows is None:
        rows = channels_last_rows(x)
    if groups == 1:
        wmat = weight.permute(2, 3, 1, 0).reshape(t * c, o)  # (tap, channel) × out, matching the gather
    else:
        wmat = weight.view(groups, og, cg, kh, kw).permute(0, 3, 4, 2, 1).reshape(groups, t * cg, og)
    n = active.numel()
    vals = x.new_empty(n, o)
    chunk = max(1, _CHUNK_ELEMENTS // (t * c))
    for s in range(0, n, chunk):
        # embedding is index_select on rows, but measured ~2-3× faster on the CPU for this gather
        patches = F.embedding(taps[s:s + chunk].reshape(-1), rows)  # (n·t)×c
        m = patches.shape[0] // t
        if groups == 1:
            out = vals[s:s + m]
            if bias is None:
                torch.mm(patches.view(m, t * c), wmat, out=out)
            else:
                torch.addmm(bias, patches.view(m, t * c), wmat, out=out)
        else:
            grouped = patches.view(m, t, groups, cg).permute(2, 0, 1, 3).reshape(groups, m, t * cg)
            out = torch.bmm(grouped, wmat).permute(1, 0, 2).reshape(m, o)
            if bias is not None:
                out = out + bias
            vals[s:s + m] = out
    if residual:
        # y = x + m·conv(x): add into the channels-last copy of x we already hold.
        y = rows[:-1]
        y.index_add_(0, active, vals)
    else:
        y = x.new_zeros(b * ho * wo, o)
        y.index_copy_(0, active, vals)
    return y.view(b, ho, wo, -1).permute(0, 3, 1, 2)


def dense_masked_conv2d(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        stride: Pair = (1, 1), padding: Pair = (0, 0), dilation: Pair = (1, 1), groups: int = 1,
                        residual: bool = False) -> torch.Tensor:
    """The dense reference (and training path): ``conv2d(x)·mask`` (+ ``x``), differentiable in all."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups) * mask
    return x + y if residual else y


class _LastMask:
    """The mask of the last forward (for the sparsity loss and statistics). Not state: a copy or a
    pickle of the module starts empty (a mask tensor inside an autograd graph cannot be deep-copied)."""

    __slots__ = ("mask",)

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> "_LastMask":
        return _LastMask()

    def __reduce__(self):
        return (_LastMask, ())


@register_op("sparse_gated")
class SparseGatedConv2d(ConvWeightMixin, AdaptiveConv2d):
    """A convolution computed only where a learned per-pixel mask is on.

    Options: ``residual`` (``y = x + m ⊙ conv(x)``; needs in == out channels and an output at the
    input's size), ``budget`` (target active fraction for the sparsity loss; None: no loss),
    ``sparsity_weight``, ``temperature`` (Gumbel-sigmoid τ), ``sparse_inference`` (False: eval runs
    the dense masked path too), ``dense_above`` (eval without grad runs the sparse path only when at
    most this fraction is active; 1.0: always), ``init_active_logit`` (mask-unit bias set by
    :meth:`from_conv`).
    """

    paper = ("Verelst & Tuytelaars, Dynamic Convolutions: Exploiting Spatial Sparsity for Faster Inference, "
             "CVPR 2020")
    guide = "optional"
    function_preserving = False
    from_conv_note = ("exact in eval mode: the conv's weights are copied, the mask unit's weight zeroed and its "
                      "bias set to init_active_logit (3) so every pixel is active (logit ≥ 0); in training mode "
                      "the Gumbel noise still switches off about sigmoid(−3) ≈ 5% of the pixels, so the "
                      "train-mode function is not the conv's")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, guide_channels=None, residual: bool = False, budget: float | None = 0.5,
                 sparsity_weight: float = 1.0, temperature: float = 1.0, sparse_inference: bool = True,
                 dense_above: float = 0.5, init_active_logit: float = 3.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         guide_channels=guide_channels)
        label = type(self).name or type(self).__name__
        if budget is not None and not (isinstance(budget, (int, float)) and 0 <= budget <= 1):
            raise ValueError(f"{label}: budget must be a fraction of active pixels in [0, 1] or None, got {budget!r}")
        if not (isinstance(sparsity_weight, (int, float)) and sparsity_weight >= 0):
            raise ValueError(f"{label}: sparsity_weight must be >= 0, got {sparsity_weight!r}")
        if not (isinstance(dense_above, (int, float)) and 0 <= dense_above <= 1):
            raise ValueError(f"{label}: dense_above must be a fraction in [0, 1], got {dense_above!r}")
        if not (isinstance(init_active_logit, (int, float)) and init_active_logit >= 0):
            raise ValueError(f"{label}: init_active_logit must be >= 0 (every pixel active), got {init_active_logit!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"{label}: temperature must be > 0, got {temperature!r}")
        if residual:
            keeps_size = all(s == 1 and 2 * p == d * (k - 1) for s, p, d, k in
                             zip(self.stride, self.padding, self.dilation, self.kernel_size))
            if in_channels != out_channels or not keeps_size:
                raise ValueError(
                    f"{label}: residual=True computes x + m·conv(x), so the conv's output must have the input's "
                    f"shape: got in_channels={in_channels} → out_channels={out_channels}, "
                    f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                    f"dilation={self.dilation} (an input C×H×W maps to {out_channels}×H'×W' with "
                    f"H' = H + 2·{self.padding[0]} − {self.dilation[0]}·({self.kernel_size[0]}−1) − 1)//"
                    f"{self.stride[0]} + 1); use stride 1 and padding = dilation·(k−1)/2")
        self.residual = bool(residual)
        self.budget = None if budget is None else float(budget)
        self.sparsity_weight = float(sparsity_weight)
        self.temperature = float(temperature)
        self.sparse_inference = bool(sparse_inference)
        self.dense_above = float(dense_above)
        self.init_active_logit = float(init_active_logit)
        self.init_conv_weight()
        # The mask unit: one logit per pixel from the guide (or x), read at each window's centre so the
        # mask lands at the output resolution for any stride/padding/dilation. Default nn.Conv2d
        # initialisation: about half the pixels active at the start.
        self.mask_unit = nn.Conv2d(self.adapt_channels, 1, 1)
        self._last = _LastMask()

    # ----------------------------------------------------------------------------------------------
    def mask_logits(self, guide: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The mask unit's logits, B×1×H'×W'. ``rows``: the guide already in channels-last rows
        (:func:`channels_last_rows`), which makes the 1×1 conv a matrix-vector product."""
        if rows is None:
            unit = self.mask_unit(guide)
        else:
            b, _, h, w = guide.shape
            unit = torch.addmv(self.mask_unit.bias.expand(b * h * w), rows[:-1], self.mask_unit.weight.view(-1))
            unit = unit.view(b, 1, h, w)
        return window_centres(unit, self.kernel_size, self.stride, self.padding, self.dilation)

    def mask(self, guide: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The mask (B×1×H'×W'): straight-through Gumbel hard mask in training (forward value 0/1,
        gradient of the soft one), ``logit ≥ 0`` in eval (no gradient to the mask unit)."""
        logits = self.mask_logits(guide, rows)
        if self.training:
            soft, hard = gumbel_sigmoid_mask(logits, self.temperature)
            # soft − soft.detach() is exactly 0: the forward value is exactly the 0/1 hard mask
            return hard + (soft - soft.detach())
        return (logits >= 0).to(logits.dtype)

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        fast = not self.training and self.sparse_inference and not torch.is_grad_enabled()
        # Inference: the sparse path needs x in channels-last rows anyway; a self-guided mask unit
        # reads them too (one pass over x instead of two).
        rows = channels_last_rows(x) if fast else None
        m = self.mask(guide, rows if guide is x else None)
        self._last.mask = m
        geo = (self.stride, self.padding, self.dilation, self.groups)
        # The gather/scatter path costs more per active pixel than the dense conv: above `dense_above`
        # active (measured crossover ≈ 0.4 on a 2-core CPU, see benchmarks/test_sparse_gated.py) the
        # dense masked path is the faster way to the same output.
        if fast and float(m.mean()) <= self.dense_above:
            return sparse_masked_conv2d(x, m, self.weight, self.bias, *geo, residual=self.residual, rows=rows)
        return dense_masked_conv2d(x, m, self.weight, self.bias, *geo, residual=self.residual)

    # ----------------------------------------------------------------------------------------------
    def auxiliary_loss(self) -> torch.Tensor:
        """``sparsity_weight · (mean active fraction − budget)²`` of the last forward's mask (its
        straight-through gradient reaches the mask unit in training). Zero before any forward or with
        ``budget=None``."""
        m = self._last.mask
        if m is None or self.budget is None:
            return self.weight.new_zeros(())
        return self.sparsity_weight * (m.float().mean() - self.budget).square()

    def active_fraction(self) -> float | None:
        """Fraction of active output pixels in the last forward (None before any)."""
        m = self._last.mask
        return None if m is None else float(m.detach().float().mean())

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options: Any) -> "SparseGatedConv2d":
        op = cls.build_like(conv, **options)
        op.copy_conv_weight(conv)
        with torch.no_grad():
            # Constant logit init_active_logit ≥ 0: every pixel active in eval ⇒ exactly the conv.
            op.mask_unit.weight.zero_()
            op.mask_unit.bias.fill_(op.init_active_logit)
        return op

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", budget={self.budget}"
        if self.residual:
            s += ", residual=True"
        if self.sparsity_weight != 1.0:
            s += f", sparsity_weight={self.sparsity_weight}"
        if not math.isclose(self.temperature, 1.0):
            s += f", temperature={self.temperature}"
        return s
