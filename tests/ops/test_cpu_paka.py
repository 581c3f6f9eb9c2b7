"""PAKA's compiled CPU kernels (adaptconv.ops.cpu_paka) against its PyTorch path and the unfold reference:
outputs and every gradient over the geometries of the contraction tests, split tiles, float64 gradcheck,
and the dispatch (kernels off / other dtypes → the PyTorch path)."""

from __future__ import annotations

import pytest
import torch

from adaptconv.ops import config, cpu_paka
from adaptconv.ops.paka import paka_conv2d_unfold
from adaptconv.ops.paka_contraction import paka_contract
from adaptconv.ops.tiling import geometry

pytestmark = pytest.mark.skipif(not cpu_paka.available(), reason=f"PAKA CPU kernels: {cpu_paka.status()}")

# (kernel, stride, padding (top, bottom, left, right), dilation, groups, B, C, O, H, W)
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 2, 4, 6, 7, 9),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, 2, 4, 6, 9, 8),
    ((2, 2), (1, 1), (0, 0, 1, 1), (2, 2), 1, 1, 3, 3, 6, 7),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, 2, 3, 5, 4, 4),
    ((5, 3), (1, 2), (2, 2, 1, 1), (1, 1), 1, 3, 4, 4, 10, 10),
    ((3, 3), (1, 1), (0, 0, 0, 0), (2, 1), 4, 1, 8, 4, 9, 9),
]


def _inputs(geo, dtype, gen):
    k, s, p, d, g, b, c, o, h, w = geo
    geom = geometry(k, s, p, d)
    ho, wo = geom.out_size(h, w)
    x = torch.randn(b, c, h, w, dtype=dtype, generator=gen)
    a_c = torch.randn(b, c, ho, wo, dtype=dtype, generator=gen)
    a_s = torch.randn(b, geom.taps, ho, wo, dtype=dtype, generator=gen)
    weight = torch.randn(o, c // g, *k, dtype=dtype, generator=gen)
    bias = torch.randn(o, dtype=dtype, generator=gen)
    gy = torch.randn(b, o, ho, wo, dtype=dtype, generator=gen)
    return geom, g, [t.requires_grad_() for t in (x, a_c, a_s, weight, bias)], gy


def _run(geom, g, inputs, gy, compiled: bool, chunk: int = 1 << 17):
    with config.override(cpu_kernels=compiled, chunk_elements=chunk):
        y = paka_contract(*inputs, geom, g)
        return [y, *torch.autograd.grad(y, inputs, gy)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=[f"k{g[0]}s{g[1]}g{g[4]}" for g in GEOMETRIES])
def test_compiled_equals_the_pytorch_path(geo, dtype):
    gen = torch.Generator().manual_seed(0)
    geom, g, inputs, gy = _inputs(geo, dtype, gen)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    expected = _run(geom, g, inputs, gy, compiled=False)
    for chunk in (1 << 17, 16):  # whole samples per tile, and one output row per tile
        got = _run(geom, g, inputs, gy, compiled=True, chunk=chunk)
        for name, a, b in zip(("y", "∂x", "∂A_c", "∂A_s", "∂W", "∂b"), got, expected):
            torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_equals_the_unfold_reference():
    gen = torch.Generator().manual_seed(1)
    geom, g, (x, a_c, a_s, w, b), gy = _inputs(GEOMETRIES[1], torch.float32, gen)
    got = _run(geom, g, [x, a_c, a_s, w, b], gy, compiled=True)
    y = paka_conv2d_unfold(x, a_c, a_s, w, b, (2, 2), (1, 1), (1, 1), g)
    expected = [y, *torch.autograd.grad(y, (x, a_c, a_s, w, b), gy)]
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_gradcheck():
    gen = torch.Generator().manual_seed(2)
    geom, g, inputs, _ = _inputs(GEOMETRIES[1], torch.float64, gen)
    with config.override(cpu_kernels=True):
        assert torch.autograd.gradcheck(lambda *t: paka_contract(*t, geom, g), inputs)


def test_partial_gradients_and_broadcast_attention():
    """Only some inputs need a gradient (each combination takes another branch of the kernel), and
    batch-1 attention maps broadcast over the batch."""
    gen = torch.Generator().manual_seed(3)
    geom, g, (x, a_c, a_s, w, b), gy = _inputs(GEOMETRIES[0], torch.float64, gen)
    a_c1 = a_c[:1].detach().requires_grad_()
    for wanted in ((x,), (a_c1,), (a_s,), (w,), (x, w), (a_c1, a_s)):
        outs = []
        for compiled in (True, False):
            with config.override(cpu_kernels=compiled):
                y = paka_contract(x, a_c1, a_s, w, b, geom, g)
                outs.append(torch.autograd.grad(y, wanted, gy))
        for a, e in zip(*outs):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_dispatch(monkeypatch):
    calls = []
    real = cpu_paka.paka_forward
    monkeypatch.setattr(cpu_paka, "paka_forward", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(4)
    geom, g, inputs, _ = _inputs(GEOMETRIES[0], torch.float32, gen)
    paka_contract(*inputs, geom, g)
    assert len(calls) == 1
    with config.override(cpu_kernels=False):
        paka_contract(*inputs, geom, g)
    paka_contract(*[t.detach().bfloat16() for t in inputs], geom, g)  # no bf16 kernels: PyTorch path
    assert len(calls) == 1
    assert not cpu_paka.usable(torch.ones(1), torch.ones(1, dtype=torch.float64))
