"""FLOPs: exact counts for conv and linear layers, deformable convolution against its analytic formula,
uncounted ops listed, every built-in operator fully covered, compiled modules refused; parameters."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import adaptconv
from adaptconv.measure import count_flops, count_parameters, deform_conv2d_flops

BUILTIN_OPS = ("conv", "pac", "paka", "acda", "dfn", "deform", "mdeform", "condconv", "dynconv")


def _out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize(
    "b,c,o,k,s,p,d,g,bias,h,w",
    [
        (2, 8, 16, 3, 1, 1, 1, 1, True, 10, 10),
        (3, 8, 12, 3, 2, 0, 2, 4, False, 11, 13),
        (1, 6, 6, 5, 1, 2, 1, 6, True, 9, 7),  # depthwise
    ],
)
def test_conv2d_flops_exact(b, c, o, k, s, p, d, g, bias, h, w):
    conv = nn.Conv2d(c, o, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    r = count_flops(conv, torch.randn(b, c, h, w))
    expected = 2 * b * o * (c // g) * k * k * _out(h, k, s, p, d) * _out(w, k, s, p, d)
    assert r.flops == expected
    assert r.macs == expected / 2
    assert r.uncounted_ops == {} and r.complete
    assert r.units["flops"].startswith("FLOP") and "FLOP / 2" in r.units["macs"]


@pytest.mark.parametrize("shape,bias", [((5, 32), True), ((5, 32), False), ((2, 7, 32), True)])
def test_linear_flops_exact(shape, bias):
    lin = nn.Linear(32, 24, bias=bias)
    r = count_flops(lin, torch.randn(*shape))
    rows = 1
    for n in shape[:-1]:
        rows *= n
    assert r.flops == 2 * rows * 32 * 24
    assert r.macs * 2 == r.flops
    assert r.complete


def test_training_counts_backward_and_grouped_backward_is_not_overcounted():
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    for groups in (1, 4, 8):
        conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        fwd = count_flops(conv, x).flops
        train = count_flops(conv, x, mode="training")
        # forward + grad_input + grad_weight, each the forward's cost
        assert train.flops == 3 * fwd, groups
        assert train.mode == "training"
    # with groups=1 the groups-aware backward formula agrees with PyTorch's own
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with FlopCounterMode(display=False) as ref:
        conv(x).sum().backward()
    assert (
        count_flops(conv, x, mode="training").by_op["aten.convolution_backward"]
        == ref.get_flop_counts()["Global"][torch.ops.aten.convolution_backward]
    )
    # the input of a first layer does not require grad: only grad_weight is computed
    assert count_flops(conv, x.detach(), mode="training").flops == 2 * count_flops(conv, x).flops


class _Deform(nn.Module):
    def __init__(self, c, o, k, offset_groups, use_mask, groups=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, c // groups, k, k))
        self.k, self.g, self.use_mask = k, offset_groups, use_mask

    def forward(self, x, offset, mask):
        return torchvision.ops.deform_conv2d(x, offset, self.weight, padding=1, mask=mask if self.use_mask else None)


@pytest.mark.parametrize("use_mask,offset_groups,groups", [(False, 1, 1), (True, 2, 1), (True, 1, 2)])
def test_deform_conv2d_matches_analytic_formula(use_mask, offset_groups, groups):
    b, c, o, k, h, w = 2, 8, 6, 3, 9, 7
    m = _Deform(c, o, k, offset_groups, use_mask, groups)
    x = torch.randn(b, c, h, w)
    offset = 0.5 * torch.randn(b, 2 * offset_groups * k * k, h, w)
    mask = torch.rand(b, offset_groups * k * k, h, w)
    r = count_flops(m, (x, offset, mask))
    taps, pix = k * k, b * h * w
    conv = 2 * pix * o * (c // groups) * taps
    sampling = pix * c * taps * (7 + (1 if use_mask else 0)) + pix * offset_groups * taps * 10
    assert r.flops == conv + sampling
    assert r.flops == deform_conv2d_flops((b, c, h, w), m.weight.shape, (b, o, h, w), offset_groups, use_mask)
    assert r.by_op == {"torchvision.deform_conv2d": conv + sampling}
    assert r.complete
    # the training count covers its backward as well, and is larger
    x.requires_grad_(True)
    t = count_flops(m, (x, offset, mask), mode="training")
    assert t.complete and t.by_op["torchvision._deform_conv2d_backward"] > 2 * conv


def test_pac_counts_more_than_the_conv():
    x = torch.randn(2, 8, 12, 12)
    conv = count_flops(adaptconv.create_op("conv", 8, 8, 3, padding=1), x)
    pac = count_flops(adaptconv.create_op("pac", 8, 8, 3, padding=1), x)
    assert pac.flops > conv.flops
    assert pac.by_op["aten.exp"] == 2 * 9 * 12 * 12  # one exp per tap and pixel of the adapting kernel
    assert pac.complete


class _Unfold(nn.Module):
    def forward(self, x):
        return F.unfold(x, 3, padding=1)


def test_unfold_is_free_but_listed():
    r = count_flops(_Unfold(), torch.randn(2, 4, 6, 6))
    assert r.flops == 0 and r.complete
    assert r.free_ops.get("aten.im2col.default") == 1 and r.op_calls["aten.im2col.default"] == 1
    # its backward (col2im) adds overlapping gradients: one add per column element
    t = count_flops(_Unfold(), torch.randn(2, 4, 6, 6, requires_grad=True), mode="training")
    assert t.by_op["aten.col2im"] == 2 * 4 * 9 * 6 * 6


def test_in_place_batched_matmul_is_counted():
    class Acc(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 5, 7))

        def forward(self, a):
            out = torch.zeros(3, 4, 7)
            return out.baddbmm_(a, self.w)

    r = count_flops(Acc(), torch.randn(3, 4, 5))
    assert r.by_op == {"aten.baddbmm_": 2 * 3 * 4 * 5 * 7} and r.complete


def test_an_op_without_formula_is_listed_not_silently_zero(caplog):
    lib = torch.library.Library("adaptconv_measure_test", "FRAGMENT")
    lib.define("mystery(Tensor x) -> Tensor")
    lib.impl("mystery", lambda x: x * 2, "CompositeExplicitAutograd")

    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.ops.adaptconv_measure_test.mystery(self.lin(x))

    with caplog.at_level(logging.WARNING, logger="adaptconv.measure.flops"):
        r = count_flops(Mystery(), torch.randn(3, 4))
    assert r.uncounted_ops == {"adaptconv_measure_test.mystery.default": 1}
    assert not r.complete and r.as_dict()["complete"] is False
    assert r.flops == 2 * 3 * 4 * 4  # what could be counted still is
    assert "mystery" in caplog.text


@pytest.mark.parametrize("name", BUILTIN_OPS)
def test_every_builtin_operator_is_fully_counted(name):
    torch.manual_seed(0)
    op = adaptconv.create_op(name, 8, 8, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    conv_flops = 2 * 2 * 8 * 8 * 9 * 10 * 10
    r = count_flops(op, x)
    assert r.uncounted_ops == {}, r.uncounted_ops
    assert r.flops >= conv_flops * 0.4  # every operator does at least a conv-like amount of work
    json.dumps(r.as_dict())
    t = count_flops(op, x.clone().requires_grad_(True), mode="training")
    assert t.uncounted_ops == {}, t.uncounted_ops
    assert t.flops > 2 * r.flops


@pytest.mark.parametrize("name", ["pac", "paka", "acda", "dfn", "ddf", "involution", "deform", "mdeform"])
def test_compiled_cpu_kernels_do_not_hide_flops(name):
    """The operators' compiled CPU kernels are ctypes calls the dispatcher never sees: counted with them
    on, deform lost its bilinear sampling and ddf half its FLOPs. The count is the same either way, and
    the setting is left as it was."""
    from adaptconv.ops import config

    torch.manual_seed(0)
    op = adaptconv.create_op(name, 8, 8, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    with config.override(cpu_kernels=True):
        on = count_flops(op, x)
        on_train = count_flops(op, x.clone().requires_grad_(True), mode="training")
        assert config.cpu_kernels is True
    with config.override(cpu_kernels=False):
        off = count_flops(op, x)
        off_train = count_flops(op, x.clone().requires_grad_(True), mode="training")
    assert on.flops == off.flops and on.by_op == off.by_op
    assert on_train.flops == off_train.flops


def test_by_module_adds_up_and_names_children():
    r = count_flops(adaptconv.create_op("paka", 8, 8, 3, padding=1), torch.randn(2, 8, 10, 10))
    assert {"channel_branch", "tap_branch", "(rest)"} <= set(r.by_module)
    assert sum(r.by_module.values()) == r.flops
    assert all(v >= 0 for v in r.by_module.values())


def test_training_count_leaves_the_model_untouched():
    op = adaptconv.create_op("acda", 8, 8, 3, padding=1).eval()
    stats = {n: b.clone() for n, b in op.named_buffers()}
    count_flops(op, torch.randn(2, 8, 10, 10), mode="training")
    assert not op.training
    assert all(torch.equal(stats[n], b) for n, b in op.named_buffers())
    assert all(p.grad is None for p in op.parameters())
    count_flops(op.train(), torch.randn(2, 8, 10, 10))
    assert op.training


def test_compiled_modules_are_refused():
    class Fake(nn.Module):  # what torch.compile returns: an OptimizedModule holding _orig_mod
        def __init__(self):
            super().__init__()
            self._orig_mod = nn.Linear(2, 2)

    with pytest.raises(TypeError, match="compile"):
        count_flops(Fake(), torch.randn(1, 2))
    lin = nn.Linear(2, 2)
    lin.forward = torch.compile(lin.forward)
    with pytest.raises(TypeError, match="eager"):
        count_flops(lin, torch.randn(1, 2))
    with pytest.raises(TypeError, match="compile"):
        count_flops(torch.compile(nn.Linear(2, 2)), torch.randn(1, 2))


def test_bad_mode_and_nothing_to_differentiate():
    with pytest.raises(ValueError):
        count_flops(nn.Linear(2, 2), torch.randn(1, 2), mode="train")
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        count_flops(frozen, torch.randn(1, 2), mode="training")


def test_count_parameters():
    m = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    m[0].bias.requires_grad_(False)
    p = count_parameters(m)
    assert (p.total, p.trainable, p.non_trainable) == (55 + 10, 50 + 10, 5)
    assert p.buffers == 5 + 5 + 1  # running mean, running var, num_batches_tracked
    shared = nn.Sequential(m[0], m[0])
    assert count_parameters(shared).total == 55
    assert p.as_dict()["non_trainable"] == 5
