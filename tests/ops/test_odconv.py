"""ODConv (``odconv``): four attentions over K kernels, checked against per-sample F.conv2d loops."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops import create_op, get_op
from adaptconv.ops.conformance import as_function_of_everything, gradcheck_operator
from adaptconv.ops.odconv import ODConv2d, odconv2d

D = torch.float64
GEOMETRY = [(1, 1, 1, 1), (2, 0, 1, 2), (1, 2, 2, 2), (2, 1, 1, 4)]  # stride, padding, dilation, groups


def loop_reference(x, weight, ca, fa, sa, ka, bias, stride, padding, dilation, groups):
    """y_b = conv(x_b; W_b) + bias, W_b[o,c',a,e] = α_f[o]·α_c[c(o,c')]·α_s[a,e]·Σ_i α_w,i·W_i[o,c',a,e],
    the kernel built one weight at a time."""
    k, o, cpg, kh, kw = weight.shape
    outs = []
    for b in range(x.shape[0]):
        wb = torch.zeros(o, cpg, kh, kw, dtype=x.dtype)
        for n, c, a, e in itertools.product(range(o), range(cpg), range(kh), range(kw)):
            cin = (n // (o // groups)) * cpg + c
            wb[n, c, a, e] = (
                fa[b, n] * ca[b, cin] * sa[b, a * kw + e] * sum(ka[b, i] * weight[i, n, c, a, e] for i in range(k))
            )
        outs.append(F.conv2d(x[b : b + 1], wb, bias, stride, padding, dilation, groups))
    return torch.cat(outs)


def test_registered():
    assert get_op("odconv") is ODConv2d
    assert ODConv2d.paper and ODConv2d.from_conv_note and ODConv2d.function_preserving
    op = create_op("odconv", 64, 32, 3, padding=1, num_kernels=2)
    assert op.weight.shape == (2, 32, 64, 3, 3) and op.bias.shape == (32,)
    assert op.fc.out_features == 16 and op.fc.bias is None and isinstance(op.fc_norm, nn.LayerNorm)
    assert create_op("odconv", 512, 8, 1).fc.out_features == 32
    assert "num_kernels=2" in repr(op)


def test_redundant_heads_are_skipped():
    assert ODConv2d(8, 8, 3, groups=8).filter_fc is None  # depthwise: α_f duplicates α_c
    assert ODConv2d(8, 8, 3, groups=4).filter_fc is not None
    assert ODConv2d(8, 8, 1).spatial_fc is None
    assert ODConv2d(8, 8, 3, num_kernels=1).kernel_fc is None
    assert ODConv2d(8, 8, (1, 3)).spatial_fc.out_features == 3


@pytest.mark.parametrize("stride,padding,dilation,groups", GEOMETRY)
def test_one_kernel_all_attentions_one_is_conv(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 7, dtype=D)
    w, b = torch.randn(1, 6 if groups != 4 else 8, 4 // groups, 3, 3, dtype=D), None
    o = w.shape[1]
    b = torch.randn(o, dtype=D)
    ref = F.conv2d(x, w[0], b, stride, padding, dilation, groups)
    geo = (stride, padding, dilation, groups)
    torch.testing.assert_close(
        odconv2d(x, w, bias=b, stride=stride, padding=padding, dilation=dilation, groups=groups), ref
    )
    ones = (torch.ones(3, 4, dtype=D), torch.ones(3, o, dtype=D), torch.ones(3, 9, dtype=D), torch.ones(3, 1, dtype=D))
    torch.testing.assert_close(odconv2d(x, w, *ones, b, *geo), ref)
    # and the module, with its weight and those attentions
    op = ODConv2d(4, o, 3, *geo, num_kernels=1).double()
    with torch.no_grad():
        op.weight.copy_(w)
        op.bias.copy_(b)
    op.attentions = lambda g: tuple(a[: g.shape[0]] for a in ones[:3]) + (None,)
    torch.testing.assert_close(op(x), ref)


@pytest.mark.parametrize("stride,padding,dilation,groups", GEOMETRY)
def test_functional_matches_loop(stride, padding, dilation, groups):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 7, 6, dtype=D)
    w = torch.randn(3, 8, 4 // groups, 3, 2, dtype=D)  # non-square: catches a transposed spatial attention
    ca, fa = torch.rand(2, 4, dtype=D), torch.rand(2, 8, dtype=D)
    sa, ka = torch.rand(2, 6, dtype=D), torch.rand(2, 3, dtype=D).softmax(1)
    b = torch.randn(8, dtype=D)
    expected = loop_reference(x, w, ca, fa, sa, ka, b, stride, padding, dilation, groups)
    torch.testing.assert_close(odconv2d(x, w, ca, fa, sa, ka, b, stride, padding, dilation, groups), expected)


@pytest.mark.parametrize("norm", ["layer", "none"])
@pytest.mark.parametrize("guided", [False, True])
def test_module_attentions_and_output(norm, guided):
    torch.manual_seed(2)
    op = ODConv2d(
        4,
        6,
        3,
        1,
        1,
        1,
        2,
        num_kernels=3,
        min_channels=5,
        norm=norm,
        guide_channels=3 if guided else None,
        temperature=2.0,
    ).double()
    with torch.no_grad():
        for p in op.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 4, 6, 7, dtype=D)
    g = torch.randn(2, 3, 6, 7, dtype=D) if guided else x
    h = g.mean((2, 3)) @ op.fc.weight.T
    if norm == "layer":
        h = (h - h.mean(1, keepdim=True)) / (h.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        h = h * op.fc_norm.weight + op.fc_norm.bias
    else:
        h = h + op.fc.bias
    h = h.clamp(min=0)

    def head(fc):
        return h @ fc.weight.T + fc.bias

    ca, fa, sa = (torch.sigmoid(head(fc) / 2) for fc in (op.channel_fc, op.filter_fc, op.spatial_fc))
    ka = torch.softmax(head(op.kernel_fc) / 2, dim=1)
    for got, want in zip(op.attentions(g), (ca, fa, sa, ka)):
        torch.testing.assert_close(got, want)
    expected = loop_reference(x, op.weight, ca, fa, sa, ka, op.bias, 1, 1, 1, 2)
    torch.testing.assert_close(op(x, g if guided else None), expected)


def test_temperature():
    op = ODConv2d(4, 4, 3, temperature=30.0)
    assert op.temperature == 30.0 and "tau" in op.state_dict()
    op.set_temperature(1.0)
    assert op.temperature == 1.0
    with pytest.raises(ValueError, match="temperature"):
        op.set_temperature(0)


@pytest.mark.parametrize("random_bias", [False, True])
@pytest.mark.parametrize("stride,padding,dilation,groups", GEOMETRY + [(1, 1, 1, 8)])
@pytest.mark.parametrize("num_kernels", [1, 4])
def test_from_conv_exact(stride, padding, dilation, groups, num_kernels, random_bias, monkeypatch):
    torch.manual_seed(3)
    if random_bias:  # attention heads whose biases differ per channel: the attentions are then not uniform
        from adaptconv.ops import odconv

        init = odconv._init_head

        def init_random_bias(fc):
            init(fc)
            if fc.bias is not None:
                nn.init.normal_(fc.bias)

        monkeypatch.setattr(odconv, "_init_head", init_random_bias)
    conv = nn.Conv2d(8, 8, 3, stride, padding, dilation, groups).double()
    op = ODConv2d.from_conv(conv, num_kernels=num_kernels, temperature=3.0)
    x = torch.randn(2, 8, 9, 8, dtype=D)
    for mode in ("eval", "train"):
        getattr(op, mode)()
        torch.testing.assert_close(op(x), conv(x), atol=1e-12, rtol=1e-10)
    if num_kernels > 1:
        assert not torch.allclose(op.weight[0], op.weight[1])  # the kernels differ, so they can specialise


@pytest.mark.parametrize("k,bias", [(1, True), (3, False)])
def test_from_conv_guided_and_attention_learns(k, bias):
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, k, padding=k // 2, bias=bias).double()
    op = ODConv2d.from_conv(conv, guide_channels=2)
    x, g = torch.randn(2, 4, 6, 6, dtype=D), torch.randn(2, 2, 6, 6, dtype=D)
    torch.testing.assert_close(op(x, g), conv(x), atol=1e-12, rtol=1e-10)
    op(x, g).square().sum().backward()
    assert op.kernel_fc.weight.grad.abs().sum() > 0  # the kernel attention is not stuck at uniform


@pytest.mark.parametrize("guided,norm", [(False, "layer"), (True, "layer"), (False, "none")])
def test_gradcheck(guided, norm):
    torch.manual_seed(5)
    op = ODConv2d(
        2, 4, 3, 2, 1, groups=2, num_kernels=2, min_channels=3, norm=norm, guide_channels=2 if guided else None
    ).double()
    with torch.no_grad():
        for p in op.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(2, 2, 5, 5, dtype=D)
    g = torch.randn(2, 2, 5, 5, dtype=D) if guided else None
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
        assert ODConv2d(4, 6, k, s, p, d)(x).shape == ref
        assert ODConv2d(4, 6, k, s, p, d, groups=2, bias=False, guide_channels=1)(x, x[:, :1]).shape == ref


@pytest.mark.parametrize("padding,d", [("same", 1), ("same", 2), ("valid", 1)])
def test_string_padding(padding, d):
    x = torch.randn(1, 4, 9, 8)
    assert (
        ODConv2d(4, 4, 3, padding=padding, dilation=d)(x).shape
        == nn.Conv2d(4, 4, 3, padding=padding, dilation=d)(x).shape
    )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batch_independence(mode):
    """Per-sample attentions: independent of the rest of the batch even in train mode (BatchNorm is not)."""
    torch.manual_seed(6)
    op = getattr(ODConv2d(4, 6, 3, 2, 1, groups=2).double(), mode)()
    x = torch.randn(3, 4, 9, 8, dtype=D) + torch.randn(3, 4, 1, 1, dtype=D)
    torch.testing.assert_close(op(x), torch.cat([op(x[i : i + 1]) for i in range(3)]))


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_batch_one_train(norm):
    op = ODConv2d(4, 6, 3, padding=1, norm=norm).train()
    x = torch.randn(1, 4, 6, 5, requires_grad=True)
    op(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in op.parameters())


def test_invalid_options():
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="num_kernels"):
            ODConv2d(4, 4, 3, num_kernels=bad)
    with pytest.raises(ValueError, match="reduction"):
        ODConv2d(4, 4, 3, reduction=0)
    with pytest.raises(ValueError, match="min_channels"):
        ODConv2d(4, 4, 3, min_channels=0)
    with pytest.raises(ValueError, match="norm"):
        ODConv2d(4, 4, 3, norm="batch")
    with pytest.raises(ValueError, match="temperature"):
        ODConv2d(4, 4, 3, temperature=-1.0)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="kernel_att"):
        odconv2d(x, torch.randn(2, 4, 4, 3, 3))
    with pytest.raises(ValueError, match="kernel_att"):
        odconv2d(x, torch.randn(2, 4, 4, 3, 3), kernel_att=torch.ones(2, 3))
