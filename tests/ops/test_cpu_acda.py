"""ACDA's compiled CPU kernels (adaptconv.ops.cpu_acda) against its PyTorch path and the unfold reference:
outputs and every gradient over the geometries of the contraction tests, split tiles, float64 gradcheck,
rows whose width is not a whole number of vectors, and the dispatch (kernels off / other dtypes)."""

from __future__ import annotations

import pytest
import torch

from adaptconv.ops import config, cpu_acda
from adaptconv.ops.acda import acda_conv2d_unfold
from adaptconv.ops.acda_contraction import acda_contract
from adaptconv.ops.tiling import geometry

pytestmark = pytest.mark.skipif(not cpu_acda.available(), reason=f"ACDA CPU kernels: {cpu_acda.status()}")

# (kernel, stride, padding (top, bottom, left, right), dilation, groups, B, C, O, H, W, M)
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 2, 4, 6, 7, 9, 3),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, 2, 4, 6, 9, 8, 2),
    ((2, 2), (1, 1), (0, 0, 1, 1), (2, 2), 1, 1, 3, 3, 6, 7, 4),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, 2, 3, 5, 4, 4, 1),
    ((5, 3), (1, 2), (2, 2, 1, 1), (1, 1), 1, 3, 4, 4, 10, 10, 7),
    ((3, 3), (1, 1), (1, 1, 1, 1), (2, 1), 4, 1, 8, 4, 11, 21, 6),  # rows of 21: vectors and a tail
]


def _inputs(geo, dtype, gen):
    k, s, p, d, g, b, c, o, h, w, m = geo
    geom = geometry(k, s, p, d)
    ho, wo = geom.out_size(h, w)
    x = torch.randn(b, c, h, w, dtype=dtype, generator=gen)
    atoms = torch.randn(b, m, geom.taps, ho, wo, dtype=dtype, generator=gen)
    coef = torch.randn(o, c // g * m, 1, 1, dtype=dtype, generator=gen)
    bias = torch.randn(o, dtype=dtype, generator=gen)
    gy = torch.randn(b, o, ho, wo, dtype=dtype, generator=gen)
    return geom, g, [t.requires_grad_() for t in (x, atoms, coef, bias)], gy


def _run(geom, g, inputs, gy, compiled: bool, chunk: int = 1 << 17):
    with config.override(cpu_kernels=compiled, chunk_elements=chunk):
        y = acda_contract(*inputs, geom, g)
        return [y, *torch.autograd.grad(y, inputs, gy)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=[f"k{g[0]}s{g[1]}g{g[4]}w{g[9]}" for g in GEOMETRIES])
def test_compiled_equals_the_pytorch_path(geo, dtype):
    gen = torch.Generator().manual_seed(0)
    geom, g, inputs, gy = _inputs(geo, dtype, gen)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    expected = _run(geom, g, inputs, gy, compiled=False)
    for chunk in (1 << 17, 16):  # whole samples per tile, and one output row per tile
        got = _run(geom, g, inputs, gy, compiled=True, chunk=chunk)
        for name, a, b in zip(("y", "∂x", "∂atoms", "∂coef", "∂b"), got, expected):
            torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_equals_the_unfold_reference():
    gen = torch.Generator().manual_seed(1)
    geom, g, (x, atoms, coef, b), gy = _inputs(GEOMETRIES[1], torch.float32, gen)
    got = _run(geom, g, [x, atoms, coef, b], gy, compiled=True)
    y = acda_conv2d_unfold(x, atoms, coef, b, 2, 1, 1, g)
    expected = [y, *torch.autograd.grad(y, (x, atoms, coef, b), gy)]
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_gradcheck():
    gen = torch.Generator().manual_seed(2)
    geom, g, inputs, _ = _inputs(GEOMETRIES[1], torch.float64, gen)
    with config.override(cpu_kernels=True):
        assert torch.autograd.gradcheck(lambda *t: acda_contract(*t, geom, g), inputs)


def test_partial_gradients_and_broadcast_atoms():
    """Only some inputs need a gradient (each combination takes another branch of the kernel), and
    batch-1 atoms broadcast over the batch."""
    gen = torch.Generator().manual_seed(3)
    geom, g, (x, atoms, coef, b), gy = _inputs(GEOMETRIES[0], torch.float64, gen)
    atoms1 = atoms[:1].detach().requires_grad_()
    for wanted in ((x,), (atoms1,), (coef,), (x, coef), (atoms1, coef)):
        outs = []
        for compiled in (True, False):
            with config.override(cpu_kernels=compiled):
                y = acda_contract(x, atoms1, coef, b, geom, g)
                outs.append(torch.autograd.grad(y, wanted, gy))
        for a, e in zip(*outs):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_dispatch(monkeypatch):
    calls = []
    real = cpu_acda.acda_forward
    monkeypatch.setattr(cpu_acda, "acda_forward", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(4)
    geom, g, inputs, _ = _inputs(GEOMETRIES[0], torch.float32, gen)
    acda_contract(*inputs, geom, g)
    assert len(calls) == 1
    with config.override(cpu_kernels=False):
        acda_contract(*inputs, geom, g)
    acda_contract(*[t.detach().bfloat16() for t in inputs], geom, g)  # no bf16 kernels: PyTorch path
    assert len(calls) == 1
