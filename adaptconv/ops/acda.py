"""ACDA: adaptive convolution with per-pixel dynamic filter atoms (Wang, Miao, Hu, Qiu, ICCV 2021).

The filter at every output pixel ``p`` is factorised into ``M`` spatial *atoms* ``D_m(p)`` (k×k each,
predicted per pixel) and a spatially shared channel mixing ``coef ∈ R^{O×(C/g)×M}``::

    W_p[o, c] = Σ_m coef[o, c, m] · D_m(p)

Each atom is a combination of ``L`` fixed multi-scale Fourier–Bessel bases ``ψ_l`` (see
:func:`fourier_bessel_bases`), ``D_m(p) = Σ_l a[m, l, p] ψ_l``, whose coefficients ``a`` come from a
light network on the guide (or on ``x`` when self-guided): Conv3×3 → BN → tanh → Conv3×3 → BN → tanh.
The output is computed as in the paper, first filtering every channel with every atom,

    Z[b, c, m, p] = Σ_j D_m(p)[j] · x_j[b, c, p]        (x_j: the input at tap j of p's window)

and then mixing channels and atoms with a grouped 1×1 convolution, ``y = Conv1×1(Z; coef) + bias``.
Unlike the reference code this works for any stride, padding, dilation and groups, and never leaves
the device. Both steps are one custom autograd Function (:func:`adaptconv.ops.acda_contraction.acda_contract`)
that accumulates ``Z`` over the taps chunk by chunk and recomputes it in backward, so neither the
unfolded input (B·C·k²·H'·W') nor ``Z`` (B·C·M·H'·W') is ever stored; ``acda_conv2d_unfold`` is the
straightforward reference.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import config
from . import taps as _taps
from .acda_contraction import acda_contract
from .base import AdaptiveConv2d, conv_bias_init_, kaiming_uniform_
from .registry import register_op
from .taps import pair
from .tiling import geometry

__all__ = ["AcdaConv2d", "acda_conv2d", "acda_conv2d_unfold", "fourier_bessel_bases"]

#: tanh(β) of the coefficient network's output in :meth:`AcdaConv2d.from_conv`.
_FROM_CONV_T = 0.5


# --------------------------------------------------------------------------------------------------
# Fourier–Bessel bases
def _fb_scale(m: int, wanted: int) -> np.ndarray:
    """Orthonormal Fourier–Bessel bases sampled on an m×m grid: n×m×m (float64), n <= wanted.

    Grid coordinates are centred and the radius is normalised by m/2, so the disc r <= 1 touches the
    middle of the grid's edges; pixels outside it are zero. Candidates ``J_n(z_{n,s} r)·cos(nθ)`` and
    ``J_n(z_{n,s} r)·sin(nθ)`` (n > 0) are taken in order of the Bessel zero ``z_{n,s}`` (lowest
    frequency first) and Gram–Schmidt orthonormalised in that order; a candidate that is numerically
    dependent on those before it (on this small grid several alias each other) is skipped, so the
    first ``wanted`` *independent* ones are kept, up to the rank the grid allows.
    """
    from scipy.special import jn_zeros, jv

    centre = (m - 1) / 2.0
    idx = np.arange(m, dtype=np.float64) - centre
    yy, xx = np.meshgrid(-idx, idx, indexing="ij")  # y up, x right
    yy, xx = yy / (m / 2.0), xx / (m / 2.0)
    r = np.hypot(yy, xx).ravel()
    theta = np.arctan2(yy, xx).ravel()
    inside = r <= 1.0
    cap = min(wanted, int(inside.sum()))

    n_max, s_max = 2 * m + 2, m + 2
    candidates = []  # (z, n, trig) with trig 0 = cos, 1 = sin
    for n in range(n_max + 1):
        for z in jn_zeros(n, s_max):
            candidates.append((float(z), n, 0))
            if n > 0:
                candidates.append((float(z), n, 1))
    candidates.sort()

    basis: list[np.ndarray] = []
    for z, n, trig in candidates:
        if len(basis) >= cap:
            break
        angular = np.cos(n * theta) if trig == 0 else np.sin(n * theta)
        v = np.where(inside, jv(n, z * r) * angular, 0.0)
        norm0 = np.linalg.norm(v)
        if norm0 < 1e-12:
            continue
        for _ in range(2):  # Gram–Schmidt, re-orthogonalised once for numerical safety
            for q in basis:
                v = v - (q @ v) * q
        norm = np.linalg.norm(v)
        if norm < 1e-6 * norm0:  # numerically dependent on the bases before it
            continue
        basis.append(v / norm)
    return np.stack(basis).reshape(-1, m, m)


@functools.cache
def _fb_bases(kernel_size: tuple[int, int], bases_per_scale: int) -> np.ndarray:
    kh, kw = kernel_size
    k = min(kh, kw)
    sizes = [1] if k == 1 else list(range(k, 1, -2))
    blocks = []
    for m in sizes:
        scale = _fb_scale(m, bases_per_scale)
        block = np.zeros((scale.shape[0], kh, kw))
        r0, c0 = (kh - m) // 2, (kw - m) // 2
        block[:, r0 : r0 + m, c0 : c0 + m] = scale
        blocks.append(block)
    out = np.concatenate(blocks)
    out.setflags(write=False)
    return out


def fourier_bessel_bases(
    kernel_size: int | tuple[int, int], bases_per_scale: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Multi-scale Fourier–Bessel bases of a kernel window: L×kh×kw.

    Scales are the centred square windows of sizes ``k, k-2, k-4, …`` (while >= 2; ``k = min(kh, kw)``;
    for ``k = 1`` the single 1×1 basis), each zero-padded to kh×kw. Each scale contributes up to
    ``bases_per_scale`` bases (fewer if its grid has lower rank, and at most m² for an m×m window),
    orthonormal within the scale, lowest frequency first. Computed in float64 and cached.
    """
    kernel_size = pair(kernel_size, "kernel_size", "fourier_bessel_bases", minimum=1)
    if not isinstance(bases_per_scale, int) or isinstance(bases_per_scale, bool) or bases_per_scale < 1:
        raise ValueError(f"fourier_bessel_bases: bases_per_scale must be a positive int, got {bases_per_scale!r}")
    return torch.tensor(_fb_bases(kernel_size, bases_per_scale), dtype=dtype)


# --------------------------------------------------------------------------------------------------
# The operator, functional form
def acda_conv2d(
    x: torch.Tensor,
    atoms: torch.Tensor,
    coef: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    kernel_size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """ACDA with given per-pixel atoms.

    - ``x``: B×C×H×W input.
    - ``atoms``: B×M×T×H'×W' (batch 1 broadcasts), atom ``m`` at output pixel ``p`` over the window's
      ``T = kh·kw`` taps (row-major, like a conv weight).
    - ``coef``: O×(C/g·M)×1×1, input index ``c·M + m`` (channel-major, so groups split channels).
    - ``kernel_size``: needed only for non-square windows; by default ``T`` must be a square.

    Returns ``Σ_{c,m} coef[o, c·M+m] · Σ_j atoms[b, m, j, p] · x_j[b, c, p] + bias[o]``: B×O×H'×W'.
    """
    stride = pair(stride, "stride", "acda_conv2d", minimum=1)
    padding = pair(padding, "padding", "acda_conv2d", minimum=0)
    dilation = pair(dilation, "dilation", "acda_conv2d", minimum=1)
    if x.dim() != 4:
        raise ValueError(f"acda_conv2d: x must be B×C×H×W, got shape {tuple(x.shape)}")
    if atoms.dim() != 5:
        raise ValueError(f"acda_conv2d: atoms must be B×M×T×H'×W', got shape {tuple(atoms.shape)}")
    b, c, h, w = x.shape
    ab, m, t, ho, wo = atoms.shape
    if kernel_size is None:
        k = math.isqrt(t)
        if k * k != t:
            raise ValueError(f"acda_conv2d: atoms have T={t} taps, not a square; pass kernel_size")
        kernel_size = (k, k)
    else:
        kernel_size = pair(kernel_size, "kernel_size", "acda_conv2d", minimum=1)
        if kernel_size[0] * kernel_size[1] != t:
            raise ValueError(f"acda_conv2d: atoms have T={t} taps but kernel_size={kernel_size}")
    expected = _taps.conv_output_size((h, w), kernel_size, stride, padding, dilation)
    if (ho, wo) != tuple(expected) or ab not in (1, b):
        raise ValueError(
            f"acda_conv2d: atoms shape {tuple(atoms.shape)} does not match the output grid "
            f"{b}×{m}×{t}×{expected[0]}×{expected[1]} of input {tuple(x.shape)}"
        )
    if c % groups or coef.dim() != 4 or coef.shape[0] % groups or tuple(coef.shape[1:]) != (c // groups * m, 1, 1):
        raise ValueError(
            f"acda_conv2d: coef shape {tuple(coef.shape)} must be O×(C/groups·M)×1×1 = O×{c // groups * m}×1×1 "
            f"(C={c}, M={m}, groups={groups})"
        )
    if config.implementation == "unfold":
        return _acda_unfold(x, atoms, coef, bias, stride, padding, dilation, groups, kernel_size)
    return acda_contract(x, atoms, coef, bias, geometry(kernel_size, stride, padding, dilation), groups)


def acda_conv2d_unfold(x, atoms, coef, bias=None, stride=1, padding=0, dilation=1, groups=1, *, kernel_size=None):
    """The straightforward reference of :func:`acda_conv2d`: unfold, einsum to Z, 1×1 conv."""
    with config.override(implementation="unfold"):
        return acda_conv2d(x, atoms, coef, bias, stride, padding, dilation, groups, kernel_size=kernel_size)


def _acda_unfold(x, atoms, coef, bias, stride, padding, dilation, groups, kernel_size):
    b, c = x.shape[:2]
    m, ho, wo = atoms.shape[1], atoms.shape[-2], atoms.shape[-1]
    cols = _taps.unfold_taps(x, kernel_size, stride, padding, dilation)  # B×C×T×H'×W'
    z = torch.einsum("bmtyx,bctyx->bcmyx", atoms, cols)  # B×C×M×H'×W'
    return F.conv2d(z.reshape(b, c * m, ho, wo), coef, bias, groups=groups)


# --------------------------------------------------------------------------------------------------
def _positive_int(value, arg: str, label: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{label}: {arg} must be a positive int, got {value!r}")
    return value


@register_op("acda")
class AcdaConv2d(AdaptiveConv2d):
    """ACDA: each pixel's filter is a shared channel mixing of per-pixel Fourier–Bessel atoms.

    Options: ``num_atoms`` (M), ``bases_per_scale`` (Fourier–Bessel bases per window scale; L bases in
    all, see :func:`fourier_bessel_bases`) and ``hidden_channels`` of the coefficient network
    (default ``max(16, M·L // 2)``).
    """

    paper = "Wang et al., ICCV 2021 (per-pixel dynamic filter atoms)"
    guide = "optional"
    supports = frozenset({"stride", "padding", "dilation", "groups", "bias"})
    function_preserving = False
    from_conv_note = (
        "constant atoms t·ψ_m and coef = least-squares projection of the conv weight onto the first "
        "min(M, L) bases; exact when they span all k² taps (k <= 3, bases_per_scale >= k², num_atoms >= L)"
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
        num_atoms=6,
        bases_per_scale=6,
        hidden_channels=None,
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
        self.num_atoms = _positive_int(num_atoms, "num_atoms", label)
        self.bases_per_scale = _positive_int(bases_per_scale, "bases_per_scale", label)
        bases = fourier_bessel_bases(self.kernel_size, self.bases_per_scale)
        self.num_bases = bases.shape[0]
        self.register_buffer("bases", bases.reshape(self.num_bases, -1), persistent=False)  # L×T
        n_coeff = self.num_atoms * self.num_bases
        if hidden_channels is None:
            hidden_channels = max(16, n_coeff // 2)
        self.hidden_channels = _positive_int(hidden_channels, "hidden_channels", label)

        self.coeff_net = nn.Sequential(
            nn.Conv2d(self.adapt_channels, self.hidden_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(self.hidden_channels),
            nn.Tanh(),
            nn.Conv2d(self.hidden_channels, n_coeff, 3, padding=1, bias=False),
            nn.BatchNorm2d(n_coeff),
            nn.Tanh(),
        )
        fan_in = (in_channels // groups) * self.num_atoms
        self.coef = nn.Parameter(torch.empty(out_channels, fan_in, 1, 1))
        kaiming_uniform_(self.coef, fan_in)
        if self.has_bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
            conv_bias_init_(self.bias, fan_in)
        else:
            self.register_parameter("bias", None)

    # ----------------------------------------------------------------------------------------------
    def coefficients(self, guide: torch.Tensor) -> torch.Tensor:
        """Atom coefficients at the output's window centres: B×M×L×H'×W'."""
        a = guide
        for layer in self.coeff_net:
            if isinstance(layer, nn.BatchNorm2d) and layer.training and a.shape[0] * a.shape[2] * a.shape[3] == 1:
                # A single value per channel (batch 1, 1×1 map) has no batch statistics; rather than
                # crash, normalise with the running statistics (and leave them unchanged).
                a = F.batch_norm(
                    a, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps
                )
            else:
                a = layer(a)
        a = _taps.window_centres(a, self.kernel_size, self.stride, self.padding, self.dilation)
        b, _, ho, wo = a.shape
        return a.reshape(b, self.num_atoms, self.num_bases, ho, wo)

    def atoms(self, guide: torch.Tensor) -> torch.Tensor:
        """Per-pixel atoms ``D[b, m, :, p] = Σ_l a[b, m, l, p] ψ_l``: B×M×T×H'×W'."""
        a = self.coefficients(guide)
        # one batched (T×L)·(L×H'W') product, written in the atoms' layout (einsum permutes and copies)
        return torch.matmul(self.bases.t(), a.flatten(3)).view(*a.shape[:2], self.bases.shape[1], *a.shape[-2:])

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return acda_conv2d(
            x,
            self.atoms(guide),
            self.coef,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            kernel_size=self.kernel_size,
        )

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> AcdaConv2d:
        """Spatially constant atoms ``D_m = t·ψ_m`` (m < min(M, L)) and the least-squares ``coef``.

        The last coefficient conv is zeroed and the last BatchNorm's bias set to ``atanh(t)`` on the
        coefficients ``a[m, m]`` (0 elsewhere), so the network outputs ``a[m, l] = t·δ_{ml}`` whatever
        the guide, in train mode (zero input, zero batch mean) and in eval mode (zero running mean).
        ``coef[o, c, :]`` is then chosen so that ``Σ_m coef[o, c, m] D_m`` is the least-squares
        projection of ``conv.weight[o, c]`` onto the span of those atoms: exact when they span all k²
        taps.
        """
        op = cls.build_like(conv, **options)
        m_atoms, n_bases = op.num_atoms, op.num_bases
        n = min(m_atoms, n_bases)
        last_conv, last_bn = op.coeff_net[3], op.coeff_net[4]
        with torch.no_grad():
            last_conv.weight.zero_()
            last_bn.reset_running_stats()
            last_bn.weight.fill_(1.0)
            beta = torch.zeros(m_atoms, n_bases, dtype=torch.float64)
            beta[torch.arange(n), torch.arange(n)] = math.atanh(_FROM_CONV_T)
            last_bn.bias.copy_(beta.flatten())
            # the scale the network actually outputs, in the layer's dtype
            t = torch.tanh(last_bn.bias[0].detach()).double().item()

            psi = op.bases[:n].double()  # n×T
            w = conv.weight.detach().double().flatten(2)  # O×(C/g)×T
            c = w @ torch.linalg.pinv(psi) / t  # O×(C/g)×n: least squares of W ≈ Σ_m c_m t ψ_m
            coef = torch.zeros(conv.out_channels, conv.in_channels // conv.groups, m_atoms, dtype=torch.float64)
            coef[:, :, :n] = c
            op.coef.copy_(coef.reshape(op.coef.shape))
            if conv.bias is not None:
                op.bias.copy_(conv.bias)
        return op

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_atoms={self.num_atoms}, bases_per_scale={self.bases_per_scale}, "
            f"num_bases={self.num_bases}, hidden_channels={self.hidden_channels}"
        )
