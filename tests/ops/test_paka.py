"""PAKA identities: zero-initialised attention is the conv; the factor matches its definition."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops.paka import PakaConv2d, paka_conv2d

D = torch.float64


@pytest.mark.parametrize("k,s,p,d,g", [(3, 1, 1, 1, 1), (3, 2, 0, 2, 2), (5, 2, 2, 1, 1), (4, 1, 1, 1, 1)])
def test_fresh_layer_is_exactly_conv2d(k, s, p, d, g):
    torch.manual_seed(0)
    op = PakaConv2d(4, 6, k, s, p, d, g).double()
    x = torch.randn(2, 4, 9, 10, dtype=D)
    # float64 round-off only: the lean path sums the taps in its own GEMM order, not oneDNN's (which
    # order MKL picks depends on the CPU, so bitwise equality held on some machines and not others)
    torch.testing.assert_close(op(x), F.conv2d(x, op.weight, op.bias, s, p, d, g), rtol=1e-13, atol=1e-13)
    conv = nn.Conv2d(4, 6, k, s, p, d, g).double()
    torch.testing.assert_close(PakaConv2d.from_conv(conv)(x), conv(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 0, 1), (3, 1, 2, 2)])
def test_matches_explicit_loop(k, s, p, d):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 7, dtype=D)
    w = torch.randn(4, 3, k, k, dtype=D)
    b = torch.randn(4, dtype=D)
    ho, wo = F.conv2d(x, w, None, s, p, d).shape[-2:]
    a_c = torch.randn(2, 3, ho, wo, dtype=D)
    a_s = torch.randn(2, k * k, ho, wo, dtype=D)
    y = paka_conv2d(x, a_c, a_s, w, b, (s, s), (p, p), (d, d))
    ref = torch.zeros_like(y)
    for n, i, j, c, a, bb in itertools.product(range(2), range(ho), range(wo), range(3), range(k), range(k)):
        r, q = i * s - p + a * d, j * s - p + bb * d
        if 0 <= r < 6 and 0 <= q < 7:
            factor = 1 + torch.tanh(a_c[n, c, i, j] + a_s[n, a * k + bb, i, j])
            ref[n, :, i, j] += w[:, c, a, bb] * x[n, c, r, q] * factor
    torch.testing.assert_close(y, ref + b.view(1, -1, 1, 1))


def test_attention_is_read_at_window_centres():
    torch.manual_seed(2)
    op = PakaConv2d(3, 3, 3, stride=2, padding=1, guide_channels=2).double()
    for m in (op.channel_branch[-1], op.tap_branch[-1]):
        nn.init.normal_(m.weight)
    guide = torch.randn(1, 2, 8, 8, dtype=D)
    a_c, a_s = op.attention(guide)
    torch.testing.assert_close(a_c, op.channel_branch(guide)[..., ::2, ::2])
    torch.testing.assert_close(a_s, op.tap_branch(guide)[..., ::2, ::2])
    x = torch.randn(1, 3, 8, 8, dtype=D)
    assert not torch.allclose(op(x, guide), op(x, guide.flip(-1)))


def test_gradcheck():
    from adaptconv.ops.conformance import gradcheck_operator

    torch.manual_seed(3)
    op = PakaConv2d(2, 2, 3, 2, 1, groups=2, guide_channels=1, hidden_channels=2).double()
    for m in (op.channel_branch[-1], op.tap_branch[-1]):
        nn.init.normal_(m.weight, std=0.5)
    x = torch.randn(1, 2, 5, 5, dtype=D)
    g = torch.randn(1, 1, 5, 5, dtype=D)
    assert gradcheck_operator(op, x, g, atol=1e-5, rtol=1e-3)


def test_invalid_options():
    with pytest.raises(ValueError, match="reduction"):
        PakaConv2d(4, 4, 3, reduction=0)
    with pytest.raises(ValueError, match="hidden_channels"):
        PakaConv2d(4, 4, 3, hidden_channels=-2)
