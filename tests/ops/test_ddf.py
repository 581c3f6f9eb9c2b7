"""DDF (``ddf``): decoupled dynamic filters, checked against explicit loops in float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops import config, create_op, get_op
from adaptconv.ops.conformance import as_function_of_everything, gradcheck_operator
from adaptconv.ops.ddf import DdfConv2d, ddf2d, ddf2d_unfold, filter_norm

D = torch.float64


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def loop_ddf(x, ch, sp, k, s, p, d):
    """z[b,c,i,q] = Σ_{a,e} C[b,c,j]·S[b,head(c),j,i,q]·xpad[b,c,i·s+a·d,q·s+e·d], j = a·k+e, pixel by pixel."""
    b, c, h, w = x.shape
    heads = sp.shape[1]
    ho, wo = out_size(h, k, s, p, d), out_size(w, k, s, p, d)
    xp = F.pad(x, (p, p, p, p))
    z = torch.zeros(b, c, ho, wo, dtype=x.dtype)
    for n, m, i, q in itertools.product(range(b), range(c), range(ho), range(wo)):
        z[n, m, i, q] = sum(
            ch[n, m, a * k + e] * sp[n, m // (c // heads), a * k + e, i, q] * xp[n, m, i * s + a * d, q * s + e * d]
            for a in range(k)
            for e in range(k)
        )
    return z


def loop_standardise(v):
    """(v - mean) / (unbiased std + 1e-10) of a 1-D tensor, with the statistics written out."""
    n = v.numel()
    mean = sum(v.tolist()) / n
    std = math.sqrt(sum((u - mean) ** 2 for u in v.tolist()) / (n - 1))
    return (v - mean) / (std + 1e-10)


def test_registered():
    assert get_op("ddf") is DdfConv2d
    assert DdfConv2d.paper and DdfConv2d.from_conv_note and not DdfConv2d.function_preserving
    op = create_op("ddf", 40, 40, 3, padding=1, heads=2)
    assert op.projection is None and op.channel_std.shape == (40, 9) and op.spatial.out_channels == 18
    assert op.channel_mlp[0].out_features == 8 and "heads=2" in repr(op)


@pytest.mark.parametrize(
    "k,s,p,d,heads",
    [(3, 1, 1, 1, 1), (3, 2, 1, 1, 2), (3, 1, 0, 2, 4), (2, 2, 1, 1, 2), (5, 2, 2, 1, 1), (1, 2, 0, 1, 2)],
)
def test_functional_matches_loop(k, s, p, d, heads):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 8, dtype=D)
    ho, wo = out_size(7, k, s, p, d), out_size(8, k, s, p, d)
    ch = torch.randn(2, 4, k * k, dtype=D)
    sp = torch.randn(2, heads, k * k, ho, wo, dtype=D)
    expected = loop_ddf(x, ch, sp, k, s, p, d)
    torch.testing.assert_close(ddf2d(x, ch, sp, (k, k), (s, s), (p, p), (d, d)), expected)
    torch.testing.assert_close(ddf2d_unfold(x, ch, sp, (k, k), (s, s), (p, p), (d, d)), expected)
    with config.override(implementation="unfold"):
        torch.testing.assert_close(ddf2d(x, ch, sp, (k, k), (s, s), (p, p), (d, d)), expected)


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 0, 1), (5, 1, 2, 2), (2, 2, 1, 1)])
def test_unit_spatial_filter_is_per_sample_depthwise_conv(k, s, p, d):
    """S ≡ 1 ⇒ each sample convolved depthwise with its own channel filter."""
    torch.manual_seed(1)
    x = torch.randn(3, 4, 9, 8, dtype=D)
    ch = torch.randn(3, 4, k * k, dtype=D)
    ho, wo = out_size(9, k, s, p, d), out_size(8, k, s, p, d)
    sp = torch.ones(3, 2, k * k, ho, wo, dtype=D)
    expected = torch.cat([F.conv2d(x[b : b + 1], ch[b].view(4, 1, k, k), None, s, p, d, groups=4) for b in range(3)])
    torch.testing.assert_close(ddf2d(x, ch, sp, (k, k), (s, s), (p, p), (d, d)), expected)


@pytest.mark.parametrize("s,p,d", [(1, 1, 1), (2, 0, 2), (2, 1, 1)])
def test_functional_gradcheck(s, p, d):
    """The tap-wise backward (recomputed taps, strided scatter for ∂x) against finite differences."""
    torch.manual_seed(2)
    x = torch.randn(1, 4, 5, 5, dtype=D, requires_grad=True)
    ho, wo = out_size(5, 3, s, p, d), out_size(5, 3, s, p, d)
    ch = torch.randn(1, 4, 9, dtype=D, requires_grad=True)
    sp = torch.randn(1, 2, 9, ho, wo, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ddf2d(*a, (3, 3), (s, s), (p, p), (d, d)), (x, ch, sp))


def test_filter_norm():
    torch.manual_seed(3)
    f = torch.randn(2, 3, 9, 4, dtype=D)
    got = filter_norm(f, 2)
    for b, c, q in itertools.product(range(2), range(3), range(4)):
        torch.testing.assert_close(got[b, c, :, q], loop_standardise(f[b, c, :, q]))
    one = torch.randn(2, 3, 1, 4, dtype=D)
    assert torch.equal(filter_norm(one, 2), one)  # one tap: nothing to standardise
    half = filter_norm(f.half(), 2)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), got, atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (2, 1, 0, 2)])
def test_module_matches_loop_reference(guided, k, s, p, d):
    torch.manual_seed(4)
    op = DdfConv2d(4, 4, k, s, p, d, heads=2, guide_channels=3 if guided else None).double()
    with torch.no_grad():
        op.bias.normal_()
    x = torch.randn(2, 4, 7, 6, dtype=D)
    g = torch.randn(2, 3, 7, 6, dtype=D) if guided else x
    t = k * k
    # channel filter: GAP → Linear → ReLU → Linear, standardised over taps, times the learnt σ
    mlp = op.channel_mlp
    raw_c = mlp[2](F.relu(mlp[0](g.mean((2, 3))))).view(2, 4, t)
    ch = (
        torch.stack([torch.stack([loop_standardise(raw_c[b, c]) for c in range(4)]) for b in range(2)]) * op.channel_std
    )
    # spatial filter: the guide at the window centres (odd k: the centre tap; even k: the mean of the
    # 2×2 middle taps, replicate padding), 1×1 conv, standardised over taps, times √2/k
    ho, wo = out_size(7, k, s, p, d), out_size(6, k, s, p, d)
    gp = F.pad(g, (p, p, p, p), mode="replicate")
    offs = sorted({(k - 1) // 2 * d, k // 2 * d})
    centres = torch.zeros(2, g.shape[1], ho, wo, dtype=D)
    for i, q in itertools.product(range(ho), range(wo)):
        centres[:, :, i, q] = sum(gp[:, :, i * s + a, q * s + e] for a in offs for e in offs) / len(offs) ** 2
    raw_s = torch.einsum("oc,bcij->boij", op.spatial.weight[:, :, 0, 0], centres) + op.spatial.bias.view(1, -1, 1, 1)
    raw_s = raw_s.view(2, 2, t, ho, wo)
    sp = torch.zeros_like(raw_s)
    for b, h, i, q in itertools.product(range(2), range(2), range(ho), range(wo)):
        sp[b, h, :, i, q] = loop_standardise(raw_s[b, h, :, i, q]) * math.sqrt(2) / k
    torch.testing.assert_close(op.channel_filters(g), ch)
    torch.testing.assert_close(op.spatial_filters(g), sp)
    expected = loop_ddf(x, ch, sp, k, s, p, d) + op.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(op(x, g if guided else None), expected)


def test_projection():
    torch.manual_seed(5)
    op = DdfConv2d(4, 6, 3, padding=1, groups=2).double()
    x = torch.randn(2, 4, 5, 5, dtype=D)
    z = ddf2d(x, op.channel_filters(x), op.spatial_filters(x), (3, 3), padding=(1, 1))
    torch.testing.assert_close(op(x), F.conv2d(z, op.projection.weight, op.projection.bias, groups=2))
    assert op.bias is None


def _conv(cin, cout, k, s, p, d, g, weight=None):
    conv = nn.Conv2d(cin, cout, k, s, p, d, g).double()
    if weight is not None:
        with torch.no_grad():
            conv.weight.copy_(weight)
    return conv


@pytest.mark.parametrize("case", ["depthwise", "1x1", "separable", "separable-grouped"])
def test_from_conv_exact_cases(case):
    torch.manual_seed(6)
    if case == "depthwise":
        conv = _conv(4, 4, 3, 2, 1, 1, 4)
    elif case == "1x1":
        conv = _conv(4, 6, 1, 2, 0, 1, 2)
    elif case == "separable":  # W[o,c,:] = P[o,c]·D[c,:]
        conv = _conv(3, 5, 3, 1, 2, 2, 1, torch.randn(5, 3, 1, 1, dtype=D) * torch.randn(1, 3, 3, 3, dtype=D))
    else:
        # output o (group o // 3) reads channel 2·(o // 3) + i through its i-th weight slice
        dw = torch.randn(2, 1, 2, 3, 3, dtype=D).expand(2, 3, 2, 3, 3).reshape(6, 2, 3, 3)
        conv = _conv(4, 6, 3, 1, 1, 1, 2, torch.randn(6, 2, 1, 1, dtype=D) * dw)
    op = DdfConv2d.from_conv(conv)
    assert (op.projection is None) == (case == "depthwise")
    x = torch.randn(2, conv.in_channels, 8, 7, dtype=D)
    for mode in ("eval", "train"):
        getattr(op, mode)()
        torch.testing.assert_close(op(x), conv(x))
        torch.testing.assert_close(op(x * 3 + 1), conv(x * 3 + 1))  # constant filters: not input-dependent yet


def test_from_conv_general_is_the_per_channel_rank_one_fit():
    torch.manual_seed(7)
    conv = _conv(3, 5, 3, 1, 1, 1, 1)
    op = DdfConv2d.from_conv(conv)
    fit = torch.zeros_like(conv.weight)
    for c in range(3):
        u, s, vh = torch.linalg.svd(conv.weight[:, c].reshape(5, 9))
        fit[:, c] = (s[0] * torch.outer(u[:, 0], vh[0])).view(5, 3, 3)
    x = torch.randn(2, 3, 6, 6, dtype=D)
    torch.testing.assert_close(op(x), F.conv2d(x, fit, conv.bias, padding=1))
    assert op.spatial.weight.requires_grad and op.channel_mlp[-1].weight.abs().sum() == 0


@pytest.mark.parametrize("guided", [False, True])
def test_gradcheck(guided):
    torch.manual_seed(8)
    op = DdfConv2d(4, 2, 3, 2, 1, groups=2, heads=2, guide_channels=2 if guided else None).double()
    with torch.no_grad():
        op.channel_mlp[0].bias.uniform_(0.1, 0.5)  # keep the MLP's hidden ReLUs on, so every weight gets a gradient
    x = torch.randn(2, 4, 4, 4, dtype=D)
    g = torch.randn(2, 2, 4, 4, dtype=D) if guided else None
    assert gradcheck_operator(op, x, g, atol=1e-6, rtol=1e-4)
    f, inputs, names = as_function_of_everything(op, x, g)
    grads = torch.autograd.grad(f(*inputs).square().sum(), inputs)
    for name, gr in zip(names, grads):
        assert gr.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("k,s,p,d", list(itertools.product((1, 2, 3), (1, 2), (0, 1, 2), (1, 2))))
def test_shape_parity_with_conv(k, s, p, d):
    for h, w in ((9, 10), (8, 7)):
        x = torch.randn(2, 4, h, w)
        ref = nn.Conv2d(4, 6, k, s, p, d)(x).shape
        assert DdfConv2d(4, 6, k, s, p, d)(x).shape == ref
        assert DdfConv2d(4, 4, k, s, p, d, groups=2, bias=False, heads=2)(x).shape[-2:] == ref[-2:]


@pytest.mark.parametrize("padding,d", [("same", 1), ("same", 2), ("valid", 1)])
def test_string_padding(padding, d):
    x = torch.randn(1, 4, 9, 8)
    assert (
        DdfConv2d(4, 4, 3, padding=padding, dilation=d)(x).shape
        == nn.Conv2d(4, 4, 3, padding=padding, dilation=d)(x).shape
    )


def test_batch_independence_and_batch_one_train():
    torch.manual_seed(9)
    op = DdfConv2d(4, 6, 3, 2, 1, heads=2).double()
    x = torch.randn(3, 4, 9, 8, dtype=D)
    torch.testing.assert_close(op(x), torch.cat([op(x[i : i + 1]) for i in range(3)]))
    op = op.float().train()
    x1 = torch.randn(1, 4, 8, 8, requires_grad=True)
    op(x1).square().mean().backward()
    assert torch.isfinite(x1.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in op.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_on_cpu(dtype):
    torch.manual_seed(10)
    op = DdfConv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    ref = op(x)
    low = op.to(dtype)(x.to(dtype))
    assert low.dtype == dtype
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert err < (2e-2 if dtype == torch.float16 else 5e-2)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="heads"):
        DdfConv2d(4, 4, 3, heads=3)
    with pytest.raises(ValueError, match="se_ratio"):
        DdfConv2d(4, 4, 3, se_ratio=0)
    with pytest.raises(ValueError, match="projection"):
        DdfConv2d(4, 6, 3, projection=False)
    with pytest.raises(ValueError, match="projection"):
        DdfConv2d.from_conv(nn.Conv2d(4, 4, 3), projection=False)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="channel filter"):
        ddf2d(x, torch.randn(2, 4, 4), torch.randn(2, 1, 9, 3, 3), (3, 3))
    with pytest.raises(ValueError, match="spatial filter"):
        ddf2d(x, torch.randn(2, 4, 9), torch.randn(2, 3, 9, 3, 3), (3, 3))
