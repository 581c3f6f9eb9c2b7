"""The compiled dynamic-filter kernels (adaptconv.ops.cpu_dynfilter) against the PyTorch path of
dfn_contraction.dynamic_filter and DFN's unfold reference: output and gradients over stride, padding,
dilation, filter groups and batch-1 filters, float64 gradcheck, and the dispatch."""

from __future__ import annotations

import pytest
import torch

from adaptconv.ops import config, cpu_dynfilter
from adaptconv.ops.dfn import dynamic_filter2d_unfold
from adaptconv.ops.dfn_contraction import dynamic_filter
from adaptconv.ops.tiling import geometry

pytestmark = pytest.mark.skipif(not cpu_dynfilter.available(), reason=f"kernels: {cpu_dynfilter.status()}")

# (kernel, stride, padding (top, bottom, left, right), dilation, groups G, B, C, H, W, filter batch)
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 2, 4, 7, 9, 2),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, 2, 4, 9, 8, 2),
    ((2, 2), (1, 1), (0, 0, 1, 1), (2, 2), 3, 1, 6, 6, 7, 1),
    ((5, 3), (1, 2), (2, 2, 1, 1), (1, 1), 1, 3, 2, 10, 10, 1),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 4, 2, 4, 5, 5, 2),
]


def _inputs(geo, dtype, gen):
    k, s, p, d, g, b, c, h, w, fb = geo
    geom = geometry(k, s, p, d)
    ho, wo = geom.out_size(h, w)
    x = torch.randn(b, c, h, w, dtype=dtype, generator=gen).requires_grad_()
    f = torch.randn(fb, g, geom.taps, ho, wo, dtype=dtype, generator=gen).requires_grad_()
    gy = torch.randn(b, c, ho, wo, dtype=dtype, generator=gen)
    return geom, x, f, gy


def _run(geom, x, f, gy, compiled):
    with config.override(cpu_kernels=compiled):
        y = dynamic_filter(x, f, geom)
        return [y, *torch.autograd.grad(y, (x, f), gy)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=[f"k{g[0]}s{g[1]}G{g[4]}" for g in GEOMETRIES])
def test_compiled_equals_the_pytorch_path(geo, dtype):
    geom, x, f, gy = _inputs(geo, dtype, torch.Generator().manual_seed(0))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("y", "∂x", "∂F"), _run(geom, x, f, gy, True), _run(geom, x, f, gy, False)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_equals_the_unfold_reference():
    geom, x, f, gy = _inputs(GEOMETRIES[1], torch.float32, torch.Generator().manual_seed(1))
    got = _run(geom, x, f, gy, True)
    y = dynamic_filter2d_unfold(x, f, (3, 3), (2, 2), (1, 1), (1, 1))
    for a, e in zip(got, [y, *torch.autograd.grad(y, (x, f), gy)]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_gradcheck_and_partial_gradients():
    geom, x, f, gy = _inputs(GEOMETRIES[2], torch.float64, torch.Generator().manual_seed(2))
    with config.override(cpu_kernels=True):
        assert torch.autograd.gradcheck(lambda a, b: dynamic_filter(a, b, geom), (x, f))
    for wanted in ((x,), (f,)):
        outs = []
        for compiled in (True, False):
            with config.override(cpu_kernels=compiled):
                outs.append(torch.autograd.grad(dynamic_filter(x, f, geom), wanted, gy))
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)


def test_dispatch(monkeypatch):
    calls = []
    real = cpu_dynfilter.dynamic_forward
    monkeypatch.setattr(cpu_dynfilter, "dynamic_forward", lambda *a: calls.append(1) or real(*a))
    geom, x, f, _ = _inputs(GEOMETRIES[0], torch.float32, torch.Generator().manual_seed(3))
    dynamic_filter(x, f, geom)
    assert len(calls) == 1
    with config.override(cpu_kernels=False):
        dynamic_filter(x, f, geom)
    dynamic_filter(x.detach().bfloat16(), f.detach().bfloat16(), geom)
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=[f"k{g[0]}s{g[1]}H{g[4]}" for g in GEOMETRIES])
def test_ddf_compiled_equals_the_pytorch_path(geo, dtype):
    """DDF's decoupled filter (spatial filter × per-channel scale) on the same kernels: output and the
    gradients of x, the channel filter and the spatial filter (heads = the geometry's groups)."""
    from adaptconv.ops.ddf import ddf2d, ddf2d_unfold

    k, s, p, d, heads, b, c = geo[:7]
    geom, x, sp, gy = _inputs(geo, dtype, torch.Generator().manual_seed(5))
    sp = sp.detach().expand(b, *sp.shape[1:]).clone().requires_grad_()
    ch = torch.randn(b, c, geom.taps, dtype=dtype, generator=torch.Generator().manual_seed(6)).requires_grad_()
    pad = (p[0], p[2])
    runs = []
    for compiled in (True, False):
        with config.override(cpu_kernels=compiled):
            y = ddf2d(x, ch, sp, k, s, pad, d)
            runs.append([y, *torch.autograd.grad(y, (x, ch, sp), gy)])
    y = ddf2d_unfold(x, ch, sp, k, s, pad, d)
    runs.append([y, *torch.autograd.grad(y, (x, ch, sp), gy)])
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for other in runs[1:]:
        for name, a, e in zip(("y", "∂x", "∂channel", "∂spatial"), runs[0], other):
            torch.testing.assert_close(a, e, **tol, msg=lambda m, name=name: f"{name}: {m}")
    if dtype == torch.float64 and geo is GEOMETRIES[1]:
        with config.override(cpu_kernels=True):
            assert torch.autograd.gradcheck(lambda *t: ddf2d(*t, k, s, pad, d), (x, ch, sp))
