"""CondConv (``condconv``): routed mixtures of expert kernels, checked against plain ``F.conv2d``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops import create_op, get_op
from adaptconv.ops.condconv import CondConv2d, condconv2d, per_sample_conv2d
from adaptconv.ops.conformance import as_function_of_everything, gradcheck_operator

GEOMETRY = list(itertools.product((1, 2), (0, 1), (1, 2), (1, 2)))  # stride, padding, dilation, groups


def logit(p):
    return math.log(p / (1 - p))


def loop_reference(x, routing, experts, expert_bias, stride, padding, dilation, groups):
    """y_b = Σ_i r_{b,i} conv(x_b; W_i, β_i), one sample and one expert at a time."""
    outs = []
    for b in range(x.shape[0]):
        y = 0
        for i in range(experts.shape[0]):
            beta = None if expert_bias is None else expert_bias[i]
            y = y + routing[b, i] * F.conv2d(x[b : b + 1], experts[i], beta, stride, padding, dilation, groups)
        outs.append(y)
    return torch.cat(outs)


def test_registered():
    assert get_op("condconv") is CondConv2d
    assert CondConv2d.guide == "optional" and CondConv2d.function_preserving
    assert set(CondConv2d.supports) == {"stride", "padding", "dilation", "groups", "bias"}
    assert CondConv2d.paper and CondConv2d.from_conv_note
    op = create_op("condconv", 4, 6, 3, num_experts=3, routing="softmax")
    assert op.weight.shape == (3, 6, 4, 3, 3) and op.bias.shape == (3, 6)
    assert "num_experts=3" in repr(op) and "softmax" in repr(op)


@pytest.mark.parametrize("stride,padding,dilation,groups", GEOMETRY)
def test_one_expert_routed_at_one_is_conv(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 7)
    w, b = torch.randn(6, 4 // groups, 3, 3), torch.randn(6)
    ref = F.conv2d(x, w, b, stride, padding, dilation, groups)
    got = condconv2d(x, torch.ones(3, 1), w[None], b[None], stride, padding, dilation, groups)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    got = per_sample_conv2d(x, w.expand(3, *w.shape), b.expand(3, 6), stride, padding, dilation, groups)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_identical_experts_sum_their_routing(bias):
    """Identical experts routed [0.7, 0.2] ⇒ 0.9 × the conv, bias included (functional and module)."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64) if bias else None
    ref = 0.9 * F.conv2d(x, w, b, padding=1, groups=2)
    routing = torch.tensor([[0.7, 0.2]] * 2, dtype=torch.float64)
    got = condconv2d(x, routing, torch.stack([w, w]), None if b is None else torch.stack([b, b]), 1, 1, 1, 2)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    op = CondConv2d(4, 6, 3, padding=1, groups=2, bias=bias, num_experts=2).double()
    with torch.no_grad():
        op.route.weight.zero_()
        op.route.bias.copy_(torch.tensor([logit(0.7), logit(0.2)], dtype=torch.float64))
        op.weight.copy_(torch.stack([w, w]))
        if bias:
            op.bias.copy_(torch.stack([b, b]))
    torch.testing.assert_close(op.routing_weights(x), routing, atol=1e-12, rtol=0)
    torch.testing.assert_close(op(x), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("routing", ["sigmoid", "softmax"])
@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 4), (2, 0, 1, 1)])
def test_per_sample_linearity(routing, stride, padding, dilation, groups):
    torch.manual_seed(2)
    op = CondConv2d(4, 8, 3, stride, padding, dilation, groups, num_experts=3, routing=routing).double()
    with torch.no_grad():
        op.route.weight.mul_(5)  # make routing vary noticeably between samples
    x = torch.randn(4, 4, 9, 8, dtype=torch.float64) + torch.randn(4, 4, 1, 1, dtype=torch.float64)
    r = op.routing_weights(x)
    assert r.shape == (4, 3) and (r >= 0).all() and (r <= 1).all()
    assert (r.max(0).values - r.min(0).values).max() > 1e-3  # really per-sample
    if routing == "sigmoid":
        torch.testing.assert_close(r, torch.sigmoid(x.mean((2, 3)) @ op.route.weight.T + op.route.bias))
    else:
        torch.testing.assert_close(r.sum(1), torch.ones(4, dtype=torch.float64))
    ref = loop_reference(x, r, op.weight, op.bias, stride, padding, dilation, groups)
    torch.testing.assert_close(op(x), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("guided", [False, True])
def test_batch_independence(groups, guided):
    torch.manual_seed(3)
    op = CondConv2d(4, 4, 3, stride=2, padding=1, groups=groups, guide_channels=2 if guided else None)
    x1, x2 = torch.randn(2, 4, 9, 9), torch.randn(3, 4, 9, 9)
    g1, g2 = (torch.randn(2, 2, 9, 9), torch.randn(3, 2, 9, 9)) if guided else (None, None)
    both = op(torch.cat([x1, x2]), None if not guided else torch.cat([g1, g2]))
    torch.testing.assert_close(both, torch.cat([op(x1, g1), op(x2, g2)]), atol=1e-5, rtol=1e-5)


def test_guide_acts_only_through_routing():
    torch.manual_seed(4)
    op = CondConv2d(3, 4, 3, padding=1, num_experts=3, guide_channels=2).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    g = torch.randn(2, 2, 6, 7, dtype=torch.float64)
    y = op(x, g)
    ref = loop_reference(x, op.routing_weights(g), op.weight, op.bias, 1, 1, 1, 1)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    # same global average, different layout ⇒ same routing ⇒ same output
    perm = torch.randperm(6 * 7)
    g_perm = g.flatten(2)[..., perm].view_as(g)
    torch.testing.assert_close(op(x, g_perm), y, atol=1e-10, rtol=1e-10)
    # another guide changes the output; the input is not what routes
    assert not torch.allclose(op(x, g + 1.0), y)
    torch.testing.assert_close(op.routing_weights(g), torch.sigmoid(g.mean((2, 3)) @ op.route.weight.T + op.route.bias))
    with pytest.raises(ValueError):
        op(x)  # a guided op needs its guide


@pytest.mark.parametrize("routing", ["sigmoid", "softmax"])
@pytest.mark.parametrize("stride,padding,dilation,groups", GEOMETRY)
def test_from_conv_exact(routing, stride, padding, dilation, groups):
    torch.manual_seed(5)
    x = torch.randn(2, 4, 9, 10)
    for bias in (True, False):
        conv = nn.Conv2d(4, 6, 3, stride, padding, dilation, groups, bias=bias)
        op = CondConv2d.from_conv(conv, routing=routing, num_experts=3)
        torch.testing.assert_close(op(x), conv(x), atol=1e-5, rtol=1e-5)
        assert (op.bias is None) == (not bias)
        # still content-adaptive after a step: the routing is live, and the experts are not all identical
        assert op.route.weight.abs().sum() == 0 and op.route.weight.requires_grad
    if routing == "sigmoid":
        assert not torch.allclose(op.weight[0], op.weight[1])


def test_from_conv_guided_and_dtype():
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    op = CondConv2d.from_conv(conv, guide_channels=5)
    assert all(p.dtype == torch.float64 for p in op.parameters())
    x, g = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 5, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(op(x, g), conv(x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("routing", ["sigmoid", "softmax"])
def test_gradcheck(guided, routing):
    torch.manual_seed(6)
    op = CondConv2d(2, 2, 3, padding=1, num_experts=2, routing=routing, guide_channels=3 if guided else None).double()
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
        assert CondConv2d(2, 4, k, s, p, d)(x).shape == ref
        assert CondConv2d(2, 4, k, s, p, d, groups=2, bias=False, guide_channels=1)(x, x[:, :1]).shape == ref


def test_batch_one_train_forward_backward():
    op = CondConv2d(3, 4, 3, padding=1, guide_channels=2).train()
    x = torch.randn(1, 3, 6, 5, requires_grad=True)
    g = torch.randn(1, 2, 6, 5, requires_grad=True)
    op(x, g).sum().backward()
    assert torch.isfinite(x.grad).all() and g.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in op.parameters())


def test_invalid_options():
    for bad in (0, -2, 1.5, True, "4", None):
        with pytest.raises(ValueError, match="num_experts"):
            CondConv2d(4, 4, 3, num_experts=bad)
    for bad in ("relu", "Sigmoid", None, 1):
        with pytest.raises(ValueError, match="routing"):
            CondConv2d(4, 4, 3, routing=bad)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="routing"):
        condconv2d(x, torch.ones(3, 2), torch.randn(2, 4, 4, 3, 3))
    with pytest.raises(ValueError, match="expert_bias"):
        condconv2d(x, torch.ones(2, 2), torch.randn(2, 4, 4, 3, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="weight"):
        per_sample_conv2d(x, torch.randn(2, 4, 3, 3, 3))
