"""The compiled CPU kernels of deformable convolution v1/v2 (``adaptconv.ops.cpu_deform``).

Reference: ``torchvision.ops.deform_conv2d`` (a maintained kernel, and what runs on CUDA), compared in
float64 for the output and every gradient (input, offsets, mask, weight, bias) over the geometries
the conformance checks use and more (stride, padding, dilation, groups, offset groups, odd and
non-square sizes and kernels), with tiles small enough that every sample is split, and with one and
two threads (the backward splits the channels between threads). Plus gradcheck, non-finite and huge
offsets, and the dispatch (which kernel runs when).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from adaptconv.ops import cpu_deform
from adaptconv.ops import deform as deform_module
from adaptconv.ops.deform import DeformConv2d, ModulatedDeformConv2d

pytestmark = pytest.mark.skipif(not cpu_deform.available(), reason=f"deform CPU kernels: {cpu_deform.status()}")


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def make(
    b,
    c,
    h,
    w,
    o,
    kernel,
    stride,
    padding,
    dilation,
    groups,
    ogroups,
    masked,
    bias=True,
    spread=2.5,
    dtype=torch.float64,
    seed=0,
):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    ho = out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = out_size(w, kw, stride[1], padding[1], dilation[1])
    t = kh * kw
    x = torch.randn(b, c, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(o, c // groups, kh, kw, generator=gen, dtype=dtype)
    bvec = torch.randn(o, generator=gen, dtype=dtype) if bias else None
    # offsets up to ±spread pixels: many taps land between pixels, some partly or wholly outside
    offset = (torch.rand(b, 2 * ogroups * t, ho, wo, generator=gen, dtype=dtype) * 2 - 1) * spread
    mask = torch.rand(b, ogroups * t, ho, wo, generator=gen, dtype=dtype) if masked else None
    return x, offset, mask, weight, bvec


def forward_backward(fn, x, offset, mask, weight, bias, stride, padding, dilation, seed=1):
    """Output and the gradients of (x, offset, mask, weight, bias) for a fixed random output gradient."""
    leaves = [t if t is None else t.detach().clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    x, offset, mask, weight, bias = leaves
    y = fn(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    y.backward(gy)
    return [y] + [None if t is None else t.grad for t in leaves]


def ours(x, offset, weight, bias, stride, padding, dilation, mask):
    return cpu_deform.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)


def assert_same(got, ref, atol, rtol, what):
    names = ["output", "∂x", "∂offset", "∂mask", "∂weight", "∂bias"]
    for name, g, r in zip(names, got, ref):
        assert (g is None) == (r is None), f"{what}: {name} present in one only"
        if g is not None:
            torch.testing.assert_close(g, r, atol=atol, rtol=rtol, msg=lambda m: f"{what}, {name}: {m}")


@pytest.fixture
def tiny_tiles(monkeypatch):
    """Tiles of a few pixels, so every sample is split into several (uneven) tiles."""
    monkeypatch.setattr(cpu_deform, "TILE_BYTES", 1)
    monkeypatch.setattr(
        cpu_deform, "_tiles", lambda pixels, row, size: [(p0, min(7, pixels - p0)) for p0 in range(0, pixels, 7)]
    )


# (kernel, stride, padding, dilation, groups, offset groups): the conformance geometries and more
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, 1),
    ((3, 3), (2, 2), (1, 1), (1, 1), 2, 1),  # conformance's gradient check
    ((3, 3), (2, 2), (0, 0), (2, 2), 2, 2),  # conformance's from_conv geometries
    ((5, 5), (1, 1), (2, 2), (1, 1), 1, 2),
    ((1, 1), (1, 1), (0, 0), (1, 1), 1, 1),
    ((3, 3), (1, 1), (2, 2), (2, 2), 4, 4),
    ((3, 3), (1, 2), (0, 1), (2, 1), 2, 4),  # anisotropic stride, padding, dilation
    ((2, 3), (1, 1), (1, 0), (1, 1), 1, 2),  # non-square, even kernel
    ((3, 1), (2, 1), (1, 0), (1, 1), 4, 1),
]


@pytest.mark.parametrize("masked", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,ogroups", GEOMETRIES)
def test_equals_torchvision_float64(kernel, stride, padding, dilation, groups, ogroups, masked):
    for (h, w), bias in (((7, 6), True), ((5, 9), False)):  # odd, even and non-square sizes
        args = make(2, 4, h, w, 8, kernel, stride, padding, dilation, groups, ogroups, masked, bias)
        geometry = (stride, padding, dilation)
        ref = forward_backward(tv_deform_conv2d, *args, *geometry)
        got = forward_backward(ours, *args, *geometry)
        assert_same(got, ref, 1e-11, 1e-10, f"{h}x{w} bias={bias}")


@pytest.mark.parametrize("threads,split", [(1, "pixels"), (2, "pixels"), (2, "channels")])
@pytest.mark.parametrize("masked", [False, True], ids=["v1", "v2"])
def test_tiles_and_thread_splits(tiny_tiles, monkeypatch, threads, split, masked):
    """Several tiles per sample, split between threads by pixels (each thread its own ∂x plane) or by
    channels (no room for those planes), with channel counts whose thread blocks (whole cache lines,
    8 float64) cut through conv groups and offset groups."""
    if split == "channels":
        monkeypatch.setattr(cpu_deform, "PRIVATE_BYTES", 0)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for c, groups, ogroups in ((24, 3, 2), (20, 1, 5), (40, 2, 4)):
            args = make(2, c, 9, 8, 6, (3, 3), (1, 1), (1, 1), (1, 1), groups, ogroups, masked, seed=c)
            ref = forward_backward(tv_deform_conv2d, *args, (1, 1), (1, 1), (1, 1))
            got = forward_backward(ours, *args, (1, 1), (1, 1), (1, 1))
            assert_same(got, ref, 1e-11, 1e-10, f"C={c} groups={groups} offset groups={ogroups}")
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("masked", [False, True], ids=["v1", "v2"])
def test_equals_torchvision_float32(masked):
    """float32 at a realistic layer (64 channels, several tiles per sample at the default tile size)."""
    args = make(2, 64, 40, 40, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, masked, dtype=torch.float32)
    geometry = ((1, 1), (1, 1), (1, 1))
    assert len(cpu_deform._tiles(40 * 40, 9 * 64, 4)) > 1
    ref = forward_backward(tv_deform_conv2d, *args, *geometry)
    got = forward_backward(ours, *args, *geometry)
    for name, g, r in zip(["output", "∂x", "∂offset", "∂mask", "∂weight", "∂bias"], got, ref):
        if r is not None:  # error relative to the tensor's scale: sums of hundreds of float32 terms
            err = (g - r).abs().max() / r.abs().max()
            assert err < 1e-5, f"{name}: max error {err:.2e} of its largest value"


def test_sampling_points_on_and_beyond_the_border():
    """Integer offsets that put taps exactly on the first/last row and column, one pixel outside,
    and just inside (the corners' validity decides each contribution, as in torchvision)."""
    x, _, mask, weight, bias = make(1, 3, 5, 6, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True)
    values = torch.tensor([-7.0, -2.0, -1.0, -0.5, 0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0])
    gen = torch.Generator().manual_seed(3)
    offset = values[torch.randint(len(values), (1, 18, 5, 6), generator=gen)].double()
    geometry = ((1, 1), (1, 1), (1, 1))
    ref = forward_backward(tv_deform_conv2d, x, offset, mask, weight, bias, *geometry)
    got = forward_backward(ours, x, offset, mask, weight, bias, *geometry)
    assert_same(got, ref, 1e-12, 1e-11, "border offsets")


@pytest.mark.parametrize("masked", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize(
    "stride,padding,dilation,groups,ogroups",
    [((1, 1), (1, 1), (1, 1), 1, 2), ((2, 2), (1, 1), (1, 1), 2, 1), ((1, 1), (0, 2), (2, 1), 2, 2)],
)
def test_gradcheck(stride, padding, dilation, groups, ogroups, masked):
    x, offset, mask, weight, bias = make(
        1, 4, 5, 4, 2, (3, 3), stride, padding, dilation, groups, ogroups, masked, spread=1.3
    )
    offset = offset + 0.01  # keep finite differences away from the kinks at integer coordinates
    inputs = [t.requires_grad_() for t in (x, offset, weight, bias) + ((mask,) if masked else ())]

    def f(x, offset, weight, bias, mask=None):
        return cpu_deform.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_only_some_gradients_needed():
    x, offset, mask, weight, bias = make(2, 4, 6, 6, 4, (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True)
    ref = forward_backward(tv_deform_conv2d, x, offset, mask, weight, bias, (1, 1), (1, 1), (1, 1))
    names = ["x", "offset", "mask", "weight", "bias"]
    for keep in range(5):  # one input requires a gradient at a time
        leaves = [t.detach().clone().requires_grad_(i == keep) for i, t in enumerate((x, offset, mask, weight, bias))]
        y = ours(leaves[0], leaves[1], leaves[3], leaves[4], (1, 1), (1, 1), (1, 1), leaves[2])
        (grad,) = torch.autograd.grad(
            y, leaves[keep], torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        )
        torch.testing.assert_close(grad, ref[1 + keep], atol=1e-11, rtol=1e-10, msg=lambda m: f"∂{names[keep]}: {m}")


def test_non_contiguous_and_channels_last_inputs():
    """A channels-last x, offsets and mask as slices of one side output (as mdeform passes them), a
    non-contiguous weight: the same values and gradients."""
    x, offset, mask, weight, bias = make(2, 4, 7, 7, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True)
    geometry = ((1, 1), (1, 1), (1, 1))
    ref = forward_backward(tv_deform_conv2d, x, offset, mask, weight, bias, *geometry)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    side = torch.cat([offset, mask], 1).requires_grad_()
    wn = weight.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()
    assert not (xc.is_contiguous() or side[:, :18].is_contiguous() or wn.is_contiguous())
    y = ours(xc, side[:, :18], wn, bias, *geometry, side[:, 18:])
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype))
    for got, want in (
        (y, ref[0]),
        (xc.grad, ref[1]),
        (side.grad[:, :18], ref[2]),
        (side.grad[:, 18:], ref[3]),
        (wn.grad, ref[4]),
    ):
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 1e18])
def test_non_finite_and_huge_offsets_read_zero(bad):
    """Straight into the kernel (the operators sanitise first): a point with no corner in the image
    reads 0 and gets no gradient, and nothing is ever converted to an out-of-range index."""
    x, offset, mask, weight, bias = make(1, 4, 6, 6, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True)
    at = (0, 5, 2, 3)  # tap 2's dx at pixel (2, 3)
    bad_offset = offset.clone()
    bad_offset[at] = bad
    far = offset.clone()
    far[at] = -100.0  # far outside: torchvision reads 0 there too
    geometry = ((1, 1), (1, 1), (1, 1))
    ref = forward_backward(tv_deform_conv2d, x, far, mask, weight, bias, *geometry)
    got = forward_backward(ours, x, bad_offset, mask, weight, bias, *geometry)
    assert all(torch.isfinite(g).all() for g in got)
    assert got[2][at] == 0 and got[2][0, 4, 2, 3] == 0 and got[3][0, 2, 2, 3] == 0  # ∂dx, ∂dy, ∂mask of the tap
    assert_same(got, ref, 1e-11, 1e-10, f"offset {bad}")


@pytest.mark.parametrize("grad", [False, True])
def test_non_finite_offsets_are_counted(grad):
    """The kernel counts the NaN/±inf offsets it reads (what lets the operators skip a pass over them),
    in inference and in a graph, over tiles and threads; huge finite ones are not counted."""
    x, offset, mask, weight, bias = make(2, 4, 9, 7, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True)
    offset = offset.detach().clone()
    offset[0, 5, 2, 3], offset[1, 0, 8, 6], offset[1, 7, 0, 0], offset[0, 1, 1, 1] = (
        float("nan"),
        float("inf"),
        float("-inf"),
        1e30,
    )
    found = [-1]
    with torch.set_grad_enabled(grad):
        cpu_deform.deform_conv2d(x.requires_grad_(grad), offset, weight, bias, (1, 1), (1, 1), (1, 1), mask, found)
    assert found == [3]
    cpu_deform.deform_conv2d(
        x, offset.nan_to_num(posinf=0.0, neginf=0.0), weight, bias, (1, 1), (1, 1), (1, 1), mask, found
    )
    assert found == [0]


# --------------------------------------------------------------------------------------------------
# Dispatch
def _forbid_torchvision(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torchvision's kernel ran where the compiled kernel should have")

    monkeypatch.setattr(deform_module, "_tv_deform_conv2d", refuse)


@pytest.mark.parametrize("cls", [DeformConv2d, ModulatedDeformConv2d])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operators_run_the_compiled_kernel(monkeypatch, cls, dtype):
    torch.manual_seed(0)
    op = cls(4, 6, 3, stride=2, padding=1, groups=2, offset_groups=2).to(dtype)
    with torch.no_grad():
        op.offset_conv.weight.normal_(0, 0.3)
        op.offset_conv.bias.uniform_(-1, 1)
    x = torch.randn(2, 4, 9, 8, dtype=dtype, requires_grad=True)
    with cpu_deform.disabled():
        ref = op(x)
        gref = torch.autograd.grad(ref.square().sum(), [x, *op.parameters()])
    _forbid_torchvision(monkeypatch)
    y = op(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *op.parameters()])
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol)
    for g, r in zip(grads, gref):
        torch.testing.assert_close(g, r, atol=tol, rtol=tol)


def test_other_dtypes_and_disabled_use_torchvision(monkeypatch):
    calls = []
    real = deform_module._tv_deform_conv2d
    monkeypatch.setattr(deform_module, "_tv_deform_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    op = DeformConv2d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    op(x)
    assert not calls
    op.half()(x.half())
    assert len(calls) == 1
    with cpu_deform.disabled():
        op.float()(x)
    assert len(calls) == 2
    with cpu_deform.disabled():
        assert cpu_deform.status().startswith("off")
    assert cpu_deform.status().startswith("on")


def test_tiles_cover_every_pixel_once():
    for pixels, row, size in itertools.product((1, 7, 3136, 16384), (9, 576, 4608), (4, 8)):
        tiles = cpu_deform._tiles(pixels, row, size)
        assert tiles[0][0] == 0 and sum(n for _, n in tiles) == pixels
        assert all(p0 + n == q0 for (p0, n), (q0, _) in zip(tiles, tiles[1:]))
        assert max(n for _, n in tiles) * row * size <= max(cpu_deform.TILE_BYTES, row * size)
