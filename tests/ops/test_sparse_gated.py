"""Spatially sparse gated convolution (``sparse_gated``): identities against plain ``F.conv2d``, the
sparse gather/scatter path against the dense masked one, the Gumbel straight-through mask and the
sparsity loss."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops import create_op, get_op
from adaptconv.ops.conformance import gradcheck_operator
from adaptconv.ops.sparse_gated import (
    SparseGatedConv2d,
    dense_masked_conv2d,
    sparse_masked_conv2d,
    tile_activity,
    tiled_masked_conv2d,
)

# kernel, stride, padding, dilation, groups
GEOMETRY = [
    (3, 1, 1, 1, 1),
    (3, 2, 1, 1, 2),
    (3, 1, 2, 2, 1),
    (3, 2, 0, 1, 4),
    (2, 1, 1, 1, 1),
    (1, 2, 0, 1, 2),
    (5, 1, 2, 1, 1),
    (3, 1, 0, 2, 2),
]


def set_mask_logit(op: SparseGatedConv2d, logit: float) -> None:
    """A constant mask logit: all pixels on (logit ≥ 0) or off (< 0) in eval mode."""
    with torch.no_grad():
        op.mask_unit.weight.zero_()
        op.mask_unit.bias.fill_(logit)


def eval_both_paths(op, x, guide=None):
    """(pixel path, tile path, dense masked path) outputs of an eval-mode op."""
    op.eval()
    saved, outs = op.sparse_path, []
    for path in ("pixels", "tiles"):
        op.sparse_path = path
        with torch.no_grad():
            outs.append(op(x, guide))
    op.sparse_path = saved
    outs.append(op(x, guide).detach())  # grad enabled ⇒ the dense masked path
    return outs


def clustered_mask(shape, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """0/1 blobs (what a learned mask looks like): a smooth random field thresholded at its quantile."""
    b, h, w = shape
    z = F.interpolate(torch.randn(b, 1, 3, 3, generator=gen, dtype=torch.float64), size=(h, w), mode="bilinear")
    thr = torch.quantile(z.flatten(1), 1 - fraction, dim=1).view(b, 1, 1, 1)
    return (z >= thr).double()


def test_registered_and_options():
    assert get_op("sparse_gated") is SparseGatedConv2d
    assert SparseGatedConv2d.guide == "optional" and not SparseGatedConv2d.function_preserving
    assert SparseGatedConv2d.paper and "eval" in SparseGatedConv2d.from_conv_note
    op = create_op("sparse_gated", 8, 8, 3, padding=1, residual=True, budget=0.25, sparsity_weight=2.0)
    assert "residual=True" in repr(op) and "budget=0.25" in repr(op) and op.weight.shape == (8, 8, 3, 3)
    for bad in (
        dict(budget=1.5),
        dict(sparsity_weight=-1),
        dict(temperature=0),
        dict(dense_above=2),
        dict(init_active_logit=-1),
        dict(sparse_path="blocks"),
        dict(tile_size=0),
        dict(block_size=0),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SparseGatedConv2d(4, 4, 3, **bad)


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((4, 6, 3), dict(padding=1)),
        ((4, 4, 3), dict(padding=1, stride=2)),
        ((4, 4, 3), dict(padding=0)),
        ((4, 4, 3), dict(padding=1, dilation=2)),
    ],
)
def test_residual_needs_same_shape_and_names_it(args, kwargs):
    with pytest.raises(ValueError, match=r"residual=True .*in_channels=4 → out_channels=\d.*stride=.*padding="):
        SparseGatedConv2d(*args, residual=True, **kwargs)


@pytest.mark.parametrize("k,stride,padding,dilation,groups", GEOMETRY)
@pytest.mark.parametrize("bias", [True, False])
def test_all_ones_mask_is_the_dense_conv(k, stride, padding, dilation, groups, bias):
    torch.manual_seed(0)
    op = SparseGatedConv2d(4, 8, k, stride, padding, dilation, groups, bias, dense_above=1.0).double()
    set_mask_logit(op, 2.0)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    ref = F.conv2d(x, op.weight, op.bias, stride, padding, dilation, groups)
    for got in eval_both_paths(op, x):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    assert op.active_fraction() == 1.0


@pytest.mark.parametrize("k,stride,padding,dilation,groups", GEOMETRY)
def test_all_zeros_mask_gives_zeros(k, stride, padding, dilation, groups):
    torch.manual_seed(1)
    op = SparseGatedConv2d(4, 8, k, stride, padding, dilation, groups, dense_above=1.0).double()
    set_mask_logit(op, -2.0)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    for got in eval_both_paths(op, x):
        assert got.shape == F.conv2d(x, op.weight, None, stride, padding, dilation, groups).shape
        assert torch.count_nonzero(got) == 0
    assert op.active_fraction() == 0.0


@pytest.mark.parametrize("k,dilation,groups", [(3, 1, 1), (3, 2, 2), (5, 1, 4), (1, 1, 1)])
def test_residual_identities(k, dilation, groups):
    """Residual form: all-ones mask ⇒ the dense block x + conv(x); all-zeros ⇒ the identity."""
    torch.manual_seed(2)
    op = SparseGatedConv2d(
        8, 8, k, padding=dilation * (k - 1) // 2, dilation=dilation, groups=groups, residual=True, dense_above=1.0
    ).double()
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    set_mask_logit(op, 1.0)
    ref = x + F.conv2d(x, op.weight, op.bias, 1, dilation * (k - 1) // 2, dilation, groups)
    for got in eval_both_paths(op, x):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    set_mask_logit(op, -1.0)
    for got in eval_both_paths(op, x):
        assert torch.equal(got, x)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("k,stride,padding,dilation,groups", GEOMETRY)
def test_sparse_path_equals_dense_masked_path(fraction, k, stride, padding, dilation, groups):
    """The gather/scatter path against an independent reference, F.conv2d(x)·m (float64, random masks)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 10, 9, dtype=torch.float64, generator=gen)
    w = torch.randn(8, 4 // groups, k, k, dtype=torch.float64, generator=gen)
    b = torch.randn(8, dtype=torch.float64, generator=gen)
    full = F.conv2d(x, w, b, stride, padding, dilation, groups)
    mask = (torch.rand(3, 1, *full.shape[2:], generator=gen, dtype=torch.float64) < fraction).double()
    assert 0 < mask.mean() < 1
    for bias in (b, None):
        ref = F.conv2d(x, w, bias, stride, padding, dilation, groups) * mask
        got = sparse_masked_conv2d(x, mask, w, bias, (stride,) * 2, (padding,) * 2, (dilation,) * 2, groups)
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(dense_masked_conv2d(x, mask, w, bias, stride, padding, dilation, groups), ref)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_sparse_residual_equals_reference(fraction):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 8, 11, dtype=torch.float64, generator=gen)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64, generator=gen)
    b = torch.randn(6, dtype=torch.float64, generator=gen)
    mask = (torch.rand(2, 1, 8, 11, generator=gen, dtype=torch.float64) < fraction).double()
    ref = x + F.conv2d(x, w, b, 1, 1, 1, 2) * mask
    got = sparse_masked_conv2d(x, mask, w, b, (1, 1), (1, 1), (1, 1), 2, residual=True)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    assert torch.equal(x, x.clone())  # the input is not modified in place


@pytest.mark.parametrize("guided", [False, True])
def test_module_eval_mask_is_logit_at_least_zero(guided):
    """Eval: m = [w·guide + b ≥ 0] at the output pixel (stride 1: the pixel itself), both paths agree."""
    torch.manual_seed(5)
    op = SparseGatedConv2d(4, 6, 3, padding=1, guide_channels=3 if guided else None, dense_above=1.0).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    g = torch.randn(2, 3, 8, 8, dtype=torch.float64) if guided else None
    src = g if guided else x
    logit = torch.einsum("bchw,c->bhw", src, op.mask_unit.weight.view(-1)) + op.mask_unit.bias
    m = (logit >= 0).double().unsqueeze(1)
    assert 0.1 < m.mean() < 0.9
    ref = F.conv2d(x, op.weight, op.bias, padding=1) * m
    for got in eval_both_paths(op, x, g):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    assert op.active_fraction() == pytest.approx(float(m.mean()))


def test_strided_mask_is_at_the_output_resolution():
    torch.manual_seed(6)
    op = SparseGatedConv2d(4, 6, 3, stride=2, padding=1).eval()
    x = torch.randn(2, 4, 9, 9)
    assert op.mask_logits(x).shape == (2, 1, 5, 5)
    # stride 2, odd kernel, padding 1: window centres are input pixels (2i, 2j)
    unit = F.conv2d(x, op.mask_unit.weight, op.mask_unit.bias)
    torch.testing.assert_close(op.mask_logits(x), unit[:, :, ::2, ::2])


def test_dense_above_and_sparse_path_choose_the_path(monkeypatch):
    import adaptconv.ops.sparse_gated as sg

    calls = []
    for name in ("sparse_masked_conv2d", "tiled_masked_conv2d"):
        real = getattr(sg, name)
        monkeypatch.setattr(sg, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    op = SparseGatedConv2d(4, 4, 3, padding=1, dense_above=0.5, sparse_path="pixels").eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        set_mask_logit(op, 1.0)
        op(x)  # all active > 0.5 ⇒ dense
        assert calls == []
        set_mask_logit(op, -1.0)
        op(x)
        assert calls == ["sparse_masked_conv2d"]
        op.sparse_path = "tiles"
        op(x)
        assert calls[-1] == "tiled_masked_conv2d"
        op.sparse_inference = False
        op(x)
        assert len(calls) == 2


def test_auto_path_follows_the_cost_model():
    """Clustered masks ⇒ tiles; scattered pixels at low density ⇒ pixels; (nearly) all on ⇒ dense."""
    gen = torch.Generator().manual_seed(20)
    op = SparseGatedConv2d(4, 4, 3, padding=1).eval()
    blobs = clustered_mask((2, 64, 64), 0.25, gen)
    assert tile_activity(blobs, 8).double().mean() < 0.5
    assert op.inference_path(blobs) == "tiles"
    scattered = (torch.rand(2, 1, 64, 64, generator=gen) < 0.1).double()
    assert tile_activity(scattered, 8).all()
    assert op.inference_path(scattered) == "pixels"
    assert op.inference_path(torch.ones(2, 1, 64, 64)) == "dense"
    assert op.inference_path((torch.rand(2, 1, 64, 64, generator=gen) < 0.5).double()) == "dense"


def test_training_mask_is_gumbel_straight_through_and_seeded():
    torch.manual_seed(7)
    op = SparseGatedConv2d(4, 6, 3, padding=1).double().train()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    torch.manual_seed(11)
    y1 = op(x)
    m1 = op._last.mask.detach()
    torch.manual_seed(11)
    y2 = op(x)
    assert torch.equal(y1, y2)  # noise from the global RNG: a seeded run reproduces
    assert set(m1.unique().tolist()) <= {0.0, 1.0} and 0 < m1.mean() < 1
    torch.manual_seed(12)
    op(x)
    assert not torch.equal(op._last.mask, m1)  # … and it is random
    # the train-mode noise is Logistic(0,1): with a logit of 2, P(off) = sigmoid(-2)
    set_mask_logit(op, 2.0)
    big = torch.randn(4, 4, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        op(big)
    assert op.active_fraction() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=0.01)


def test_straight_through_gradient_reaches_the_mask_unit():
    """Forward value is the hard mask; the gradient is that of the soft Gumbel-sigmoid (τ = 0.5)."""
    torch.manual_seed(8)
    op = SparseGatedConv2d(4, 6, 3, padding=1, temperature=0.5).double().train()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    upstream = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    torch.manual_seed(13)
    (op(x) * upstream).sum().backward()
    # Independent reference: the same uniform draw, the soft mask, and autograd through it.
    logits = F.conv2d(x, op.mask_unit.weight, op.mask_unit.bias)
    torch.manual_seed(13)
    u = torch.rand(logits.shape, dtype=torch.float32).clamp(1e-6, 1 - 1e-6).double()
    soft = torch.sigmoid((logits + u.log() - (1 - u).log()) / 0.5)
    hard = (soft >= 0.5).double()
    conv = F.conv2d(x, op.weight, op.bias, padding=1).detach()
    torch.testing.assert_close(op._last.mask.detach(), hard)
    gw, gb = torch.autograd.grad(
        (soft * (conv * upstream).sum(1, keepdim=True)).sum(), [op.mask_unit.weight, op.mask_unit.bias]
    )
    assert gb.abs().item() > 0
    torch.testing.assert_close(op.mask_unit.weight.grad, gw, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(op.mask_unit.bias.grad, gb, atol=1e-10, rtol=1e-10)
    # the conv weight sees the hard mask only
    (gconv,) = torch.autograd.grad((F.conv2d(x, op.weight, op.bias, padding=1) * hard * upstream).sum(), [op.weight])
    torch.testing.assert_close(op.weight.grad, gconv, atol=1e-10, rtol=1e-10)


def test_sparsity_loss_value():
    torch.manual_seed(9)
    op = SparseGatedConv2d(4, 6, 3, padding=1, budget=0.3, sparsity_weight=2.5).eval()
    assert op.auxiliary_loss().item() == 0.0  # before any forward
    x = torch.randn(2, 4, 8, 8)
    op(x)
    frac = float((op.mask_logits(x) >= 0).float().mean())
    assert op.auxiliary_loss().item() == pytest.approx(2.5 * (frac - 0.3) ** 2, rel=1e-4)
    assert SparseGatedConv2d(4, 6, 3, budget=None).auxiliary_loss().item() == 0.0


def test_sparsity_loss_pulls_the_active_fraction_to_the_budget():
    """From_conv starts with every pixel active; minimising the sparsity loss alone drives the
    fraction (train and eval) to the budget."""
    torch.manual_seed(10)
    op = SparseGatedConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1), budget=0.3, sparsity_weight=1.0).train()
    opt = torch.optim.Adam(op.mask_unit.parameters(), lr=0.1)
    x = torch.randn(4, 8, 16, 16)
    fractions = []
    for _ in range(200):
        op(x)
        loss = op.auxiliary_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        fractions.append(op.active_fraction())
    assert fractions[0] > 0.9
    assert abs(sum(fractions[-20:]) / 20 - 0.3) < 0.05
    op.eval()
    with torch.no_grad():
        op(x)
    assert abs(op.active_fraction() - 0.3) < 0.15


@pytest.mark.parametrize("residual", [False, True])
def test_gradcheck_with_the_eval_mask(residual):
    """Eval mode fixes the mask (deterministic, no Gumbel noise): gradcheck of the dense masked path in
    input, guide and every parameter (the mask unit's gradient is zero in eval, as is the numerical one)."""
    torch.manual_seed(11)
    kw = dict(padding=1, groups=2) if residual else dict(stride=2, padding=1, dilation=1, groups=2)
    op = SparseGatedConv2d(4, 4, 3, residual=residual, guide_channels=2, **kw).double().eval()
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    g = torch.randn(2, 2, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        op.mask_unit.bias.zero_()  # about half the pixels on
    assert 0 < (op.mask_logits(g) >= 0).double().mean() < 1
    assert gradcheck_operator(op, x, g)


@pytest.mark.parametrize("k,stride,padding,dilation,groups", GEOMETRY)
def test_from_conv_is_exact_in_eval(k, stride, padding, dilation, groups):
    torch.manual_seed(12)
    conv = nn.Conv2d(4, 8, k, stride, padding, dilation, groups).double()
    op = SparseGatedConv2d.from_conv(conv, dense_above=1.0)
    assert all(p.dtype == torch.float64 for p in op.parameters())
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    for got in eval_both_paths(op, x):
        torch.testing.assert_close(got, conv(x), atol=1e-12, rtol=1e-12)
    op.train()
    with torch.no_grad():
        op(torch.randn(8, 4, 32, 32, dtype=torch.float64))
    assert 0.9 < op.active_fraction() < 1.0  # training noise: about sigmoid(3) ≈ 95% active


def test_copy_and_save_after_a_training_forward():
    """The trial deep-copies trained models (measurements): the last mask inside an autograd graph
    must not break that, nor torch.save."""
    op = SparseGatedConv2d(4, 4, 3, padding=1).train()
    op(torch.randn(1, 4, 6, 6)).sum()
    twin = copy.deepcopy(op)
    assert twin.active_fraction() is None and op.active_fraction() is not None
    buf = io.BytesIO()
    torch.save(op, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).active_fraction() is None


def test_low_precision_sparse_path():
    torch.manual_seed(13)
    op = SparseGatedConv2d(8, 8, 3, padding=1, dense_above=1.0).eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        ref = op(x)
        m = op._last.mask
        low = sparse_masked_conv2d(
            x.bfloat16(), m.bfloat16(), op.weight.bfloat16(), op.bias.bfloat16(), (1, 1), (1, 1), (1, 1), 1
        )
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() / ref.abs().max() < 5e-2


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("k,stride,padding,dilation,groups", GEOMETRY)
def test_tile_path_equals_dense_masked_path(kind, fraction, k, stride, padding, dilation, groups):
    """The tile path against F.conv2d(x)·m (float64), tiles of 3 and 4 (partial edge tiles)."""
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(3, 4, 13, 11, dtype=torch.float64, generator=gen)
    w = torch.randn(8, 4 // groups, k, k, dtype=torch.float64, generator=gen)
    b = torch.randn(8, dtype=torch.float64, generator=gen)
    full = F.conv2d(x, w, b, stride, padding, dilation, groups)
    shape = (3, *full.shape[2:])
    if kind == "random":
        mask = (torch.rand(3, 1, *shape[1:], generator=gen, dtype=torch.float64) < fraction).double()
    else:
        mask = clustered_mask(shape, fraction, gen)
    assert 0 < mask.mean() < 1
    geo = ((stride,) * 2, (padding,) * 2, (dilation,) * 2, groups)
    for tile in (3, 4):
        for bias in (b, None):
            ref = F.conv2d(x, w, bias, stride, padding, dilation, groups) * mask
            got = tiled_masked_conv2d(x, mask, w, bias, *geo, tile=tile)
            torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    if kind == "clustered" and full.shape[2] >= 8:
        assert not tile_activity(mask, 3).all()  # some tiles are skipped: the case the path is for


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.75, 1.0])
def test_tile_residual_equals_reference(fraction):
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64, generator=gen)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64, generator=gen)
    b = torch.randn(6, dtype=torch.float64, generator=gen)
    mask = (
        clustered_mask((2, 9, 11), fraction, gen)
        if 0 < fraction < 1
        else torch.full((2, 1, 9, 11), fraction, dtype=torch.float64)
    )
    x0 = x.clone()
    ref = x + F.conv2d(x, w, b, 1, 1, 1, 2) * mask
    got = tiled_masked_conv2d(x, mask, w, b, (1, 1), (1, 1), (1, 1), 2, residual=True, tile=4)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    assert torch.equal(x, x0)  # the input is not modified in place


def test_low_precision_tile_path():
    torch.manual_seed(23)
    x = torch.randn(2, 8, 16, 16)
    w, b = torch.randn(8, 8, 3, 3), torch.randn(8)
    m = clustered_mask((2, 16, 16), 0.4, torch.Generator().manual_seed(0)).float()
    ref = F.conv2d(x, w, b, padding=1) * m
    low = tiled_masked_conv2d(x.bfloat16(), m.bfloat16(), w.bfloat16(), b.bfloat16(), (1, 1), (1, 1), (1, 1), 1)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() / ref.abs().max() < 5e-2


@pytest.mark.parametrize("k,stride,padding,dilation,groups", GEOMETRY[:4])
def test_block_mask_identities_and_paths(k, stride, padding, dilation, groups):
    """block_size: the mask is constant on block² output tiles; all on ⇒ the dense conv, all off ⇒
    zeros; a mixed mask gives the same output on the pixel, tile and dense paths."""
    torch.manual_seed(24)
    op = SparseGatedConv2d(4, 8, k, stride, padding, dilation, groups, block_size=3).double()
    x = torch.randn(2, 4, 17, 15, dtype=torch.float64)
    ref = F.conv2d(x, op.weight, op.bias, stride, padding, dilation, groups)
    set_mask_logit(op, 2.0)
    for got in eval_both_paths(op, x):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    set_mask_logit(op, -2.0)
    for got in eval_both_paths(op, x):
        assert got.shape == ref.shape and torch.count_nonzero(got) == 0
    with torch.no_grad():
        op.mask_unit.weight.normal_()
        op.mask_unit.bias.zero_()
    outs = eval_both_paths(op, x)
    m = op._last.mask
    assert 0 < m.mean() < 1
    blocks = F.pad(m, (0, -m.shape[3] % 3, 0, -m.shape[2] % 3), value=-1).unfold(2, 3, 3).unfold(3, 3, 3)
    assert ((blocks == blocks.amax((-1, -2), keepdim=True)) | (blocks < 0)).all()  # constant per block
    for got in outs:
        torch.testing.assert_close(got, ref * m, atol=1e-12, rtol=1e-12)


def test_block_mask_residual_identity():
    torch.manual_seed(25)
    op = SparseGatedConv2d(8, 8, 3, padding=1, residual=True, block_size=4).double()
    x = torch.randn(2, 8, 10, 12, dtype=torch.float64)
    set_mask_logit(op, -1.0)
    for got in eval_both_paths(op, x):
        assert torch.equal(got, x)
    set_mask_logit(op, 1.0)
    for got in eval_both_paths(op, x):
        torch.testing.assert_close(got, x + F.conv2d(x, op.weight, op.bias, padding=1), atol=1e-12, rtol=1e-12)


def test_block_mask_trains_straight_through():
    """One Gumbel decision per block on the block's mean logit; the soft gradient reaches the mask unit."""
    torch.manual_seed(26)
    op = SparseGatedConv2d(4, 6, 3, padding=1, temperature=0.5, block_size=4).double().train()
    x = torch.randn(2, 4, 10, 12, dtype=torch.float64)
    upstream = torch.randn(2, 6, 10, 12, dtype=torch.float64)
    torch.manual_seed(27)
    (op(x) * upstream).sum().backward()
    logits = F.avg_pool2d(F.conv2d(x, op.mask_unit.weight, op.mask_unit.bias), 4, 4, ceil_mode=True)  # 2×1×3×3
    torch.manual_seed(27)
    u = torch.rand(logits.shape, dtype=torch.float32).clamp(1e-6, 1 - 1e-6).double()
    soft = torch.sigmoid((logits + u.log() - (1 - u).log()) / 0.5)
    expand = soft.repeat_interleave(4, 2).repeat_interleave(4, 3)[:, :, :10, :12]
    torch.testing.assert_close(op._last.mask.detach(), (expand >= 0.5).double())
    conv = F.conv2d(x, op.weight, op.bias, padding=1).detach()
    gw, gb = torch.autograd.grad(
        (expand * (conv * upstream).sum(1, keepdim=True)).sum(), [op.mask_unit.weight, op.mask_unit.bias]
    )
    assert gb.abs().item() > 0
    torch.testing.assert_close(op.mask_unit.weight.grad, gw, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(op.mask_unit.bias.grad, gb, atol=1e-10, rtol=1e-10)
    assert "block_size=4" in repr(op)
