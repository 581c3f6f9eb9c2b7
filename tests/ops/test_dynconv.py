"""Dynamic convolution (``dynconv``): softmax attention over K kernels, and temperature annealing."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops import create_op, get_op
from adaptconv.ops.conformance import as_function_of_everything, gradcheck_operator
from adaptconv.ops.dynconv import DynamicConv2d, anneal_temperature

GEOMETRY = list(itertools.product((1, 2), (0, 1), (1, 2), (1, 2)))  # stride, padding, dilation, groups


def test_registered():
    assert get_op("dynconv") is DynamicConv2d
    assert DynamicConv2d.guide == "optional" and DynamicConv2d.function_preserving
    assert set(DynamicConv2d.supports) == {"stride", "padding", "dilation", "groups", "bias"}
    assert DynamicConv2d.paper and DynamicConv2d.from_conv_note
    op = create_op("dynconv", 32, 6, 3, num_kernels=3, reduction=4, temperature=10)
    assert op.weight.shape == (3, 6, 32, 3, 3) and op.bias.shape == (3, 6)
    assert op.attention_mlp[0].out_features == 8  # C_adapt // reduction
    assert DynamicConv2d(8, 4, 3, reduction=4).attention_mlp[0].out_features == 4  # at least 4
    guided = DynamicConv2d(3, 4, 3, guide_channels=64, reduction=8)  # sized by the guide's channels
    assert guided.attention_mlp[0].in_features == 64 and guided.attention_mlp[0].out_features == 8
    assert op.temperature == 10.0 and isinstance(op.temperature, float)
    assert "num_kernels=3" in repr(op) and "temperature=10" in repr(op)


@pytest.mark.parametrize("stride,padding,dilation,groups", GEOMETRY)
def test_single_kernel_is_conv(stride, padding, dilation, groups):
    torch.manual_seed(0)
    op = DynamicConv2d(4, 6, 3, stride, padding, dilation, groups, num_kernels=1, temperature=1.0)
    x = torch.randn(3, 4, 8, 9)
    ref = F.conv2d(x, op.weight[0], op.bias[0], stride, padding, dilation, groups)
    torch.testing.assert_close(op(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_infinite_temperature_is_mean_kernel(bias):
    torch.manual_seed(1)
    op = DynamicConv2d(4, 6, 3, padding=1, groups=2, bias=bias, num_kernels=3).double()
    with torch.no_grad():
        op.attention_mlp[2].weight.mul_(20)  # strongly peaked logits
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    op.set_temperature(1.0)
    mean_ref = F.conv2d(x, op.weight.mean(0), None if op.bias is None else op.bias.mean(0), padding=1, groups=2)
    assert not torch.allclose(op(x), mean_ref, atol=1e-3)  # at τ = 1 it is not the mean kernel
    op.set_temperature(1e9)
    torch.testing.assert_close(op.attention(x), torch.full((3, 3), 1 / 3, dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(op(x), mean_ref, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 4)])
def test_per_sample_mixture(stride, padding, dilation, groups):
    """y_b = Σ_k π_{b,k} conv(x_b; W_k, b_k), against a loop over samples and kernels."""
    torch.manual_seed(2)
    op = DynamicConv2d(4, 8, 3, stride, padding, dilation, groups, num_kernels=3, temperature=1.0).double()
    with torch.no_grad():
        op.attention_mlp[0].bias.fill_(0.5)  # keep the hidden ReLUs active
        op.attention_mlp[2].weight.mul_(10)
    x = torch.randn(4, 4, 9, 8, dtype=torch.float64) + torch.randn(4, 4, 1, 1, dtype=torch.float64)
    pi = op.attention(x)
    assert (pi.max(0).values - pi.min(0).values).max() > 1e-3  # really per-sample
    outs = []
    for b in range(4):
        outs.append(
            sum(
                pi[b, k] * F.conv2d(x[b : b + 1], op.weight[k], op.bias[k], stride, padding, dilation, groups)
                for k in range(3)
            )
        )
    torch.testing.assert_close(op(x), torch.cat(outs), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("guided", [False, True])
def test_batch_independence(groups, guided):
    torch.manual_seed(3)
    op = DynamicConv2d(
        4, 4, 3, stride=2, padding=1, groups=groups, temperature=1.0, guide_channels=2 if guided else None
    )
    x1, x2 = torch.randn(2, 4, 9, 9), torch.randn(3, 4, 9, 9)
    g1, g2 = (torch.randn(2, 2, 9, 9), torch.randn(3, 2, 9, 9)) if guided else (None, None)
    both = op(torch.cat([x1, x2]), None if not guided else torch.cat([g1, g2]))
    torch.testing.assert_close(both, torch.cat([op(x1, g1), op(x2, g2)]), atol=1e-5, rtol=1e-5)


def test_attention_is_tempered_softmax_summing_to_one():
    torch.manual_seed(4)
    op = DynamicConv2d(3, 4, 3, num_kernels=5, guide_channels=6).double()
    g = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    logits = op.attention_mlp(g.mean((2, 3)))
    for tau in (30.0, 1.0, 0.5):
        op.set_temperature(tau)
        pi = op.attention(g)
        assert pi.shape == (3, 5) and (pi > 0).all()
        torch.testing.assert_close(pi.sum(1), torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(pi, torch.softmax(logits / tau, 1))


def test_anneal_temperature_on_nested_modules():
    inner = DynamicConv2d(3, 3, 3, padding=1)
    model = nn.Sequential(
        DynamicConv2d(3, 3, 3, padding=1, temperature=5.0),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(3, 3, 1), nn.ModuleList([inner])),
    )
    dyn = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    assert len(dyn) == 2
    for progress, expected in ((0.0, 30.0), (0.5, 15.5), (1.0, 1.0), (3.0, 1.0), (-1.0, 30.0), (0.25, 22.75)):
        tau = anneal_temperature(model, progress)
        assert tau == pytest.approx(expected)
        assert all(m.temperature == pytest.approx(expected) for m in dyn)
    assert anneal_temperature(model, 0.5, start=10.0, end=2.0) == pytest.approx(6.0)
    assert inner.temperature == pytest.approx(6.0)
    # the temperature really drives the attention
    x = torch.randn(2, 3, 5, 5)
    logits = inner.attention_mlp(x.mean((2, 3)))
    torch.testing.assert_close(inner.attention(x), torch.softmax(logits / 6.0, 1))


@pytest.mark.parametrize("stride,padding,dilation,groups", GEOMETRY)
def test_from_conv_exact(stride, padding, dilation, groups):
    torch.manual_seed(5)
    x = torch.randn(2, 4, 9, 10)
    for bias in (True, False):
        conv = nn.Conv2d(4, 6, 3, stride, padding, dilation, groups, bias=bias)
        op = DynamicConv2d.from_conv(conv, num_kernels=3)
        for tau in (30.0, 1.0):
            op.set_temperature(tau)
            torch.testing.assert_close(op(x), conv(x), atol=1e-5, rtol=1e-5)
        assert (op.bias is None) == (not bias)


def test_from_conv_guided_and_dtype():
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    op = DynamicConv2d.from_conv(conv, guide_channels=5, temperature=1.0)
    assert all(p.dtype == torch.float64 for p in op.parameters())
    x, g = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 5, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(op(x, g), conv(x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("guided", [False, True])
def test_gradcheck(guided):
    torch.manual_seed(6)
    op = DynamicConv2d(
        2, 2, 3, padding=1, num_kernels=2, temperature=2.0, guide_channels=3 if guided else None
    ).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    guide = torch.randn(2, 3, 3, 3, dtype=torch.float64) if guided else None
    assert gradcheck_operator(op, x, guide, atol=1e-6, rtol=1e-4)
    f, inputs, names = as_function_of_everything(op, x, guide)
    grads = torch.autograd.grad(f(*inputs).square().sum(), inputs)
    for name, g in zip(names, grads):
        assert g.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("k,s,p,d", list(itertools.product((1, 3, 5), (1, 2), (0, 1, 2), (1, 2))))
def test_shape_parity_with_conv(k, s, p, d):
    for h, w in ((11, 10), (9, 12)):
        x = torch.randn(2, 2, h, w)
        ref = nn.Conv2d(2, 4, k, s, p, d)(x).shape
        assert DynamicConv2d(2, 4, k, s, p, d)(x).shape == ref
        assert DynamicConv2d(2, 4, k, s, p, d, groups=2, bias=False, guide_channels=1)(x, x[:, :1]).shape == ref


def test_batch_one_train_forward_backward():
    torch.manual_seed(7)
    op = DynamicConv2d(3, 4, 3, padding=1, guide_channels=2).train()
    with torch.no_grad():
        op.attention_mlp[0].bias.fill_(0.5)  # no dead hidden ReLU, so the guide gets a gradient
    x = torch.randn(1, 3, 6, 5, requires_grad=True)
    g = torch.randn(1, 2, 6, 5, requires_grad=True)
    op(x, g).sum().backward()
    assert torch.isfinite(x.grad).all() and g.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in op.parameters())


def test_invalid_options():
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="num_kernels"):
            DynamicConv2d(4, 4, 3, num_kernels=bad)
        with pytest.raises(ValueError, match="reduction"):
            DynamicConv2d(4, 4, 3, reduction=bad)
    for bad in (0, -1.0, float("inf"), float("nan"), "30", True):
        with pytest.raises(ValueError, match="temperature"):
            DynamicConv2d(4, 4, 3, temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            DynamicConv2d(4, 4, 3).set_temperature(bad)
    model = nn.Sequential(DynamicConv2d(2, 2, 3))
    with pytest.raises(ValueError, match="start"):
        anneal_temperature(model, 0.5, start=0.0)
    with pytest.raises(ValueError, match="end"):
        anneal_temperature(model, 0.5, end=-1.0)
    with pytest.raises(ValueError, match="progress"):
        anneal_temperature(model, float("nan"))
    assert model[0].temperature == 30.0  # a refused call changes nothing


def test_temperature_is_saved_in_the_state_dict():
    from adaptconv.ops.dynconv import DynamicConv2d

    op = DynamicConv2d(4, 4, 3, padding=1)
    op.set_temperature(3.5)
    fresh = DynamicConv2d(4, 4, 3, padding=1)
    fresh.load_state_dict(op.state_dict())
    assert fresh.temperature == 3.5
