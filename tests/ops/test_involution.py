"""Involution (``involution``): checked against explicit loops over pixels and taps in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops import create_op, get_op
from adaptconv.ops.conformance import as_function_of_everything, gradcheck_operator
from adaptconv.ops.involution import Involution2d, involution_groups, involution_input

D = torch.float64


def loop_involution(x, kernels, k, s, p, d):
    """z[b,c,i,q] = Σ_{a,e} H[b, group(c), a·k+e, i, q] · xpad[b, c, i·s + a·d, q·s + e·d], one pixel at a time."""
    b, c = x.shape[:2]
    g, _, ho, wo = kernels.shape[1:]
    xp = F.pad(x, (p, p, p, p))
    z = torch.zeros(b, c, ho, wo, dtype=x.dtype)
    for n, ch, i, q in itertools.product(range(b), range(c), range(ho), range(wo)):
        z[n, ch, i, q] = sum(
            kernels[n, ch // (c // g), a * k + e, i, q] * xp[n, ch, i * s + a * d, q * s + e * d]
            for a in range(k)
            for e in range(k)
        )
    return z


def loop_generator_input(x, k, s, p, d):
    """Mean of the s×s block (clipped to the map) whose corner is each window's centre (replicate padding)."""
    h, w = x.shape[-2:]
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    h1, w1 = h + 2 * p - d * (k - 1), w + 2 * p - d * (k - 1)  # stride-1 grid of window centres
    offs = sorted({(k - 1) // 2 * d, k // 2 * d})  # an even window's centre: mean of its two middle taps

    def centre(r, t):
        return (
            sum(x[:, :, min(max(r + a - p, 0), h - 1), min(max(t + e - p, 0), w - 1)] for a in offs for e in offs)
            / len(offs) ** 2
        )

    out = torch.zeros(*x.shape[:2], ho, wo, dtype=x.dtype)
    for i, q in itertools.product(range(ho), range(wo)):
        cells = [(r, t) for r in range(i * s, min(i * s + s, h1)) for t in range(q * s, min(q * s + s, w1))]
        out[:, :, i, q] = sum(centre(r, t) for r, t in cells) / len(cells)
    return out


def make(cin, cout, k, s=1, p=0, d=1, **kw):
    torch.manual_seed(0)
    op = Involution2d(cin, cout, k, s, p, d, **kw).double()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        if isinstance(op.reduce_norm, nn.BatchNorm2d):
            op.reduce_norm.running_mean.normal_()
            op.reduce_norm.running_var.uniform_(0.5, 2.0)
            op.reduce_norm.weight.normal_()
            op.reduce_norm.bias.normal_()
        if op.bias is not None:
            op.bias.normal_()
    return op.eval()


def test_registered():
    assert get_op("involution") is Involution2d
    assert Involution2d.paper and Involution2d.from_conv_note and not Involution2d.function_preserving
    op = create_op("involution", 32, 32, 7, padding=3)
    assert op.filter_groups == 2 and op.projection is None
    assert op.span.out_channels == 2 * 49 and op.reduce.out_channels == 8
    assert "filter_groups=2" in repr(op)


@pytest.mark.parametrize(
    "channels,gc,expected", [(64, 16, 4), (16, 16, 1), (4, 16, 1), (24, 16, 1), (48, 16, 3), (40, 16, 2), (12, 4, 3)]
)
def test_group_rule(channels, gc, expected):
    assert involution_groups(channels, gc) == expected


@pytest.mark.parametrize(
    "k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 1), (3, 2, 0, 2), (2, 3, 1, 1), (1, 2, 0, 1)]
)
@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
def test_generator_input_is_window_centred_average_pool(k, s, p, d, size):
    x = torch.randn(2, 3, *size, dtype=D)
    got = involution_input(x, (k, k), (s, s), (p, p), (d, d))
    torch.testing.assert_close(got, loop_generator_input(x, k, s, p, d))
    if k % 2 and p * 2 == d * (k - 1):  # the paper's geometry: exactly AvgPool2d(s, s) (ceil for odd sizes)
        torch.testing.assert_close(got, F.avg_pool2d(x, s, s, ceil_mode=True))


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 0, 2), (2, 2, 1, 1)])
def test_matches_loop_reference(k, s, p, d):
    op = make(4, 4, k, s, p, d, group_channels=2)  # G = 2 groups of 2 channels
    x = torch.randn(2, 4, 7, 6, dtype=D)
    kernels = op.kernels(x)
    g = loop_generator_input(x, k, s, p, d)
    bn = op.reduce_norm
    hid = torch.einsum("hc,bcij->bhij", op.reduce.weight[:, :, 0, 0], g)
    hid = (hid - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
    hid = F.relu(hid * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    ker = torch.einsum("oh,bhij->boij", op.span.weight[:, :, 0, 0], hid) + op.span.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(kernels, ker.view(2, 2, k * k, *ker.shape[-2:]))
    expected = loop_involution(x, kernels, k, s, p, d) + op.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(op(x), expected)


def test_projection_and_guide_loop_reference():
    op = make(4, 6, 3, 1, 1, 1, groups=2, guide_channels=2, group_channels=4)
    x, gd = torch.randn(2, 4, 5, 6, dtype=D), torch.randn(2, 2, 5, 6, dtype=D)
    z = loop_involution(x, op.kernels(gd), 3, 1, 1, 1)
    torch.testing.assert_close(op(x, gd), F.conv2d(z, op.projection.weight, op.projection.bias, groups=2))
    assert op.reduce.in_channels == 2  # the kernels read the guide, not x


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 2), (3, 2, 0, 1), (2, 1, 0, 1)])
def test_constant_kernel_is_grouped_depthwise_conv(k, s, p, d):
    """An input-independent kernel (generator output weight zeroed, bias = per-group filters) is F.conv2d
    with groups=C and each group's filter repeated over its channels."""
    op = make(6, 6, k, s, p, d, group_channels=2, bias=False)  # G = 3
    filt = torch.randn(3, k * k, dtype=D)
    with torch.no_grad():
        op.span.weight.zero_()
        op.span.bias.copy_(filt.flatten())
    x = torch.randn(2, 6, 9, 8, dtype=D)
    weight = filt.repeat_interleave(2, dim=0).view(6, 1, k, k)
    torch.testing.assert_close(op(x), F.conv2d(x, weight, None, s, p, d, groups=6))


@pytest.mark.parametrize("k,s,p,d,size", [(1, 1, 0, 1, (7, 8)), (1, 2, 0, 1, (7, 8)), (3, 2, 1, 1, (9, 6))])
def test_from_conv_exact_for_1x1_and_rank_one(k, s, p, d, size):
    conv = nn.Conv2d(4, 6, k, s, p, d, groups=2).double()
    if k > 1:
        with torch.no_grad():
            conv.weight.copy_(torch.randn(6, 2, 1, 1, dtype=D) * torch.randn(1, 1, k, k, dtype=D))
    op = Involution2d.from_conv(conv)
    x = torch.randn(2, 4, *size, dtype=D)
    for mode in ("eval", "train"):
        getattr(op, mode)()
        torch.testing.assert_close(op(x), conv(x))


def test_from_conv_is_the_best_rank_one_fit():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    op = Involution2d.from_conv(conv)
    x = torch.randn(2, 3, 6, 6, dtype=D)
    w = conv.weight.reshape(15, 9)
    u, s, vh = torch.linalg.svd(w)
    fit = (s[0] * torch.outer(u[:, 0], vh[0])).view(5, 3, 3, 3)
    torch.testing.assert_close(op.eval()(x), F.conv2d(x, fit, conv.bias, padding=1))
    assert op.span.weight.requires_grad and op.span.weight.abs().sum() == 0  # adaptive branch live, starts off


@pytest.mark.parametrize(
    "guided,norm,mode", [(False, "batch", "eval"), (True, "batch", "train"), (False, "none", "train")]
)
def test_gradcheck(guided, norm, mode):
    torch.manual_seed(4)
    op = Involution2d(2, 3, 3, 2, 1, guide_channels=2 if guided else None, group_channels=1, norm=norm).double()
    getattr(op, mode)()
    x = torch.randn(2, 2, 5, 5, dtype=D)
    gd = torch.randn(2, 2, 5, 5, dtype=D) if guided else None
    assert gradcheck_operator(op, x, gd, atol=1e-6, rtol=1e-4)
    f, inputs, names = as_function_of_everything(op, x, gd)
    grads = torch.autograd.grad(f(*inputs).square().sum(), inputs)
    for name, g in zip(names, grads):
        assert g.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("k,s,p,d", list(itertools.product((1, 2, 3), (1, 2), (0, 1, 2), (1, 2))))
def test_shape_parity_with_conv(k, s, p, d):
    for h, w in ((9, 10), (8, 7)):
        x = torch.randn(2, 4, h, w)
        ref = nn.Conv2d(4, 6, k, s, p, d)(x).shape
        assert Involution2d(4, 6, k, s, p, d).eval()(x).shape == ref
        assert Involution2d(4, 4, k, s, p, d, groups=2, bias=False).eval()(x).shape[-2:] == ref[-2:]


@pytest.mark.parametrize("padding,d", [("same", 1), ("same", 2), ("valid", 1)])
def test_string_padding(padding, d):
    x = torch.randn(1, 4, 9, 8)
    ref = nn.Conv2d(4, 4, 3, padding=padding, dilation=d)(x).shape
    assert Involution2d(4, 4, 3, padding=padding, dilation=d).eval()(x).shape == ref


def test_batch_independence():
    op = make(4, 6, 3, 2, 1, 1, group_channels=2)
    x = torch.randn(3, 4, 9, 8, dtype=D)
    torch.testing.assert_close(op(x), torch.cat([op(x[i : i + 1]) for i in range(3)]))


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_batch_one_train(norm):
    op = Involution2d(4, 6, 3, 2, 1, norm=norm).train()
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    op(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in op.parameters())


def test_invalid_options():
    with pytest.raises(ValueError, match="group_channels"):
        Involution2d(4, 4, 3, group_channels=0)
    with pytest.raises(ValueError, match="reduction"):
        Involution2d(4, 4, 3, reduction=1.5)
    with pytest.raises(ValueError, match="norm"):
        Involution2d(4, 4, 3, norm="layer")
    with pytest.raises(ValueError, match="projection"):
        Involution2d(4, 6, 3, projection=False)
    with pytest.raises(ValueError, match="projection"):
        Involution2d.from_conv(nn.Conv2d(4, 4, 3), projection=False)
