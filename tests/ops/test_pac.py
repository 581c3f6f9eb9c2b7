"""PAC identities against independent computations (F.conv2d, avg_pool2d, explicit loops)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops.pac import PacConv2d, PacConvTranspose2d, PacPool2d, pac_conv2d

D = torch.float64
GEOMETRIES = [  # kernel, stride, padding, dilation, groups
    (3, 1, 1, 1, 1),
    (3, 2, 0, 1, 1),
    (3, 1, 2, 2, 2),
    (5, 2, 3, 1, 1),
    (1, 2, 0, 1, 2),
    (4, 1, 1, 1, 1),
    (2, 2, 1, 2, 2),
]


def _pac(cin, cout, k, s, p, d, g, **kw):
    torch.manual_seed(0)
    return PacConv2d(cin, cout, k, s, p, d, g, **kw).double()


@pytest.mark.parametrize("k,s,p,d,g", GEOMETRIES)
@pytest.mark.parametrize("size", [(9, 9), (10, 7)])
def test_constant_guide_is_conv2d(k, s, p, d, g, size):
    op = _pac(4, 6, k, s, p, d, g, guide_channels=3)
    x = torch.randn(2, 4, *size, dtype=D)
    guide = torch.full((2, 3, *size), 0.37, dtype=D)
    torch.testing.assert_close(op(x, guide), F.conv2d(x, op.weight, op.bias, s, p, d, g))


@pytest.mark.parametrize("k,s,p,d,g", GEOMETRIES)
def test_kernel_of_ones_is_conv2d(k, s, p, d, g):
    x = torch.randn(2, 4, 9, 8, dtype=D)
    w = torch.randn(6, 4 // g, k, k, dtype=D)
    b = torch.randn(6, dtype=D)
    ho, wo = F.conv2d(x, w, None, s, p, d, g).shape[-2:]
    ones = torch.ones(2, 1, k * k, ho, wo, dtype=D)
    torch.testing.assert_close(pac_conv2d(x, ones, w, b, (s, s), (p, p), (d, d), g), F.conv2d(x, w, b, s, p, d, g))


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 2, 1), (5, 1, 2, 2), (3, 1, 0, 1)])
def test_constant_guide_normalized_is_conv_over_valid_taps(k, s, p, d):
    op = _pac(3, 5, k, s, p, d, 1, guide_channels=2, normalize_kernel=True)
    x = torch.randn(2, 3, 9, 10, dtype=D)
    guide = torch.full((2, 2, 9, 10), -1.2, dtype=D)
    # Independent count of in-image taps per output pixel: a conv of an all-ones image.
    n_valid = F.conv2d(torch.ones(1, 1, 9, 10, dtype=D), torch.ones(1, 1, k, k, dtype=D), None, s, p, d)
    expected = F.conv2d(x, op.weight, None, s, p, d) / n_valid + op.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(op(x, guide), expected)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (5, 2, 2), (2, 2, 0), (3, 3, 0)])
def test_pool_constant_guide_normalized_is_avg_pool(k, s, p):
    pool = PacPool2d(k, s, p, guide_channels=1, normalize_kernel=True)
    x = torch.randn(2, 3, 11, 9, dtype=D)
    guide = torch.zeros(2, 1, 11, 9, dtype=D)
    torch.testing.assert_close(pool(x, guide), F.avg_pool2d(x, k, s, p, count_include_pad=False))


def test_pool_self_guided_is_a_weighted_sum():
    pool = PacPool2d(3, 1, 1, channels=1, normalize_kernel=False)
    x = torch.randn(1, 1, 5, 5, dtype=D)
    y = pool(x)
    xp = F.pad(x, (1, 1, 1, 1))
    fp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    i, j = 2, 3
    expected = sum(
        math.exp(-0.5 * (fp[0, 0, i + a, j + b] - x[0, 0, i, j]).item() ** 2) * xp[0, 0, i + a, j + b].item()
        for a in range(3)
        for b in range(3)
    )
    assert y[0, 0, i, j].item() == pytest.approx(expected, rel=1e-12)


def _loop_pac(x, guide, weight, bias, stride, pad, dil, scale=None):
    """PAC by its definition, one output pixel and one tap at a time (odd kernels)."""
    b, c, h, w = x.shape
    o, _, k, _ = weight.shape
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    y = torch.zeros(b, o, ho, wo, dtype=x.dtype)
    for n, i, j in itertools.product(range(b), range(ho), range(wo)):
        ci, cj = i * stride - pad + dil * (k // 2), j * stride - pad + dil * (k // 2)
        fc = guide[n, :, min(max(ci, 0), h - 1), min(max(cj, 0), w - 1)]
        for a, bb in itertools.product(range(k), range(k)):
            r, q = i * stride - pad + a * dil, j * stride - pad + bb * dil
            if not (0 <= r < h and 0 <= q < w):
                continue
            diff2 = (guide[n, :, r, q] - fc) ** 2
            if scale is not None:
                diff2 = diff2 * scale
            kern = torch.exp(-0.5 * diff2.sum())
            y[n, :, i, j] += kern * (weight[:, :, a, bb] @ x[n, :, r, q])
    return y + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 0, 1), (3, 1, 2, 2), (5, 2, 1, 1)])
def test_matches_explicit_loop(k, s, p, d):
    op = _pac(3, 4, k, s, p, d, 1, guide_channels=2)
    with torch.no_grad():
        op.set_guide_scale([0.5, 2.0])
    x = torch.randn(2, 3, 7, 6, dtype=D)
    guide = torch.randn(2, 2, 7, 6, dtype=D)
    expected = _loop_pac(
        x, guide, op.weight.detach(), op.bias.detach(), s, p, d, scale=torch.tensor([0.5, 2.0], dtype=D)
    )
    torch.testing.assert_close(op(x, guide), expected)


def test_joint_bilateral_filter():
    """Guide [y/σs, x/σs, rgb/σr] + normalize + identity weight = a joint bilateral filter."""
    torch.manual_seed(1)
    h, w, k, sig_s, sig_r = 12, 11, 5, 2.0, 0.2
    rgb = torch.rand(1, 3, h, w, dtype=D)
    depth = torch.rand(1, 1, h, w, dtype=D)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=D), torch.arange(w, dtype=D), indexing="ij")
    guide = torch.cat([yy[None, None] / sig_s, xx[None, None] / sig_s, rgb / sig_r], 1)
    op = PacConv2d(1, 1, k, padding=k // 2, bias=False, guide_channels=5, normalize_kernel=True).double()
    with torch.no_grad():
        op.weight.fill_(1.0)
    y = op(depth, guide)
    r = k // 2
    for i, j in itertools.product(range(r, h - r), range(r, w - r)):  # interior
        num = den = 0.0
        for a, b in itertools.product(range(-r, r + 1), range(-r, r + 1)):
            ws = math.exp(-(a * a + b * b) / (2 * sig_s**2))
            wr = math.exp(-((rgb[0, :, i + a, j + b] - rgb[0, :, i, j]) ** 2).sum().item() / (2 * sig_r**2))
            num += ws * wr * depth[0, 0, i + a, j + b].item()
            den += ws * wr
        assert y[0, 0, i, j].item() == pytest.approx(num / den, rel=1e-10)


def test_guide_scaled_to_zero_tends_to_conv2d():
    op = _pac(3, 4, 3, 1, 1, 1, 1, guide_channels=3)
    x = torch.randn(2, 3, 8, 8, dtype=D)
    guide = torch.randn(2, 3, 8, 8, dtype=D)
    ref = F.conv2d(x, op.weight, op.bias, 1, 1)
    errs = [(op(x, guide * eps) - ref).abs().max().item() for eps in (1e-1, 1e-2, 1e-3)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4


def test_shift_equivariance_interior():
    op = _pac(3, 4, 3, 1, 1, 1, 1, guide_channels=2)
    x = torch.randn(1, 3, 12, 12, dtype=D)
    guide = torch.randn(1, 2, 12, 12, dtype=D)
    y = op(x, guide)
    ys = op(torch.roll(x, (2, 3), (2, 3)), torch.roll(guide, (2, 3), (2, 3)))
    torch.testing.assert_close(ys[..., 4:-2, 5:-2], y[..., 2:-4, 2:-5])


def test_inverse_distance_kernel():
    op = _pac(2, 2, 3, 1, 1, 1, 1, guide_channels=1, kernel_type="inv")
    with torch.no_grad():
        op.inv_alpha.fill_(2.0)
        op.inv_lambda.fill_(0.75)
    x = torch.zeros(1, 2, 5, 5, dtype=D)
    x[0, :, 2, 3] = 1.0  # one input pixel: only tap (1, 2) of output (2, 2) reads it
    guide = torch.zeros(1, 1, 5, 5, dtype=D)
    guide[0, 0, 2, 3] = 1.5
    y = op(x, guide) - op.bias.view(1, -1, 1, 1)
    kern = (2.0 + 1.5**2) ** -0.75
    torch.testing.assert_close(y[0, :, 2, 2], kern * op.weight[:, :, 1, 2].sum(1))


def test_shared_filters():
    op = _pac(3, 3, 3, 1, 1, 1, 1, guide_channels=1, shared_filters=True)
    x = torch.randn(2, 3, 6, 6, dtype=D)
    guide = torch.ones(2, 1, 6, 6, dtype=D)
    depthwise = op.weight.expand(3, 1, 3, 3)
    torch.testing.assert_close(op(x, guide), F.conv2d(x, depthwise, op.bias, 1, 1, groups=3))
    with pytest.raises(ValueError, match="shared_filters"):
        PacConv2d(3, 4, 3, shared_filters=True)


def test_from_conv_starts_exact_and_learns_to_adapt():
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    op = PacConv2d.from_conv(conv)
    x = torch.randn(2, 3, 8, 8, dtype=D)
    # the same function: equal up to float64 summation order (the tap-wise kernel adds in another order)
    torch.testing.assert_close(op(x), conv(x), rtol=0, atol=1e-12)
    op(x).square().sum().backward()
    assert op.guide_scale_raw.grad is not None and op.guide_scale_raw.grad.abs().sum() > 0  # γ = 0 is not a dead end


def test_from_conv_guide_scale_grows_within_a_short_adam_run():
    """γ must reach a size that changes K within a benchmark's budget: 20 Adam steps at lr 1e-3 move
    a γ stored as is by ≤ 0.02 (the layer stays a conv); through the gain it moves ~gain× further."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    teacher = PacConv2d.from_conv(conv, guide_channels=1)
    teacher.set_guide_scale(2.0)
    student = PacConv2d.from_conv(conv, guide_channels=1)
    x, guide = torch.randn(4, 2, 10, 10, dtype=D), torch.randn(4, 1, 10, 10, dtype=D)
    target = teacher(x, guide).detach()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(20):
        opt.zero_grad()
        (student(x, guide) - target).square().mean().backward()
        opt.step()
    assert 0.2 < student.guide_scale.item() < 20 * student.guide_scale_gain * 1e-3 * 1.01  # ≤ ~gain·lr a step
    kernel = student.adapting_kernel(guide)
    assert (1 - kernel).abs().mean() > 1e-2  # the layer now adapts


def test_guide_scale_below_zero_is_reflected_not_frozen():
    """A step that takes the raw value below 0 (likely from γ = 0, where the gradient's sign is noise)
    must not freeze γ at 0: γ = gain·|θ| keeps a gradient there, and at θ = 0 itself."""
    torch.manual_seed(0)
    op = PacConv2d.from_conv(nn.Conv2d(2, 2, 3, padding=1).double(), guide_channels=1)
    x, guide = torch.randn(2, 2, 8, 8, dtype=D), torch.randn(2, 1, 8, 8, dtype=D)
    for raw in (0.0, -0.01):
        with torch.no_grad():
            op.guide_scale_raw.fill_(raw)
        assert op.guide_scale.item() == pytest.approx(abs(raw) * op.guide_scale_gain)
        op.guide_scale_raw.grad = None
        op(x, guide).square().sum().backward()
        assert op.guide_scale_raw.grad.abs().item() > 0
    with pytest.raises(ValueError, match="set_guide_scale"):
        op.set_guide_scale(-1.0)


def test_guide_scale_is_stored_through_the_gain_and_old_state_dicts_load():
    op = PacConv2d(2, 2, 3, guide_channels=2)
    torch.testing.assert_close(op.guide_scale, torch.ones(2))  # the constructor's guide_scale is γ
    op.set_guide_scale([0.5, 2.0])
    torch.testing.assert_close(op.guide_scale, torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(op.guide_scale_raw * op.guide_scale_gain, op.guide_scale)
    assert op.guide_scale_gain > 1 and "guide_scale_raw" in op.state_dict()
    # a state dict written before the gain holds γ itself under "guide_scale"
    old = {("guide_scale" if k == "guide_scale_raw" else k): v.clone() for k, v in op.state_dict().items()}
    old["guide_scale"] = torch.tensor([0.25, 3.0])
    fresh = PacConv2d(2, 2, 3, guide_channels=2)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.guide_scale, torch.tensor([0.25, 3.0]))
    old["guide_scale"] = torch.tensor([-0.5, 1.0])  # negative γ acted as 0 before
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.guide_scale, torch.tensor([0.0, 1.0]))
    fixed = PacPool2d(3, channels=2, guide_scale=0.7)  # not learned: stored as is
    assert fixed.guide_scale_gain == 1.0 and fixed.guide_scale_raw.tolist() == pytest.approx([0.7, 0.7])


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
def test_transposed_constant_guide_is_conv_transpose2d(k, s, p, op_, d, g):
    torch.manual_seed(0)
    m = PacConvTranspose2d(4, 6, k, s, p, op_, d, g, guide_channels=2).double()
    x = torch.randn(2, 4, 5, 4, dtype=D)
    ref = F.conv_transpose2d(x, m.weight, m.bias, s, p, op_, g, d)
    guide = torch.full((2, 2, *ref.shape[-2:]), 0.8, dtype=D)
    torch.testing.assert_close(m(x, guide), ref)


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (5, 2, 2), (3, 3, 0)])
def test_transposed_matches_scatter_loop(k, s, p):
    """Each input pixel i scatters through tap t to output q = i·s − p + t; the kernel compares the
    guide at q with the guide where i sits in the output grid (i·s − p + k//2)."""
    torch.manual_seed(2)
    m = PacConvTranspose2d(2, 3, k, s, p, guide_channels=1).double()
    x = torch.randn(1, 2, 4, 3, dtype=D)
    ho, wo = m.output_size(4, 3)
    guide = torch.randn(1, 1, ho, wo, dtype=D)
    y = torch.zeros(1, 3, ho, wo, dtype=D)
    for i, j, a, b in itertools.product(range(4), range(3), range(k), range(k)):
        qi, qj = i * s - p + a, j * s - p + b
        if not (0 <= qi < ho and 0 <= qj < wo):
            continue
        si = min(max(i * s - p + k // 2, 0), ho - 1)
        sj = min(max(j * s - p + k // 2, 0), wo - 1)
        kern = torch.exp(-0.5 * (guide[0, 0, qi, qj] - guide[0, 0, si, sj]) ** 2)
        y[0, :, qi, qj] += kern * (m.weight[:, :, a, b].T @ x[0, :, i, j])
    torch.testing.assert_close(m(x, guide), y + m.bias.view(1, -1, 1, 1))


def test_transposed_rejects_guide_at_input_resolution():
    m = PacConvTranspose2d(2, 2, 4, 2, 1, guide_channels=1)
    with pytest.raises(ValueError, match=r"B×1×8×8"):
        m(torch.randn(1, 2, 4, 4), torch.randn(1, 1, 4, 4))


def test_gradcheck_all_inputs_and_parameters():
    from adaptconv.ops.conformance import gradcheck_operator

    torch.manual_seed(0)
    for kind in ("gaussian", "inv"):
        op = PacConv2d(2, 2, 3, 2, 1, groups=2, guide_channels=2, kernel_type=kind, normalize_kernel=True).double()
        x = torch.randn(1, 2, 5, 5, dtype=D)
        g = torch.randn(1, 2, 5, 5, dtype=D)
        assert gradcheck_operator(op, x, g, atol=1e-5, rtol=1e-3)
    m = PacConvTranspose2d(2, 2, 3, 2, 1, 1, guide_channels=1).double()
    x = torch.randn(1, 2, 3, 3, dtype=D, requires_grad=True)
    g = torch.randn(1, 1, 6, 6, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, g: m(x, g), (x, g))
    pool = PacPool2d(3, 2, 1, channels=2)
    x = torch.randn(1, 2, 5, 5, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pool(x), (x,))


def test_invalid_options_name_the_option():
    with pytest.raises(ValueError, match="kernel_type"):
        PacConv2d(2, 2, 3, kernel_type="box")
    with pytest.raises(ValueError, match="guide_scale"):
        PacConv2d(2, 2, 3, guide_scale=-1.0)
    with pytest.raises(ValueError, match="guide_channels"):
        PacConvTranspose2d(2, 2, 3, 2, guide_channels=None)
