"""PAC's compiled CPU backend (adaptconv.ops.cpu_pac) against its PyTorch backend (adaptconv.ops.torch_pac).

test_contractions.py runs every PAC test (against the unfold references, and gradcheck) on both
backends; here the kernels are checked function by function against the PyTorch backend they replace,
on geometries the layers do not reach (asymmetric padding, pads larger than the image, strided and
dilated even kernels), with the tiling forced down to single rows, on non-contiguous and broadcast
inputs, in float32 and float64; plus the loader: the cache, the switch, and the fallback when no
compiler can build them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from adaptconv.ops import config, cpu_pac, torch_pac
from adaptconv.ops.pac import PacConv2d
from adaptconv.ops.pac_contraction import pac_contract
from adaptconv.ops.tiling import Geometry

pytestmark = pytest.mark.skipif(not cpu_pac.available(), reason=f"PAC CPU kernels: {cpu_pac.status()}")

GEOMS = [  # kernel, stride, pads (top, bottom, left, right), dilation, groups
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ((3, 5), (1, 2), (0, 2, 1, 3), (2, 1), 2),
    ((2, 2), (1, 1), (0, 1, 0, 1), (1, 1), 1),
    ((4, 3), (3, 1), (2, 1, 0, 0), (1, 2), 3),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((5, 5), (1, 1), (6, 6, 6, 6), (1, 1), 1),  # pads beyond the image
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),  # dilated, stride 1: the flat distance kernels
]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def _inputs(geom, groups, dtype, b=2, c=6, o=6, h=9, w=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ho, wo = geom.out_size(h, w)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    x, gy = r(b, c, h, w), r(b, o, ho, wo)
    k = torch.rand(b, geom.taps, ho, wo, generator=gen, dtype=torch.float64).to(dtype)
    weight, bias = r(o, c // groups, *geom.kernel_size), r(o)
    return x, k, weight, bias, gy


def _assert_all_close(got, want, dtype, what):
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), f"{what}: output {i}"
        if a is not None:
            torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, i=i: f"{what}, output {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1 << 20, 24, 2])  # whole batch; one sample; one row per tile
@pytest.mark.parametrize("k,s,p,d,g", GEOMS)
def test_contraction_matches_pytorch_path(k, s, p, d, g, chunk, dtype):
    geom = Geometry(k, s, p, d)
    x, kern, weight, bias, gy = _inputs(geom, g, dtype)
    with config.override(chunk_elements=chunk):
        y, xp = cpu_pac.pac_forward(x, kern, weight, bias, geom, g)
        grads = cpu_pac.pac_backward(xp, kern, weight, gy, geom, g, True, True, True)
        y0, saved = torch_pac.pac_forward(x, kern, weight, bias, geom, g)
        grads0 = torch_pac.pac_backward(saved, kern, weight, gy, geom, g, True, True, True)
    _assert_all_close([y, *grads], [y0, *grads0], dtype, f"pac {geom}")
    # each gradient alone (the kernels skip what is not needed)
    for need in ((True, False, False), (False, True, False), (False, False, True)):
        with config.override(chunk_elements=chunk):
            part = cpu_pac.pac_backward(xp, kern, weight, gy, geom, g, *need)
        _assert_all_close(part, [t if n else None for t, n in zip(grads, need)], dtype, f"pac {geom} {need}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("centre", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("k,s,p,d,g", GEOMS)
def test_distance_matches_pytorch_path(k, s, p, d, g, centre, scaled, dtype):
    geom = Geometry(k, s, p, d)
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(2, 4, 9, 11, generator=gen, dtype=torch.float64).to(dtype)
    ho, wo = geom.out_size(9, 11)
    cen = torch.randn(2, 4, ho, wo, generator=gen, dtype=torch.float64).to(dtype) if centre else None
    scale = torch.rand(4, generator=gen, dtype=torch.float64).to(dtype) if scaled else None
    gd = torch.randn(2, geom.taps, ho, wo, generator=gen, dtype=torch.float64).to(dtype)
    d, fp = cpu_pac.distance_forward(f, cen, scale, geom)
    got = [d, *cpu_pac.distance_backward(fp, cen, scale, gd, geom, True, centre, scaled)]
    d0, saved = torch_pac.distance_forward(f, cen, scale, geom)
    want = [d0, *torch_pac.distance_backward(saved, cen, scale, gd, geom, True, centre, scaled)]
    _assert_all_close(got, want, dtype, f"distance {geom} centre={centre} scaled={scaled}")


def test_broadcast_kernel_and_non_contiguous_inputs():
    """A batch-1 kernel broadcast over the batch, a channels-last input and a permuted gy."""
    geom = Geometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x, kern, weight, bias, _ = _inputs(geom, 1, torch.float64, b=3)
    results = []
    for backend in (contextlib.nullcontext, lambda: config.override(cpu_kernels=False)):
        xl = x.to(memory_format=torch.channels_last).requires_grad_()
        kl = kern[:1].clone().requires_grad_()
        wl = weight.clone().requires_grad_()
        with backend():
            y = pac_contract(xl, kl, wl, bias, geom)
            gy = torch.randn(y.shape[::-1], generator=torch.Generator().manual_seed(1), dtype=y.dtype)
            y.backward(gy.permute(3, 2, 1, 0))
        results.append([y.detach(), xl.grad, kl.grad, wl.grad])
    _assert_all_close(results[0], results[1], torch.float64, "broadcast / non-contiguous")


def test_layer_uses_the_kernels_and_agrees_with_pytorch_path():
    """PacConv2d, self-guided, float32: the kernels are what runs by default, and a training step gives
    the PyTorch path's output and gradients."""
    torch.manual_seed(0)
    op = PacConv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        for prm in op.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    x0 = torch.randn(2, 8, 12, 10)
    calls = []
    real = cpu_pac.pac_forward
    cpu_pac.pac_forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        out = []
        for off in (False, True):
            op.zero_grad(set_to_none=True)
            x = x0.clone().requires_grad_()
            if off:
                with config.override(cpu_kernels=False):
                    y = op(x)
                    y.square().sum().backward()
            else:
                y = op(x)
                y.square().sum().backward()
            out.append([y.detach(), x.grad] + [p.grad for p in op.parameters()])
    finally:
        cpu_pac.pac_forward = real
    assert calls == [1], "the forward with the kernels on should call cpu_pac once, the other not at all"
    _assert_all_close(out[0], out[1], torch.float32, "PacConv2d")


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_agree_with_one_thread(threads):
    """The test session runs single-threaded (conftest); the kernels split channels and rows over
    threads and add per-thread partial sums of ∂K, which only more threads exercise."""
    geom = Geometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x, kern, weight, bias, gy = _inputs(geom, 1, torch.float64, b=3, c=7, o=5, h=13, w=9)
    f = torch.randn(3, 4, 13, 9, dtype=torch.float64)
    gd = torch.randn(3, 9, 13, 9, dtype=torch.float64)
    scale = torch.rand(4, dtype=torch.float64)

    def run():
        with config.override(chunk_elements=50):  # row tiles too
            y, xp = cpu_pac.pac_forward(x, kern, weight, bias, geom, 1)
            d, fp = cpu_pac.distance_forward(f, None, scale, geom)
            return [
                y,
                *cpu_pac.pac_backward(xp, kern, weight, gy, geom, 1, True, True, True),
                d,
                *cpu_pac.distance_backward(fp, None, scale, gd, geom, True, False, True),
            ]

    one = run()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        many = run()
    finally:
        torch.set_num_threads(old)
    _assert_all_close(many, one, torch.float64, f"{threads} threads")


def test_repeated_runs_are_bitwise_equal():
    geom = Geometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x, kern, weight, _, gy = _inputs(geom, 1, torch.float32, b=2, c=16, o=16, h=20, w=20)
    _, xp = cpu_pac.pac_forward(x, kern, weight, None, geom, 1)
    a = cpu_pac.pac_backward(xp, kern, weight, gy, geom, 1, True, True, True)
    b = cpu_pac.pac_backward(xp, kern, weight, gy, geom, 1, True, True, True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_unsupported_inputs_use_the_pytorch_path():
    assert cpu_pac.usable(torch.ones(1), torch.ones(1))
    assert not cpu_pac.usable(torch.ones(1, dtype=torch.bfloat16))
    assert not cpu_pac.usable(torch.ones(1), torch.ones(1, dtype=torch.float64))
    with config.override(cpu_kernels=False):
        assert not cpu_pac.usable(torch.ones(1))
        assert cpu_pac.status().startswith("off")
    assert cpu_pac.status().startswith("on ")
    # bfloat16 PAC still runs (PyTorch path) and matches float32 loosely
    op = PacConv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(op.to(torch.bfloat16)(x.bfloat16()).float(), op.float()(x), rtol=0.05, atol=0.05)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_build_into_a_fresh_cache_and_reuse_it(tmp_path):
    code = """
        import torch
        from adaptconv.ops import cpu_pac
        assert cpu_pac.available(), cpu_pac.status()
        print(cpu_pac.status())
    """
    first = _run(code, ADAPTCONV_KERNEL_CACHE=str(tmp_path))
    assert first.returncode == 0, first.stderr
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].startswith("pac_cpu-") and built[0].endswith(".so"), built
    second = _run(code, ADAPTCONV_KERNEL_CACHE=str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == built  # loaded, not rebuilt


def test_without_a_compiler_pac_warns_once_and_falls_back(tmp_path):
    code = """
        import warnings, torch
        from adaptconv.ops import cpu_pac
        from adaptconv.ops.pac import PacConv2d
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            op = PacConv2d(3, 3, 3, padding=1)
            x = torch.randn(1, 3, 6, 6, requires_grad=True)
            op(x).sum().backward()
            op(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        mine = [w for w in caught if "PAC CPU kernels" in str(w.message)]
        assert len(mine) == 1, [str(w.message) for w in caught]
        print(cpu_pac.status())
    """
    out = _run(code, ADAPTCONV_KERNEL_CACHE=str(tmp_path), CXX="no-such-compiler-adaptconv")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("unavailable (no C++ compiler ('no-such-compiler-adaptconv' not found")
    off = _run(
        "from adaptconv.ops import cpu_pac; print(cpu_pac.available(), cpu_pac.status())",
        ADAPTCONV_CPU_KERNELS="0",
        ADAPTCONV_KERNEL_CACHE=str(tmp_path),
    )
    assert off.stdout.startswith("False off"), off.stdout + off.stderr
