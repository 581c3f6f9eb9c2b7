"""PAC's Triton backend (forward and backward) against its PyTorch backend, in Triton's interpreter.

On CUDA the PAC contraction runs these kernels; here, without a GPU, ``TRITON_INTERPRET=1`` runs the
very same kernel code on CPU tensors (numpy underneath), which checks the indexing, masking, tap
geometry, groups and every gradient. The interpreter computes the kernels' float32 accumulation, so
the comparison is at float32 tolerance. One small case runs by default; the grid is marked slow.

The kernels use Triton builtins only (no ``tl.zeros``/``tl.sum``, which Triton's library defines as
jit functions and interprets only if ``TRITON_INTERPRET`` was set before ``triton`` was imported), so
they are interpreted in this process whatever was imported before: the variable is read when the
kernels are launched.
"""

from __future__ import annotations

import pytest
import torch

from adaptconv.ops import torch_pac
from adaptconv.ops.pac_contraction import backend_for, pac_contract
from adaptconv.ops.tiling import geometry

triton_pac = pytest.importorskip("adaptconv.ops.triton_pac")
if not triton_pac.available():  # pragma: no cover - triton missing or broken in this environment
    pytest.skip("Triton is not importable", allow_module_level=True)


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_pac.interpreting()


def _check(k, s, p, d, g, b=2, c=4, o=6, h=7, w=8, bias=True):
    """Forward and the gradients of x, K, W and bias: Triton kernels vs the PyTorch path."""
    geom = geometry(k if isinstance(k, tuple) else (k, k), (s, s), (p, p), (d, d))
    ho, wo = geom.out_size(h, w)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=gen).requires_grad_()
    kernel = torch.rand(b, geom.taps, ho, wo, generator=gen).requires_grad_()
    weight = torch.randn(o, c // g, *geom.kernel_size, generator=gen).requires_grad_()
    bias_ = torch.randn(o, generator=gen).requires_grad_() if bias else None
    leaves = [t for t in (x, kernel, weight, bias_) if t is not None]
    y_ref = pac_contract(x, kernel, weight, bias_, geom, g, backend=torch_pac)
    y_tri = pac_contract(x, kernel, weight, bias_, geom, g, backend=triton_pac)
    torch.testing.assert_close(y_tri, y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn(y_ref.shape, generator=gen)
    ref = torch.autograd.grad(y_ref, leaves, gy)
    tri = torch.autograd.grad(y_tri, leaves, gy)
    for name, a, r in zip(("x", "kernel", "weight", "bias"), tri, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=2e-5, msg=lambda m, name=name: f"grad {name}: {m}")


def test_small_case_matches_pytorch_path(interpret):
    _check(3, 1, 1, 1, 1, b=1, c=3, o=5, h=5, w=6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "k,s,p,d,g",
    [
        (3, 1, 1, 1, 1),
        (3, 2, 0, 1, 1),
        (3, 1, 2, 2, 2),
        (5, 2, 3, 1, 1),
        (1, 2, 0, 1, 2),
        (4, 1, 1, 1, 1),
        (2, 2, 1, 2, 2),
        ((3, 5), 1, 2, 1, 1),
    ],
)
def test_geometries_match_pytorch_path(interpret, k, s, p, d, g):
    _check(k, s, p, d, g)


@pytest.mark.slow
def test_wide_channels_span_several_blocks(interpret):
    """Channel counts above the kernels' block sizes (the loops over channel blocks), no bias."""
    _check(3, 1, 1, 1, 1, b=1, c=40, o=70, h=5, w=5, bias=False)


def test_cpu_tensors_use_the_pytorch_path_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(1, 2, 4, 4)
    assert not triton_pac.usable(x) and backend_for(x) is not triton_pac
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_pac.pac_forward(
            x, torch.ones(1, 9, 4, 4), torch.randn(2, 2, 3, 3), None, geometry((3, 3), (1, 1), (1, 1)), 1
        )
