"""PAC's two heavy computations as autograd Functions, and the contract of the backends that run them.

- :func:`pac_contract`: ``y[b,o,p] = Σ_j Σ_c W[o,c,j] · K[b,j,p] · x_j[b,c,p] + bias[o]`` (the
  convolution weighted by the adapting kernel K, one scalar per pixel and tap, shared by the channels);
- :func:`pac_distance`: ``d[b,j,p] = Σ_g γ_g (f_j[b,g,p] − c[b,g,p])²``, the scaled feature distances
  K is computed from (:mod:`adaptconv.ops.pac`).

Neither materialises the ``B·C·k²·H'·W'`` unfold: the Functions save only their inputs (or a padded
copy) and the backends recompute the shifted taps in backward, so memory is O(input + output + K).

Three backends implement :class:`PacBackend`, with the same signatures:

- :mod:`adaptconv.ops.triton_pac` — Triton kernels, on CUDA (float16/bfloat16/float32; the distance
  runs the PyTorch backend's code);
- :mod:`adaptconv.ops.cpu_pac` — compiled C++ kernels, on CPU tensors in float32/float64 (while
  ``config.cpu_kernels`` is on and a compiler is found);
- :mod:`adaptconv.ops.torch_pac` — plain PyTorch, everywhere else, and the reference the others are
  tested against.

:func:`backend_for` picks the first of these whose ``usable`` accepts the tensors; the backward pass
runs on the forward's backend.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch.autograd.function import once_differentiable

from . import cpu_pac, torch_pac, triton_pac
from .tiling import Geometry

__all__ = ["PacBackend", "backends", "backend_for", "pac_contract", "pac_distance"]


@runtime_checkable
class PacBackend(Protocol):
    """What a PAC backend provides (a module with these functions). ``saved`` is what the backward pass
    reads in place of the input: the input itself, or a form of it the forward made anyway (the compiled
    CPU backend keeps the padded input rather than pad it again)."""

    def usable(self, *tensors: torch.Tensor | None) -> bool:
        """Whether this backend runs on these tensors (device, dtype, availability)."""

    def pac_forward(
        self,
        x: torch.Tensor,
        kernel: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        geom: Geometry,
        groups: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, saved). x B×C×H×W, kernel B×T×H'×W', weight O×(C/g)×kh×kw."""

    def pac_backward(
        self,
        saved: torch.Tensor,
        kernel: torch.Tensor,
        weight: torch.Tensor,
        gy: torch.Tensor,
        geom: Geometry,
        groups: int,
        need_x: bool,
        need_k: bool,
        need_w: bool,
    ) -> tuple:
        """(∂x, ∂K, ∂W), each None where not needed."""

    def distance_forward(
        self, guide: torch.Tensor, centre: torch.Tensor | None, scale: torch.Tensor | None, geom: Geometry
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(d, saved). guide B×Cg×H×W (replicate padded by ``geom.pads``), centre B×Cg×H'×W' or None (the
        window's own centre), scale Cg or None (1)."""

    def distance_backward(
        self,
        saved: torch.Tensor,
        centre: torch.Tensor | None,
        scale: torch.Tensor | None,
        gd: torch.Tensor,
        geom: Geometry,
        need_f: bool,
        need_c: bool,
        need_s: bool,
    ) -> tuple:
        """(∂guide, ∂centre, ∂scale), each None where not needed (∂centre also when centre is None)."""


#: The backends in order of preference (the last one runs everywhere).
backends: tuple[PacBackend, ...] = (triton_pac, cpu_pac, torch_pac)  # type: ignore[assignment]


def backend_for(*tensors: torch.Tensor | None) -> PacBackend:
    """The first backend whose ``usable`` accepts these tensors."""
    return next(b for b in backends if b.usable(*tensors))


class _PacContract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, weight, bias, geom, groups, backend):
        ctx.geom, ctx.groups, ctx.has_bias, ctx.backend = geom, groups, bias is not None, backend
        y, saved = backend.pac_forward(x, kernel, weight, bias, geom, groups)
        ctx.save_for_backward(saved, kernel, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        saved, kernel, weight = ctx.saved_tensors
        nx, nk, nw, nb = ctx.needs_input_grad[:4]
        gx, gk, gw = ctx.backend.pac_backward(saved, kernel, weight, gy, ctx.geom, ctx.groups, nx, nk, nw)
        gb = gy.sum((0, 2, 3)) if ctx.has_bias and nb else None
        return gx, gk, gw, gb, None, None, None


def pac_contract(
    x: torch.Tensor,
    kernel: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geom: Geometry,
    groups: int = 1,
    backend: PacBackend | None = None,
) -> torch.Tensor:
    """``Σ_c Σ_j W[o,c,j]·K[b,j,p]·x_j[b,c,p] + bias[o]`` without the unfold.

    ``kernel``: B×T×H'×W' (or B×1×T×H'×W'; batch 1 broadcasts); ``weight``: O×(C/g)×kh×kw. ``backend``
    defaults to :func:`backend_for` the tensors (the tests name one to compare them).
    """
    b = x.shape[0]
    if kernel.dim() == 5:
        kernel = kernel.squeeze(1)
    ho, wo = geom.out_size(*x.shape[-2:])
    kernel = kernel.expand(b, geom.taps, ho, wo)
    backend = backend_for(x, kernel, weight, bias) if backend is None else backend
    return _PacContract.apply(x, kernel, weight, bias, geom, groups, backend)


class _PacDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, guide, centre, scale, geom, backend):
        ctx.geom, ctx.backend = geom, backend
        d, saved = backend.distance_forward(guide, centre, scale, geom)
        ctx.save_for_backward(saved, centre, scale)
        return d

    @staticmethod
    @once_differentiable
    def backward(ctx, gd):
        saved, centre, scale = ctx.saved_tensors
        nf, nc, ns = ctx.needs_input_grad[:3]
        gf, gc, gs = ctx.backend.distance_backward(saved, centre, scale, gd, ctx.geom, nf, nc, ns and scale is not None)
        return gf, gc, gs, None, None


def pac_distance(
    guide: torch.Tensor,
    geom: Geometry,
    scale: torch.Tensor | None = None,
    centre: torch.Tensor | None = None,
    backend: PacBackend | None = None,
) -> torch.Tensor:
    """``Σ_g scale_g (f_j − c)²`` for every tap: B×T×H'×W', ``f`` replicate-padded by ``geom.pads``.

    ``centre`` (B×Cg×H'×W') defaults to the guide at each window's centre (the average of the middle
    taps for even kernels), as :func:`adaptconv.ops.taps.window_centres` computes it.
    """
    if scale is not None and scale.dtype != guide.dtype:
        scale = scale.to(guide.dtype)
    backend = backend_for(guide, centre, scale) if backend is None else backend
    return _PacDistance.apply(guide, centre, scale, geom, backend)
