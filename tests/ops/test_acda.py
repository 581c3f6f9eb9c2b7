"""ACDA (per-pixel dynamic filter atoms): bases, identities, from_conv, gradients, shapes, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.special import jn_zeros, jv
from torch import nn

from adaptconv.ops.acda import AcdaConv2d, acda_conv2d, fourier_bessel_bases


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise_bn(op: AcdaConv2d, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics (so eval mode is not the identity)."""
    g = _gen(seed)
    with torch.no_grad():
        for bn in (op.coeff_net[1], op.coeff_net[4]):
            dt = bn.weight.dtype
            bn.weight.copy_(1 + 0.3 * torch.randn(bn.weight.shape, generator=g).to(dt))
            bn.bias.copy_(0.3 * torch.randn(bn.bias.shape, generator=g).to(dt))
            bn.running_mean.copy_(0.2 * torch.randn(bn.running_mean.shape, generator=g).to(dt))
            bn.running_var.copy_((0.5 + torch.rand(bn.running_var.shape, generator=g)).to(dt))


# --------------------------------------------------------------------------------------------------
# Fourier–Bessel bases
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("per_scale", [1, 3, 6, 9, 40])
def test_bases_orthonormal_within_each_scale(k, per_scale):
    bases = fourier_bessel_bases(k, per_scale, dtype=torch.float64)
    # the largest scale comes first; the rest are exactly the bases of the kernel two smaller, padded
    smaller = fourier_bessel_bases(k - 2, per_scale, dtype=torch.float64) if k >= 4 else None
    n_top = bases.shape[0] - (smaller.shape[0] if smaller is not None else 0)
    assert n_top >= 1
    top = bases[:n_top].reshape(n_top, -1)
    torch.testing.assert_close(top @ top.T, torch.eye(n_top, dtype=torch.float64), atol=1e-6, rtol=0)
    if smaller is not None:
        torch.testing.assert_close(bases[n_top:], F.pad(smaller, (1, 1, 1, 1)), atol=1e-12, rtol=0)
        assert bases[n_top:, 0, :].abs().max() == 0 and bases[n_top:, :, -1].abs().max() == 0


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7])
def test_first_basis_of_a_scale_is_radially_symmetric(k):
    psi0 = fourier_bessel_bases(k, 6, dtype=torch.float64)[0]
    for variant in (torch.rot90(psi0, 1), torch.rot90(psi0, 2), psi0.flip(0), psi0.flip(1), psi0.T):
        torch.testing.assert_close(variant, psi0, atol=1e-12, rtol=0)
    assert psi0.abs().max() > 0
    # the second and third (J_1 cos θ, J_1 sin θ) are not
    psi1 = fourier_bessel_bases(k, 6, dtype=torch.float64)[1]
    assert (torch.rot90(psi1, 1) - psi1).abs().max() > 1e-3


def test_number_of_bases():
    assert fourier_bessel_bases(1, 6).shape == (1, 1, 1)
    assert fourier_bessel_bases(1, 1).shape == (1, 1, 1)
    assert fourier_bessel_bases(3, 6).shape == (6, 3, 3)
    assert fourier_bessel_bases(3, 9).shape == (9, 3, 3)
    assert fourier_bessel_bases(3, 50).shape == (9, 3, 3)  # capped at m² = 9
    assert fourier_bessel_bases(5, 6).shape == (12, 5, 5)  # scales 5 and 3
    # the 5×5 grid's corners lie outside the unit disc: 21 pixels available, + 9 on the 3×3 scale
    assert fourier_bessel_bases(5, 100).shape == (21 + 9, 5, 5)
    assert fourier_bessel_bases(2, 6).shape == (4, 2, 2)
    assert fourier_bessel_bases(4, 6).shape == (6 + 4, 4, 4)
    # non-square: k = min(kh, kw), windows centred
    b = fourier_bessel_bases((3, 5), 6)
    assert b.shape == (6, 3, 5)
    assert b[:, :, 0].abs().max() == 0 and b[:, :, -1].abs().max() == 0
    torch.testing.assert_close(b[:, :, 1:4], fourier_bessel_bases(3, 6))
    assert fourier_bessel_bases(3, 6).dtype == torch.float32
    op = AcdaConv2d(2, 2, 5)
    assert op.bases.shape == (12, 25) and op.num_bases == 12
    assert "bases" not in op.state_dict()


@pytest.mark.parametrize("k", [3, 5, 7])
def test_first_basis_samples_bessel_j0(k):
    """ψ_0 ∝ J_0(z_{0,1} r) with r normalised by k/2; compare pixel ratios with scipy's J_0."""
    psi0 = fourier_bessel_bases(k, 6, dtype=torch.float64)[0]
    c = k // 2
    z01 = jn_zeros(0, 1)[0]
    assert z01 == pytest.approx(2.404825557695773)
    centre = psi0[c, c].item()
    for dy, dx in [(0, 1), (1, 1), (1, 2), (0, c)]:
        if max(dy, dx) > c:
            continue
        r = math.hypot(dy, dx) / (k / 2)
        expected = jv(0, z01 * r) / jv(0, 0.0) if r <= 1 else 0.0
        assert psi0[c + dy, c + dx].item() / centre == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # corners of a k >= 5 window are outside the disc
    if k >= 5:
        assert psi0[0, 0].item() == 0.0
    # unit norm
    assert psi0.square().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_bases_cache_returns_fresh_tensors():
    a = fourier_bessel_bases(3, 6)
    a.zero_()
    assert fourier_bessel_bases(3, 6).abs().max() > 0


# --------------------------------------------------------------------------------------------------
# Identities of the functional
def _constant_atoms_case(k, stride, padding, dilation, groups, size, seed=0, b=2, c=4, o=6, m=3):
    g = _gen(seed)
    x = torch.randn(b, c, *size, generator=g, dtype=torch.float64)
    d = torch.randn(m, k * k, generator=g, dtype=torch.float64)
    coef = torch.randn(o, c // groups * m, 1, 1, generator=g, dtype=torch.float64)
    bias = torch.randn(o, generator=g, dtype=torch.float64)
    return x, d, coef, bias


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize(
    "stride,padding,dilation,groups",
    [
        (1, 0, 1, 1),
        (1, 1, 1, 2),
        (2, 1, 1, 1),
        (2, 2, 2, 2),
        (1, 2, 2, 1),
        ((1, 2), (2, 0), (2, 1), 2),
    ],
)
@pytest.mark.parametrize("size", [(11, 11), (12, 10)])
def test_constant_atoms_equal_conv2d(k, stride, padding, dilation, groups, size):
    x, d, coef, bias = _constant_atoms_case(k, stride, padding, dilation, groups, size)
    b, c = x.shape[:2]
    o, m = coef.shape[0], d.shape[0]
    ho, wo = F.conv2d(x, torch.zeros(1, c, k, k, dtype=x.dtype), None, stride, padding, dilation).shape[2:]
    atoms = d[None, :, :, None, None].expand(b, m, k * k, ho, wo)
    y = acda_conv2d(x, atoms, coef, bias, stride, padding, dilation, groups)
    # W[o, c] = Σ_m coef[o, c·M + m] D_m
    w = torch.einsum("ocm,mt->oct", coef.reshape(o, c // groups, m), d).reshape(o, c // groups, k, k)
    torch.testing.assert_close(y, F.conv2d(x, w, bias, stride, padding, dilation, groups), atol=1e-10, rtol=0)
    # batch-1 atoms broadcast over the batch
    y1 = acda_conv2d(x, atoms[:1], coef, bias, stride, padding, dilation, groups)
    torch.testing.assert_close(y1, y, atol=1e-12, rtol=0)


def test_constant_atoms_non_square_kernel():
    g = _gen(1)
    x = torch.randn(2, 2, 9, 8, generator=g, dtype=torch.float64)
    d = torch.randn(2, 6, generator=g, dtype=torch.float64)
    coef = torch.randn(3, 4, 1, 1, generator=g, dtype=torch.float64)
    atoms = d[None, :, :, None, None].expand(2, 2, 6, 5, 8)
    y = acda_conv2d(x, atoms, coef, None, (2, 1), (1, 1), 1, 1, kernel_size=(2, 3))
    w = torch.einsum("ocm,mt->oct", coef.reshape(3, 2, 2), d).reshape(3, 2, 2, 3)
    torch.testing.assert_close(y, F.conv2d(x, w, None, (2, 1), (1, 1)), atol=1e-10, rtol=0)


def _explicit_acda(x, atoms, coef, bias, k, stride, padding, dilation, groups):
    """Plain Python loops over b, c, m, p and taps j (zero outside the image)."""
    b_, c_, h, w = x.shape
    _, m_, t_, ho, wo = atoms.shape
    o_ = coef.shape[0]
    z = torch.zeros(b_, c_, m_, ho, wo, dtype=x.dtype)
    for b in range(b_):
        for c in range(c_):
            for m in range(m_):
                for i in range(ho):
                    for jx in range(wo):
                        acc = 0.0
                        for j in range(t_):
                            u, v = divmod(j, k)
                            yy = i * stride - padding + u * dilation
                            xx = jx * stride - padding + v * dilation
                            if 0 <= yy < h and 0 <= xx < w:
                                acc += atoms[b, m, j, i, jx].item() * x[b, c, yy, xx].item()
                        z[b, c, m, i, jx] = acc
    cg, og = c_ // groups, o_ // groups
    y = torch.zeros(b_, o_, ho, wo, dtype=x.dtype)
    for o in range(o_):
        gi = o // og
        for cl in range(cg):
            for m in range(m_):
                y[:, o] += coef[o, cl * m_ + m, 0, 0] * z[:, gi * cg + cl, m]
        if bias is not None:
            y[:, o] += bias[o]
    return y


def test_functional_matches_explicit_loops_with_per_pixel_atoms():
    g = _gen(2)
    k, stride, padding, dilation, groups = 3, 2, 1, 2, 2
    x = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64)
    ho = (6 + 2 - 4 - 1) // 2 + 1
    wo = (5 + 2 - 4 - 1) // 2 + 1
    atoms = torch.randn(2, 2, 9, ho, wo, generator=g, dtype=torch.float64)
    coef = torch.randn(4, 2 * 2, 1, 1, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    y = acda_conv2d(x, atoms, coef, bias, stride, padding, dilation, groups)
    ref = _explicit_acda(x, atoms, coef, bias, k, stride, padding, dilation, groups)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=0)


def test_module_matches_independent_computation():
    """The module's coefficient network, centre sampling and atom expansion, recomputed by hand."""
    torch.manual_seed(3)
    k, stride, padding, dilation = 3, 2, 2, 1
    op = AcdaConv2d(
        2,
        3,
        k,
        stride,
        padding,
        dilation,
        bias=True,
        num_atoms=2,
        bases_per_scale=3,
        hidden_channels=4,
        guide_channels=3,
    ).double()
    _randomise_bn(op)
    op.eval()
    g = _gen(4)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    gd = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)

    def bn(a, layer):
        s = (layer.running_var + layer.eps).sqrt()
        return (a - layer.running_mean[:, None, None]) / s[:, None, None] * layer.weight[:, None, None] + layer.bias[
            :, None, None
        ]

    net = op.coeff_net
    a = torch.tanh(bn(F.conv2d(gd, net[0].weight, padding=1), net[1]))
    a = torch.tanh(bn(F.conv2d(a, net[3].weight, padding=1), net[4]))  # B×(M·L)×H×W, m-major
    ho, wo = op.output_size(5, 6)
    m_, l_ = op.num_atoms, op.num_bases
    atoms = torch.zeros(2, m_, k * k, ho, wo, dtype=torch.float64)
    # the module's float32 bases cast to float64 (they are orthonormal to float32 precision)
    psi = fourier_bessel_bases(k, 3).double().reshape(l_, -1)
    for i in range(ho):
        for j in range(wo):
            # window centre, clamped to the image (the adaptive branch never reads zero padding)
            cy = min(max(i * stride - padding + (k // 2) * dilation, 0), 4)
            cx = min(max(j * stride - padding + (k // 2) * dilation, 0), 5)
            coeffs = a[:, :, cy, cx].reshape(2, m_, l_)
            atoms[:, :, :, i, j] = coeffs @ psi
    torch.testing.assert_close(op.atoms(gd), atoms, atol=1e-10, rtol=0)
    ref = _explicit_acda(x, atoms, op.coef.detach(), op.bias.detach(), k, stride, padding, dilation, 1)
    with torch.no_grad():
        torch.testing.assert_close(op(x, gd), ref, atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------------------
# from_conv
@pytest.mark.parametrize(
    "geom",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, stride=2, padding=1, bias=False),
        dict(kernel_size=3, padding=2, dilation=2, groups=2),
        dict(kernel_size=(3, 3), stride=(2, 1), padding=(1, 0)),
        dict(kernel_size=1),
        dict(kernel_size=2, padding=1),
    ],
)
@pytest.mark.parametrize("guided", [False, True])
def test_from_conv_exact_when_bases_span_all_taps(geom, guided):
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 6, **geom)
    k = conv.kernel_size[0]
    opts = dict(num_atoms=k * k, bases_per_scale=k * k)
    if guided:
        opts["guide_channels"] = 3
    op = AcdaConv2d.from_conv(conv, **opts)
    assert op.num_bases == k * k
    x = torch.randn(2, 4, 9, 8)
    gd = torch.randn(2, 3, 9, 8) if guided else None
    ref = conv(x)
    for mode in ("train", "eval", "train", "eval"):  # eval after train-mode updates of the running stats
        op.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(op(x, gd), ref, atol=1e-5, rtol=1e-5)
    assert (op.bias is None) == (conv.bias is None)


def test_from_conv_follows_dtype_and_keeps_options():
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    op = AcdaConv2d.from_conv(conv, num_atoms=9, bases_per_scale=9, hidden_channels=7)
    assert op.coef.dtype == torch.float64 and op.bases.dtype == torch.float64
    assert op.hidden_channels == 7 and op.padding == (1, 1)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(op(x), conv(x), atol=1e-10, rtol=0)
    assert AcdaConv2d.function_preserving is False


@pytest.mark.parametrize(
    "k,opts",
    [
        (3, {}),  # default: M = 6, L = 6
        (5, {}),  # M = 6 < L = 12
        (5, dict(num_atoms=12)),  # two scales: bases not mutually orthogonal
        (3, dict(num_atoms=5, bases_per_scale=3)),  # M > L: two zero atoms
    ],
)
def test_from_conv_is_least_squares_projection(k, opts):
    torch.manual_seed(6)
    conv = nn.Conv2d(4, 6, k, padding=k // 2, groups=2)
    op = AcdaConv2d.from_conv(conv, **opts).double()
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64)
    m_, l_ = op.num_atoms, op.num_bases
    n = min(m_, l_)
    psi = op.bases  # L×T
    for mode in (True, False):
        op.train(mode)
        with torch.no_grad():
            atoms = op.atoms(x)
            # spatially constant atoms t·ψ_m, t = 1/2, and zero atoms beyond min(M, L)
            d = atoms[0, :, :, 0, 0]
            torch.testing.assert_close(atoms, d[None, :, :, None, None].expand_as(atoms), atol=1e-7, rtol=0)
            torch.testing.assert_close(d[:n], 0.5 * psi[:n], atol=1e-7, rtol=0)
            assert d[n:].abs().max() == 0 if n < m_ else True
            coef = op.coef.reshape(6, 2, m_)
            w_eff = torch.einsum("ocm,mt->oct", coef, d)
            resid = conv.weight.detach().double().flatten(2) - w_eff
            # the residual is orthogonal to the span of the atoms used ...
            assert (resid @ psi[:n].T).abs().max() < 1e-6
            # ... and not zero (the span does not cover all taps), so this is a projection, not a copy
            assert resid.abs().max() > 1e-3
            y = op(x)
            ref = F.conv2d(x, w_eff.reshape(6, 2, k, k), conv.bias.double(), padding=k // 2, groups=2)
            torch.testing.assert_close(y, ref, atol=1e-7, rtol=0)


# --------------------------------------------------------------------------------------------------
# Gradients
def _gradcheck_op(op, x, gd):
    names = [n for n, _ in op.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in op.named_parameters()]
    assert "coef" in names and "coeff_net.0.weight" in names and "coeff_net.4.bias" in names

    def f(x, gd, *ps):
        return torch.func.functional_call(op, dict(zip(names, ps)), (x, gd))

    inputs = (x.requires_grad_(True), gd.requires_grad_(True) if gd is not None else None, *params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_guided(mode):
    torch.manual_seed(7)
    op = AcdaConv2d(
        2,
        2,
        3,
        stride=2,
        padding=1,
        dilation=1,
        groups=2,
        guide_channels=2,
        num_atoms=2,
        bases_per_scale=2,
        hidden_channels=3,
    ).double()
    _randomise_bn(op)
    op.train(mode == "train")
    g = _gen(8)
    x = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64)
    gd = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64)
    _gradcheck_op(op, x, gd)


def test_gradcheck_self_guided():
    torch.manual_seed(9)
    op = AcdaConv2d(2, 3, 2, padding=1, dilation=2, num_atoms=2, bases_per_scale=2, hidden_channels=2).double()
    _randomise_bn(op)
    x = torch.randn(2, 2, 4, 4, generator=_gen(10), dtype=torch.float64)
    _gradcheck_op(op, x, None)


# --------------------------------------------------------------------------------------------------
# Shapes, batches, errors
def test_output_shape_matches_conv2d():
    checked = 0
    for k, s, p, d in itertools.product((1, 3, 5), (1, 2), (0, 1, 2), (1, 2)):
        op = AcdaConv2d(4, 6, k, s, p, d, groups=2, num_atoms=2, bases_per_scale=2, hidden_channels=4)
        ref = nn.Conv2d(4, 6, k, s, p, d, groups=2)
        for size in ((7, 8), (8, 7), (6, 6), (5, 9)):
            if any(n + 2 * p < d * (k - 1) + 1 for n in size):
                continue
            x = torch.randn(2, 4, *size)
            with torch.no_grad():
                assert op(x).shape == ref(x).shape, (k, s, p, d, size)
            checked += 1
    assert checked > 100


def test_batch_independence_in_eval_mode():
    torch.manual_seed(11)
    op = AcdaConv2d(3, 4, 3, padding=1, guide_channels=2)
    _randomise_bn(op)
    op.eval()
    x, gd = torch.randn(3, 3, 6, 7), torch.randn(3, 2, 6, 7)
    with torch.no_grad():
        full = op(x, gd)
        parts = torch.cat([op(x[i : i + 1], gd[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(full, parts, atol=1e-5, rtol=1e-5)


def test_batch_size_one_train_forward_backward():
    op = AcdaConv2d(3, 4, 3, padding=1)
    op.train()
    x = torch.randn(1, 3, 5, 6, requires_grad=True)
    y = op(x)
    assert y.shape == (1, 4, 5, 6)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in op.parameters())
    # even a 1×1 map at batch 1 (no batch statistics) does not crash
    y = op(torch.randn(1, 3, 1, 1))
    y.sum().backward()
    assert y.shape == (1, 4, 1, 1)


@pytest.mark.parametrize(
    "option,value",
    [
        ("num_atoms", 0),
        ("num_atoms", -2),
        ("num_atoms", 2.5),
        ("num_atoms", True),
        ("bases_per_scale", 0),
        ("bases_per_scale", "6"),
        ("hidden_channels", 0),
        ("hidden_channels", 1.0),
    ],
)
def test_invalid_options_raise(option, value):
    with pytest.raises(ValueError, match=option):
        AcdaConv2d(2, 2, 3, **{option: value})


def test_functional_rejects_bad_shapes():
    x = torch.randn(1, 2, 5, 5)
    atoms = torch.randn(1, 2, 9, 3, 3)
    coef = torch.randn(3, 4, 1, 1)
    acda_conv2d(x, atoms, coef)
    with pytest.raises(ValueError, match="atoms"):
        acda_conv2d(x, atoms[..., :2], coef)
    with pytest.raises(ValueError, match="coef"):
        acda_conv2d(x, atoms, coef[:, :3])
    with pytest.raises(ValueError, match="kernel_size"):
        acda_conv2d(x, torch.randn(1, 2, 6, 3, 4), coef)
    with pytest.raises(ValueError, match="num_atoms|bases_per_scale"):
        fourier_bessel_bases(3, 0)


def test_metadata_and_repr():
    assert AcdaConv2d.name == "acda"
    assert AcdaConv2d.guide == "optional"
    assert AcdaConv2d.supports == frozenset({"stride", "padding", "dilation", "groups", "bias"})
    assert AcdaConv2d.from_conv_note
    op = AcdaConv2d(2, 2, 3, num_atoms=4, bases_per_scale=5, guide_channels=1)
    r = repr(op)
    assert "num_atoms=4" in r and "bases_per_scale=5" in r and "guide_channels=1" in r
    assert op.hidden_channels == max(16, 4 * 5 // 2)
