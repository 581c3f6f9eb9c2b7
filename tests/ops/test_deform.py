"""Deformable convolution v1 (``deform``) and v2 (``mdeform``): identities from the maths.

References here are independent of the operator: plain ``F.conv2d``, explicit slicing for shifts and
an explicit bilinear-sampling loop over taps.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops import create_op, get_op
from adaptconv.ops.deform import DeformConv2d, ModulatedDeformConv2d, deform_conv2d, modulated_deform_conv2d

OPS = [DeformConv2d, ModulatedDeformConv2d]
GEOMETRY = list(itertools.product((1, 2), (0, 1, 2), (1, 2), (1, 2)))  # stride, padding, dilation, groups


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def full_windows(h, w, k, s, p, d):
    """H'×W' bool: output pixels whose every tap lies inside the image (reads no padding)."""
    ones = torch.ones(1, 1, h, w, dtype=torch.float64)
    cols = F.unfold(ones, k, dilation=d, padding=p, stride=s)  # 1×k²×L
    return (cols.amin(1) == 1).view(out_size(h, k, s, p, d), out_size(w, k, s, p, d))


def shift(x, dy, dx):
    """out[..., h, w] = x[..., h + dy, w + dx], zero where that falls outside the image."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = x[
        ..., max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)
    ]
    return out


def reference_deform(x, offset, weight, bias, stride, padding, dilation, mask=None):
    """Explicit loop: bilinear sampling of each tap at p·s − pad + j·d + Δ, zero outside the image."""
    b_, c_, h, w = x.shape
    o_, cg, kh, kw = weight.shape
    groups = c_ // cg
    taps = kh * kw
    og = offset.shape[1] // (2 * taps)
    cpg = c_ // og
    ho, wo = offset.shape[2:]
    cols = torch.zeros(b_, c_, taps, ho, wo, dtype=x.dtype)
    for b, i, j, g in itertools.product(range(b_), range(ho), range(wo), range(og)):
        for t in range(taps):
            ti, tj = divmod(t, kw)
            py = i * stride - padding + ti * dilation + offset[b, g * 2 * taps + 2 * t, i, j].item()
            px = j * stride - padding + tj * dilation + offset[b, g * 2 * taps + 2 * t + 1, i, j].item()
            y0, x0 = math.floor(py), math.floor(px)
            val = torch.zeros(cpg, dtype=x.dtype)
            for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        val = val + wy * wx * x[b, g * cpg : (g + 1) * cpg, yy, xx]
            if mask is not None:
                val = val * mask[b, g * taps + t, i, j]
            cols[b, g * cpg : (g + 1) * cpg, t, i, j] = val
    out = torch.zeros(b_, o_, ho, wo, dtype=x.dtype)
    opg = o_ // groups
    for g in range(groups):
        wg = weight[g * opg : (g + 1) * opg].reshape(opg, cg, taps)
        out[:, g * opg : (g + 1) * opg] = torch.einsum("bctij,oct->boij", cols[:, g * cg : (g + 1) * cg], wg)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def perturb_side(op, scale=0.1, bias_range=0.6, seed=0):
    """Small random side conv so the offsets are fractional, nonzero and content dependent."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w, b = op.offset_conv.weight, op.offset_conv.bias
        w.copy_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * scale)
        b.copy_((torch.rand(b.shape, generator=gen, dtype=b.dtype) * 2 - 1) * bias_range)


# --------------------------------------------------------------------------------------------------
def test_registered():
    assert get_op("deform") is DeformConv2d and get_op("mdeform") is ModulatedDeformConv2d
    for cls in OPS:
        assert cls.guide == "optional" and cls.function_preserving
        assert set(cls.supports) == {"stride", "padding", "dilation", "groups", "bias"}
        assert cls.paper and cls.from_conv_note
    assert isinstance(create_op("mdeform", 4, 4, 3, offset_groups=2, mask_scale=1.0), ModulatedDeformConv2d)


@pytest.mark.parametrize("stride,padding,dilation,groups", GEOMETRY)
def test_zero_offsets_is_conv(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 8)
    for cls in OPS:
        op = cls(4, 6, 3, stride, padding, dilation, groups)  # fresh: side conv zero, mask 1
        ref = F.conv2d(x, op.weight, op.bias, stride, padding, dilation, groups)
        torch.testing.assert_close(op(x), ref, atol=1e-5, rtol=1e-5)
    # functional forms with explicit zero offsets and unit mask
    w = torch.randn(6, 4 // groups, 3, 3)
    b = torch.randn(6)
    ho, wo = out_size(9, 3, stride, padding, dilation), out_size(8, 3, stride, padding, dilation)
    off = torch.zeros(2, 18, ho, wo)
    ref = F.conv2d(x, w, b, stride, padding, dilation, groups)
    torch.testing.assert_close(deform_conv2d(x, off, w, b, stride, padding, dilation), ref, atol=1e-5, rtol=1e-5)
    got = modulated_deform_conv2d(x, off, torch.ones(2, 9, ho, wo), w, b, stride, padding, dilation)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, -2), (-1, 2), (2, 1)])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_integer_offset_is_shifted_conv(dy, dx, stride, padding, dilation):
    torch.manual_seed(1)
    h, w = 10, 9
    x = torch.randn(2, 4, h, w, dtype=torch.float64)
    keep = full_windows(h, w, 3, stride, padding, dilation)
    assert keep.sum() >= 4
    for cls in OPS:
        op = cls(4, 5, 3, stride, padding, dilation, groups=1).double()
        with torch.no_grad():
            op.offset_conv.bias[: 2 * 9] = torch.tensor([float(dy), float(dx)] * 9, dtype=torch.float64)
        ref = F.conv2d(shift(x, dy, dx), op.weight, op.bias, stride, padding, dilation)
        got = op(x)
        torch.testing.assert_close(got[..., keep], ref[..., keep], atol=1e-10, rtol=1e-10)


def test_offset_groups_shift_their_own_channels():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    op = DeformConv2d(4, 3, 3, padding=1, offset_groups=2).double()
    with torch.no_grad():  # group 0 (channels 0-1): no offset; group 1 (channels 2-3): shift by (1, -1)
        op.offset_conv.bias[18:] = torch.tensor([1.0, -1.0] * 9, dtype=torch.float64)
    mixed = torch.cat([x[:, :2], shift(x[:, 2:], 1, -1)], 1)
    keep = full_windows(8, 8, 3, 1, 1, 1)
    ref = F.conv2d(mixed, op.weight, op.bias, padding=1)
    torch.testing.assert_close(op(x)[..., keep], ref[..., keep], atol=1e-10, rtol=1e-10)
    # and it trains: forward + backward through a 2-offset-group modulated layer
    m = ModulatedDeformConv2d(4, 6, 3, padding=1, groups=2, offset_groups=2)
    perturb_side(m)
    y = m(x.float().requires_grad_())
    assert y.shape == (2, 6, 8, 8)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert m.offset_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mask_scale", [2.0, 1.0, 3.0])
def test_constant_mask_scales_conv(mask_scale):
    torch.manual_seed(3)
    alpha = 0.3
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    op = ModulatedDeformConv2d(4, 5, 3, padding=1, mask_scale=mask_scale).double()
    p = alpha / mask_scale
    with torch.no_grad():
        op.offset_conv.bias[op.num_offset_channels :] = math.log(p / (1 - p))
    ref = alpha * F.conv2d(x, op.weight, None, padding=1) + op.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(op(x), ref, atol=1e-10, rtol=1e-10)


def test_plain_sigmoid_mask_halves_output_at_init():
    """The documented surprise: with mask_scale=1 (the paper's sigmoid) a fresh v2 layer gives 0.5·conv + b."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 6, 6)
    op = ModulatedDeformConv2d(3, 4, 3, padding=1, mask_scale=1.0)
    ref = 0.5 * F.conv2d(x, op.weight, None, padding=1) + op.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(op(x), ref, atol=1e-6, rtol=1e-5)
    fresh_default = ModulatedDeformConv2d(3, 4, 3, padding=1)  # mask_scale=2: mask exactly 1
    torch.testing.assert_close(
        fresh_default(x), F.conv2d(x, fresh_default.weight, fresh_default.bias, padding=1), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize(
    "stride,padding,dilation,groups,offset_groups", [(1, 1, 1, 1, 1), (2, 1, 1, 2, 2), (1, 2, 2, 1, 2), (1, 0, 1, 4, 4)]
)
def test_fractional_offsets_match_bilinear_loop(stride, padding, dilation, groups, offset_groups):
    torch.manual_seed(5)
    h, w, k = 5, 6, 3
    x = torch.randn(2, 4, h, w, dtype=torch.float64)
    weight = torch.randn(4, 4 // groups, k, k, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    ho, wo = out_size(h, k, stride, padding, dilation), out_size(w, k, stride, padding, dilation)
    off = (torch.rand(2, 2 * offset_groups * 9, ho, wo, dtype=torch.float64) * 2 - 1) * 1.7  # some land outside
    mask = torch.rand(2, offset_groups * 9, ho, wo, dtype=torch.float64)
    ref1 = reference_deform(x, off, weight, bias, stride, padding, dilation)
    torch.testing.assert_close(
        deform_conv2d(x, off, weight, bias, stride, padding, dilation), ref1, atol=1e-10, rtol=1e-10
    )
    ref2 = reference_deform(x, off, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(
        modulated_deform_conv2d(x, off, mask, weight, bias, stride, padding, dilation), ref2, atol=1e-10, rtol=1e-10
    )
    # the module: its side conv's offsets and mask, read by the same loop
    op = ModulatedDeformConv2d(4, 4, k, stride, padding, dilation, groups, offset_groups=offset_groups).double()
    perturb_side(op, scale=0.3, bias_range=1.2)
    offset, m = op.offsets_and_mask(x)
    assert torch.allclose(m, 2.0 * torch.sigmoid(op.offset_conv(x)[:, 2 * offset_groups * 9 :]))
    torch.testing.assert_close(
        op(x),
        reference_deform(
            x, offset.detach(), op.weight.detach(), op.bias.detach(), stride, padding, dilation, m.detach()
        ),
        atol=1e-10,
        rtol=1e-10,
    )


@pytest.mark.parametrize("cls", OPS)
@pytest.mark.parametrize("stride,padding,dilation,groups", [g for g in GEOMETRY if g[1] < 2])
def test_from_conv_exact(cls, stride, padding, dilation, groups):
    torch.manual_seed(6)
    x = torch.randn(2, 4, 9, 10)
    for bias in (True, False):
        conv = nn.Conv2d(4, 6, 3, stride, padding, dilation, groups, bias=bias)
        op = cls.from_conv(conv)
        torch.testing.assert_close(op(x), conv(x), atol=1e-5, rtol=1e-5)
        assert (op.bias is None) == (not bias)


@pytest.mark.parametrize("mask_scale", [1.0, 0.5, 3.0])
def test_mdeform_from_conv_exact_for_any_mask_scale(mask_scale):
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    op = ModulatedDeformConv2d.from_conv(conv, mask_scale=mask_scale, offset_groups=3)
    x = torch.randn(2, 3, 7, 8)
    torch.testing.assert_close(op(x), conv(x), atol=1e-5, rtol=1e-5)
    _, mask = op.offsets_and_mask(x)
    if mask_scale > 1:  # the mask itself starts at 1 and the weight is the conv's own
        torch.testing.assert_close(mask, torch.ones_like(mask))
        assert torch.equal(op.weight, conv.weight)


def test_from_conv_follows_device_and_dtype():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    for cls in OPS:
        op = cls.from_conv(conv)
        assert all(p.dtype == torch.float64 for p in op.parameters())
        x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
        torch.testing.assert_close(op(x), conv(x))


def _gradcheck_module(op, x, guide=None):
    """gradcheck w.r.t. the input, the guide and every parameter, via functional_call."""
    names = [n for n, _ in op.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in op.named_parameters()]
    inputs = [x.detach().clone().requires_grad_()]
    if guide is not None:
        inputs.append(guide.detach().clone().requires_grad_())
    n_in = len(inputs)

    def f(*args):
        g = args[1] if guide is not None else None
        return torch.func.functional_call(op, dict(zip(names, args[n_in:])), (args[0], g))

    # Full Jacobians for the input and guide; every parameter in fast mode (random projections of the
    # Jacobian, one finite difference per tensor) to keep the side conv's many weights cheap.
    def f_inputs(*ins):
        return f(*ins, *params)

    assert torch.autograd.gradcheck(f_inputs, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(f, inputs + params, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    out = f(*inputs, *params)
    grads = torch.autograd.grad(out.square().sum(), inputs + params)
    for name, g in zip(["x", "guide"][:n_in] + names, grads):
        assert g.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("cls", OPS)
@pytest.mark.parametrize("guided", [False, True])
def test_gradcheck(cls, guided):
    torch.manual_seed(8)
    kw = dict(guide_channels=3) if guided else {}
    op = cls(2, 2, 3, stride=1, padding=1, groups=1, offset_groups=2, **kw).double()
    perturb_side(op, scale=0.2, bias_range=0.7, seed=3)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    guide = torch.randn(1, 3, 4, 4, dtype=torch.float64) if guided else None
    _gradcheck_module(op, x, guide)


@pytest.mark.parametrize("k,s,p,d", list(itertools.product((1, 3, 5), (1, 2), (0, 1, 2), (1, 2))))
def test_shape_parity_with_conv(k, s, p, d):
    for h, w in ((11, 10), (9, 12)):
        x = torch.randn(1, 2, h, w)
        ref = nn.Conv2d(2, 4, k, s, p, d)(x).shape
        for cls in OPS:
            assert cls(2, 4, k, s, p, d)(x).shape == ref
    op = ModulatedDeformConv2d(2, 4, k, s, p, d, guide_channels=3)
    assert op(x, torch.randn(1, 3, h, w)).shape == ref


@pytest.mark.parametrize("cls", OPS)
def test_batch_one_train_forward_backward(cls):
    op = cls(3, 4, 3, padding=1, guide_channels=2).train()
    perturb_side(op)
    x = torch.randn(1, 3, 6, 5, requires_grad=True)
    guide = torch.randn(1, 2, 6, 5, requires_grad=True)
    op(x, guide).sum().backward()
    assert torch.isfinite(x.grad).all() and guide.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in op.parameters())


def test_batch_independence():
    torch.manual_seed(9)
    op = ModulatedDeformConv2d(4, 4, 3, padding=1, groups=2, offset_groups=2)
    perturb_side(op)
    x1, x2 = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 6, 6)
    torch.testing.assert_close(op(torch.cat([x1, x2])), torch.cat([op(x1), op(x2)]), atol=1e-5, rtol=1e-5)


def test_invalid_options():
    for cls in OPS:
        for bad in (0, -1, 3, 1.5, True, "2"):
            with pytest.raises(ValueError, match="offset_groups"):
                cls(4, 4, 3, offset_groups=bad)
    for bad in (0, -1.0, float("nan"), float("inf"), "2", None, True):
        with pytest.raises(ValueError, match="mask_scale"):
            ModulatedDeformConv2d(4, 4, 3, mask_scale=bad)
    with pytest.raises(TypeError):
        DeformConv2d(4, 4, 3, mask_scale=2.0)  # v1 has no mask
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(x, torch.zeros(1, 17, 3, 3), w)
    with pytest.raises(ValueError, match="mask"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 3, 3), torch.ones(1, 18, 3, 3), w)


def test_bfloat16_on_cpu_is_supported_or_refused_clearly():
    """torchvision's CPU kernel has no bfloat16 path: the operator must say so, not fail cryptically."""
    op = DeformConv2d(2, 2, 3, padding=1).to(torch.bfloat16)
    x = torch.randn(1, 2, 5, 5, dtype=torch.bfloat16)
    try:
        y = op(x)
    except TypeError as exc:
        assert "bfloat16" in str(exc) and "cpu" in str(exc)
    else:
        ref = F.conv2d(x.float(), op.weight.float(), op.bias.float(), padding=1)
        torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.05)
    op16 = DeformConv2d(2, 2, 3, padding=1).half()
    ref = F.conv2d(x.float(), op16.weight.float(), op16.bias.float(), padding=1)
    torch.testing.assert_close(op16(x.half()).float(), ref, atol=0.05, rtol=0.05)
