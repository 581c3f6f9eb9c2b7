"""The tiled contractions (pac_contraction, paka_contraction, dfn_contraction, acda_contraction, on the
tiling core) against the unfold references.

Every pixel-adaptive layer runs by default without the unfold; ``config.override(implementation="unfold")``
runs the straightforward reference. Here: the two agree (float32 tolerance) on outputs and on the
gradients of inputs, guides and every parameter, over a grid of geometries and options, with tiles
of whole batches, of single samples and of a few rows (``chunk_elements``); the custom autograd
Functions pass gradcheck in float64; and the tiled path is actually lean. The PAC tests run twice
(fixture ``pac_backend``): with the compiled CPU backend (adaptconv.ops.cpu_pac, the default on CPU)
and with it off, i.e. on the PyTorch backend (adaptconv.ops.torch_pac) that runs everywhere else.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from adaptconv.measure.memory import measure_peak_memory
from adaptconv.ops import config, cpu_pac
from adaptconv.ops.acda import AcdaConv2d, acda_conv2d, acda_conv2d_unfold
from adaptconv.ops.acda_contraction import acda_contract
from adaptconv.ops.dfn import DfnConv2d, dynamic_filter2d, dynamic_filter2d_unfold
from adaptconv.ops.dfn_contraction import dynamic_filter
from adaptconv.ops.pac import PacConv2d, PacConvTranspose2d, PacPool2d, pac_conv2d, pac_conv2d_unfold
from adaptconv.ops.pac_contraction import pac_contract, pac_distance
from adaptconv.ops.paka import PakaConv2d, paka_conv2d, paka_conv2d_unfold
from adaptconv.ops.paka_contraction import paka_contract
from adaptconv.ops.tiling import geometry

F32 = dict(rtol=1e-4, atol=1e-5)
#: tile budgets: the whole batch at once, a single sample, a few rows of a sample
CHUNKS = [1 << 20, 300, 40]


def _perturb(module: nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))


def _compare(module: nn.Module, inputs: tuple, chunk: int = 1 << 20, **tol) -> None:
    """Forward and every gradient (inputs and parameters) of the tiled path against the unfold one."""
    tol = tol or F32
    results = []
    for impl in ("unfold", "lean"):
        module.zero_grad(set_to_none=True)
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
        with config.override(implementation=impl, chunk_elements=chunk):
            y = module(*leaves)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
        y.backward(g)
        grads = [t.grad for t in leaves if t is not None] + [p.grad for p in module.parameters()]
        results.append((y.detach(), grads))
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y1, y0, **tol)
    names = [f"input{i}" for i, t in enumerate(inputs) if t is not None] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, g1, g0):
        if a is None and b is None:
            continue
        assert a is not None and b is not None, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.fixture(params=["cpu-kernels", "pytorch"])
def pac_backend(request):
    """PAC's contraction and distance on the compiled CPU backend, then on the PyTorch backend."""
    if request.param == "pytorch":
        with config.override(cpu_kernels=False):
            yield request.param
        return
    if not cpu_pac.available():
        pytest.skip(f"the PAC CPU kernels are {cpu_pac.status()}")
    yield request.param


GEOMETRIES = [  # kernel, stride, padding, dilation, groups
    (3, 1, 1, 1, 1),
    (3, 2, 0, 1, 1),
    (3, 1, 2, 2, 2),
    (5, 2, 3, 1, 1),
    (1, 2, 0, 1, 2),
    (4, 1, 1, 1, 1),
    (2, 2, 1, 2, 2),
    ((3, 5), (1, 2), (1, 2), 1, 1),
]


# --------------------------------------------------------------------------------------------------
# PAC
@pytest.mark.usefixtures("pac_backend")
@pytest.mark.parametrize("k,s,p,d,g", GEOMETRIES)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_pac_guided_matches_unfold(k, s, p, d, g, chunk):
    torch.manual_seed(0)
    op = PacConv2d(4, 6, k, s, p, d, g, guide_channels=3)
    _perturb(op)
    x, guide = torch.randn(2, 4, 9, 8), torch.randn(2, 3, 9, 8)
    _compare(op, (x, guide), chunk)


@pytest.mark.usefixtures("pac_backend")
@pytest.mark.parametrize("kind,normalize", [("gaussian", True), ("inv", False), ("inv", True)])
@pytest.mark.parametrize("k,s,p,d,g", [(3, 1, 1, 1, 1), (3, 2, 1, 1, 2), (4, 1, 2, 1, 1), (3, 1, 2, 2, 1)])
@pytest.mark.parametrize("chunk", [1 << 20, 40])
def test_pac_options_match_unfold(kind, normalize, k, s, p, d, g, chunk):
    torch.manual_seed(1)
    op = PacConv2d(4, 4, k, s, p, d, g, kernel_type=kind, normalize_kernel=normalize)  # self-guided
    _perturb(op, scale=0.1)
    with torch.no_grad():
        op.set_guide_scale(torch.rand(4) * 0.5)
    _compare(op, (torch.randn(2, 4, 8, 9),), chunk)


@pytest.mark.parametrize("k,p", [(3, 1), (4, 1), (5, 2)])
def test_pac_shared_filters_match_unfold(k, p):
    torch.manual_seed(2)
    op = PacConv2d(3, 3, k, padding=p, guide_channels=2, shared_filters=True, normalize_kernel=True)
    _perturb(op)
    _compare(op, (torch.randn(2, 3, 7, 8), torch.randn(2, 2, 7, 8)), 60)


@pytest.mark.usefixtures("pac_backend")
def test_pac_guide_scale_gradient_at_zero_matches_unfold():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    op = PacConv2d.from_conv(conv)
    _compare(op, (torch.randn(2, 3, 8, 8),))


@pytest.mark.parametrize(
    "k,s,p,op_,d,g",
    [
        (3, 2, 1, 1, 1, 1),
        (4, 2, 1, 0, 1, 2),
        (3, 1, 0, 0, 2, 1),
        (5, 3, 1, 2, 1, 1),
        (3, 2, 4, 0, 1, 1),
        (1, 2, 0, 1, 1, 1),
    ],
)
@pytest.mark.usefixtures("pac_backend")
@pytest.mark.parametrize("normalize", [False, True])
def test_pac_transposed_matches_unfold(k, s, p, op_, d, g, normalize):
    torch.manual_seed(3)
    m = PacConvTranspose2d(4, 6, k, s, p, op_, d, g, guide_channels=2, normalize_kernel=normalize)
    _perturb(m)
    x = torch.randn(2, 4, 5, 4)
    ho, wo = m.output_size(5, 4)
    _compare(m, (x, torch.randn(2, 2, ho, wo)), 200)


@pytest.mark.usefixtures("pac_backend")
@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (2, 2, 0, 1), (5, 1, 2, 2), (4, 2, 1, 1)])
@pytest.mark.parametrize("guided", [False, True])
def test_pac_pool_matches_unfold(k, s, p, d, guided):
    torch.manual_seed(4)
    pool = PacPool2d(
        k, s, p, d, channels=None if guided else 3, guide_channels=2 if guided else None, normalize_kernel=not guided
    )
    x = torch.randn(2, 3, 9, 8)
    _compare(pool, (x, torch.randn(2, 2, 9, 8)) if guided else (x,), 50)


@pytest.mark.usefixtures("pac_backend")
def test_pac_functional_default_is_tiled_and_matches_unfold():
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    kernel = torch.rand(2, 1, 9, 5, 4, dtype=torch.float64)
    args = (x, kernel, w, None, (2, 2), (1, 1), (1, 1), 2)
    torch.testing.assert_close(pac_conv2d(*args), pac_conv2d_unfold(*args))
    with config.override(implementation="unfold"):
        torch.testing.assert_close(pac_conv2d(*args), pac_conv2d_unfold(*args), rtol=0, atol=0)


@pytest.mark.usefixtures("pac_backend")
def test_tiny_gaussian_weights_are_flushed_the_same_in_both_paths():
    """K underflowing to subnormals (far-apart 64-channel features) is flushed to 0 in both paths."""
    torch.manual_seed(5)
    op = PacConv2d(64, 8, 3, padding=1)
    x = torch.randn(1, 64, 6, 6) * 3
    kernel = op.adapting_kernel(x)
    assert (kernel == 0).any() and kernel[kernel > 0].min() >= 1e-19
    with config.override(implementation="unfold"):
        torch.testing.assert_close(op.adapting_kernel(x), kernel, **F32)


# --------------------------------------------------------------------------------------------------
# PAKA, DFN, ACDA
@pytest.mark.parametrize("k,s,p,d,g", GEOMETRIES)
@pytest.mark.parametrize("chunk", [1 << 20, 40])
def test_paka_matches_unfold(k, s, p, d, g, chunk):
    torch.manual_seed(6)
    op = PakaConv2d(4, 6, k, s, p, d, g, guide_channels=2, hidden_channels=4)
    _perturb(op)
    _compare(op, (torch.randn(2, 4, 9, 8), torch.randn(2, 2, 9, 8)), chunk)


@pytest.mark.parametrize("k,s,p,d,g", GEOMETRIES)
@pytest.mark.parametrize("chunk", [1 << 20, 40])
def test_dfn_matches_unfold(k, s, p, d, g, chunk):
    torch.manual_seed(7)
    op = DfnConv2d(4, 6, k, s, p, d, g, filter_groups=2, hidden_channels=4, normalize="none")
    _perturb(op)
    _compare(op, (torch.randn(2, 4, 9, 8),), chunk)


@pytest.mark.parametrize("k,s,p,d,g", GEOMETRIES)
@pytest.mark.parametrize("chunk", [1 << 20, 40])
def test_acda_matches_unfold(k, s, p, d, g, chunk):
    torch.manual_seed(8)
    op = AcdaConv2d(4, 6, k, s, p, d, g, guide_channels=2, num_atoms=3, bases_per_scale=3, hidden_channels=4)
    _perturb(op)
    _compare(op, (torch.randn(2, 4, 9, 8), torch.rand(2, 2, 9, 8)), chunk)


def test_functionals_match_their_unfold_references():
    g = torch.Generator().manual_seed(9)
    D = torch.float64
    x = torch.randn(2, 4, 7, 8, generator=g, dtype=D)
    w = torch.randn(6, 4, 3, 3, generator=g, dtype=D)
    ho, wo = 4, 4
    a_c, a_s = torch.randn(2, 4, ho, wo, generator=g, dtype=D), torch.randn(2, 9, ho, wo, generator=g, dtype=D)
    geo = ((2, 2), (1, 1), (1, 1))
    torch.testing.assert_close(paka_conv2d(x, a_c, a_s, w, None, *geo), paka_conv2d_unfold(x, a_c, a_s, w, None, *geo))
    filters = torch.randn(2, 2, 9, ho, wo, generator=g, dtype=D)
    torch.testing.assert_close(
        dynamic_filter2d(x, filters, (3, 3), *geo), dynamic_filter2d_unfold(x, filters, (3, 3), *geo)
    )
    atoms = torch.randn(1, 3, 9, ho, wo, generator=g, dtype=D)  # batch 1 broadcasts
    coef = torch.randn(6, 12, 1, 1, generator=g, dtype=D)
    torch.testing.assert_close(
        acda_conv2d(x, atoms, coef, None, 2, 1, 1), acda_conv2d_unfold(x, atoms, coef, None, 2, 1, 1)
    )


# --------------------------------------------------------------------------------------------------
# gradcheck of the custom autograd Functions (float64)
D = torch.float64


_SEEDS = itertools.count(100)


def _rand(*shape, positive=False):
    g = torch.Generator().manual_seed(next(_SEEDS))
    t = torch.rand(*shape, generator=g, dtype=D) if positive else torch.randn(*shape, generator=g, dtype=D)
    return t.requires_grad_()


GRAD_GEOMETRIES = [((3, 3), (1, 1), (1, 1), (1, 1), 1), ((2, 3), (2, 1), (1, 1), (1, 2), 2)]


@pytest.mark.usefixtures("pac_backend")
@pytest.mark.parametrize("kernel_size,stride,padding,dilation,groups", GRAD_GEOMETRIES)
def test_gradcheck_pac_contract(kernel_size, stride, padding, dilation, groups):
    geom = geometry(kernel_size, stride, padding, dilation)
    ho, wo = geom.out_size(5, 4)
    x, k = _rand(2, 4, 5, 4), _rand(2, geom.taps, ho, wo, positive=True)
    w, b = _rand(4, 4 // groups, *kernel_size), _rand(4)
    for chunk in (1 << 20, 2 * 4 * wo):  # whole batch; two rows of one sample
        with config.override(chunk_elements=chunk):
            assert torch.autograd.gradcheck(lambda *a: pac_contract(*a, geom, groups), (x, k, w, b), fast_mode=True)


@pytest.mark.parametrize(
    "kernel_size,stride,padding,dilation,centre",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1), False),  # the symmetric (paired taps) path
        ((3, 3), (1, 1), (2, 2), (2, 2), False),
        ((2, 3), (2, 1), (1, 0), (1, 1), False),  # the general path, even kernel
        ((3, 3), (1, 1), (1, 1), (1, 1), True),  # an explicit centre (transposed PAC)
    ],
)
@pytest.mark.usefixtures("pac_backend")
def test_gradcheck_pac_distance(kernel_size, stride, padding, dilation, centre):
    geom = geometry(kernel_size, stride, padding, dilation)
    ho, wo = geom.out_size(5, 4)
    guide, scale = _rand(2, 3, 5, 4), _rand(3, positive=True)
    inputs = (guide, scale) + ((_rand(2, 3, ho, wo),) if centre else ())
    for chunk in (1 << 20, 2 * 3 * wo):
        with config.override(chunk_elements=chunk):
            assert torch.autograd.gradcheck(lambda f, s, *c: pac_distance(f, geom, s, *c), inputs, fast_mode=True)


@pytest.mark.parametrize("kernel_size,stride,padding,dilation,groups", GRAD_GEOMETRIES)
def test_gradcheck_dynamic_filter_paka_acda(kernel_size, stride, padding, dilation, groups):
    geom = geometry(kernel_size, stride, padding, dilation)
    ho, wo = geom.out_size(5, 4)
    t = geom.taps
    x = _rand(2, 4, 5, 4)
    filters = _rand(2, 2, t, ho, wo)
    a_c, a_s = _rand(2, 4, ho, wo), _rand(2, t, ho, wo)
    w, b = _rand(4, 4 // groups, *kernel_size), _rand(4)
    atoms, coef = _rand(2, 2, t, ho, wo), _rand(4, 4 // groups * 2, 1, 1)
    for chunk in (1 << 20, 2 * 4 * wo):
        with config.override(chunk_elements=chunk):
            assert torch.autograd.gradcheck(lambda *a: dynamic_filter(*a, geom), (x, filters), fast_mode=True)
            assert torch.autograd.gradcheck(
                lambda *a: paka_contract(*a, geom, groups), (x, a_c, a_s, w, b), fast_mode=True
            )
            assert torch.autograd.gradcheck(
                lambda *a: acda_contract(*a, geom, groups), (x, atoms, coef, b), fast_mode=True
            )


@pytest.mark.usefixtures("pac_backend")
def test_gradcheck_full_jacobian_pac():
    """The full Jacobians (not random projections) of the PAC Functions, with tiles of one row."""
    geom = geometry((3, 3), (1, 1), (1, 1), (1, 1))
    x, k = _rand(1, 2, 3, 2), _rand(1, 9, 3, 2, positive=True)
    w, b = _rand(2, 2, 3, 3), _rand(2)
    guide, scale = _rand(1, 2, 3, 2), _rand(2, positive=True)
    with config.override(chunk_elements=2 * 2):
        assert torch.autograd.gradcheck(lambda *a: pac_contract(*a, geom, 1), (x, k, w, b))
        assert torch.autograd.gradcheck(lambda f, s: pac_distance(f, geom, s), (guide, scale))


# --------------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("pac_backend")
def test_tiled_path_is_lean():
    """Peak memory of a training step: the unfold reference holds B·C·k²·H'·W' several times over; the
    tiled path only tile-sized temporaries (here small tiles, so that they do not hide the difference
    at this small size)."""
    torch.manual_seed(10)
    op = PacConv2d(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 32, 32, requires_grad=True)
    g = torch.randn(2, 16, 32, 32)

    def step(impl):
        def run():
            with config.override(chunk_elements=16 * 128, implementation=impl):  # tiles of 128 pixels
                y = op(x)
                y.backward(g)

        return measure_peak_memory(run, "cpu").peak_bytes

    unfold, tiled = step("unfold"), step("lean")
    taps_bytes = 2 * 16 * 9 * 32 * 32 * 4
    assert unfold > 2 * taps_bytes
    assert tiled < unfold / 4
