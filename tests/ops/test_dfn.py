"""DFN identities: one-hot filters, box filters, depthwise convolution, from_conv."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.ops.dfn import DfnConv2d, dynamic_filter2d

D = torch.float64


def test_one_hot_centre_filters_are_identity():
    x = torch.randn(2, 3, 7, 8, dtype=D)
    filters = torch.zeros(2, 1, 9, 7, 8, dtype=D)
    filters[:, :, 4] = 1
    torch.testing.assert_close(dynamic_filter2d(x, filters, (3, 3), padding=(1, 1)), x)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (5, 2, 2), (3, 2, 0)])
def test_zero_logits_with_softmax_is_a_box_filter(k, s, p):
    torch.manual_seed(0)
    op = DfnConv2d(3, 3, k, s, p).double()
    nn.init.zeros_(op.generator[-1].weight)
    nn.init.zeros_(op.generator[-1].bias)
    with torch.no_grad():
        op.bias.zero_()
    x = torch.randn(2, 3, 9, 8, dtype=D)
    torch.testing.assert_close(op(x), F.avg_pool2d(x, k, s, p, count_include_pad=True))


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 0, 2), (5, 1, 2, 1), (2, 1, 0, 1)])
def test_same_filter_everywhere_is_depthwise_conv(k, s, p, d):
    x = torch.randn(2, 4, 9, 9, dtype=D)
    filt = torch.randn(k * k, dtype=D)
    ho, wo = F.conv2d(x[:, :1], filt.view(1, 1, k, k), None, s, p, d).shape[-2:]
    filters = filt.view(1, 1, -1, 1, 1).expand(2, 1, k * k, ho, wo)
    expected = F.conv2d(x, filt.view(1, 1, k, k).expand(4, 1, k, k), None, s, p, d, groups=4)
    torch.testing.assert_close(dynamic_filter2d(x, filters, (k, k), (s, s), (p, p), (d, d)), expected)


def test_filter_groups_use_their_own_filter():
    x = torch.randn(1, 4, 5, 5, dtype=D)
    filters = torch.randn(1, 2, 9, 5, 5, dtype=D)
    y = dynamic_filter2d(x, filters, (3, 3), padding=(1, 1))
    xp = F.pad(x, (1, 1, 1, 1))
    for c, i, j in itertools.product(range(4), range(5), range(5)):
        expected = sum(filters[0, c // 2, a * 3 + b, i, j] * xp[0, c, i + a, j + b] for a in range(3) for b in range(3))
        assert y[0, c, i, j].item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)


def test_projection_only_when_channels_change():
    assert DfnConv2d(4, 4, 3).projection is None
    assert DfnConv2d(4, 6, 3, groups=2).projection.groups == 2
    with pytest.raises(ValueError, match="projection"):
        DfnConv2d(4, 6, 3, projection=False)


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_from_conv_exact_for_1x1(normalize):
    conv = nn.Conv2d(4, 6, 1, stride=2, groups=2).double()
    x = torch.randn(2, 4, 7, 7, dtype=D)
    torch.testing.assert_close(DfnConv2d.from_conv(conv, normalize=normalize)(x), conv(x))


def test_from_conv_exact_for_rank_one_weight():
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(5, 3, 1, 1, dtype=D) * torch.randn(1, 1, 3, 3, dtype=D))
    x = torch.randn(2, 3, 8, 8, dtype=D)
    torch.testing.assert_close(DfnConv2d.from_conv(conv, normalize="none")(x), conv(x))


def test_gradcheck():
    from adaptconv.ops.conformance import gradcheck_operator

    torch.manual_seed(1)
    op = DfnConv2d(2, 4, 3, 2, 1, groups=2, guide_channels=1, hidden_channels=3, filter_groups=2).double()
    x = torch.randn(1, 2, 5, 5, dtype=D)
    g = torch.randn(1, 1, 5, 5, dtype=D)
    assert gradcheck_operator(op, x, g, atol=1e-5, rtol=1e-3)


def test_invalid_options():
    with pytest.raises(ValueError, match="filter_groups"):
        DfnConv2d(4, 4, 3, filter_groups=3)
    with pytest.raises(ValueError, match="normalize"):
        DfnConv2d(4, 4, 3, normalize="sigmoid")
