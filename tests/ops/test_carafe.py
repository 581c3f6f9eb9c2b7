"""CARAFE: explicit-loop reference, the nearest-upsampling identity, gradients, kind and errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv import OpRegistryError, create_op, get_op
from adaptconv.models.swap import SwapError, swap_convs
from adaptconv.ops.carafe import Carafe, carafe
from adaptconv.ops.conformance import gradcheck_operator

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randomised(op: nn.Module, scale: float = 0.5) -> nn.Module:
    """Parameters far from the near-uniform initialisation, so the kernels really vary."""
    with torch.no_grad():
        for i, p in enumerate(op.parameters()):
            p.copy_(torch.randn(p.shape, dtype=p.dtype, generator=_gen(10 + i)) * scale)
    return op


def reference_kernels(op: Carafe, x: torch.Tensor) -> torch.Tensor:
    """The paper's kernel prediction written out: encoder channel (tap·σ² + sub-position) at the
    source pixel, softmax over the taps, one kernel per output pixel."""
    s, k = op.scale_factor, op.k_up
    enc = op.encoder(op.compressor(x))  # B×σ²k²×H×W (convs are not what is under test here)
    b, _, h, w = x.shape
    out = torch.empty(b, k * k, h * s, w * s, dtype=x.dtype)
    for i in range(h * s):
        for j in range(w * s):
            sub = (i % s) * s + (j % s)
            logits = torch.stack([enc[:, t * s * s + sub, i // s, j // s] for t in range(k * k)], 1)
            out[:, :, i, j] = torch.softmax(logits, 1)
    return out


def reference_reassembly(x: torch.Tensor, kernels: torch.Tensor, s: int) -> torch.Tensor:
    b, c, h, w = x.shape
    k = int(round(kernels.shape[1] ** 0.5))
    r = k // 2
    y = torch.zeros(b, c, h * s, w * s, dtype=x.dtype)
    for i in range(h * s):
        for j in range(w * s):
            si, sj = i // s, j // s  # the source pixel
            for n in range(k):
                for m in range(k):
                    yi, xj = si + n - r, sj + m - r
                    if 0 <= yi < h and 0 <= xj < w:
                        y[:, :, i, j] += kernels[:, n * k + m, i, j, None] * x[:, :, yi, xj]
    return y


@pytest.mark.parametrize("s,k,size", [(2, 3, (3, 4)), (3, 5, (2, 3)), (2, 5, (4, 3))])
def test_matches_explicit_loop_reference(s, k, size):
    op = _randomised(Carafe(2, s, k_up=k, k_enc=3, compressed_channels=3).double())
    x = torch.randn(2, 2, *size, dtype=D, generator=_gen(1))
    with torch.no_grad():
        kernels = op.kernels(x)
        ref_k = reference_kernels(op, x)
        torch.testing.assert_close(kernels, ref_k, atol=1e-12, rtol=0)
        assert kernels.std() > 0.05  # the kernels really differ from pixel to pixel
        torch.testing.assert_close(op(x), reference_reassembly(x, ref_k, s), atol=1e-12, rtol=0)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (4, 4)])
def test_one_hot_centre_kernel_is_nearest_upsampling(s, size):
    k = 3
    x = torch.randn(2, 3, *size, dtype=D, generator=_gen(2))
    kernels = torch.zeros(2, k * k, size[0] * s, size[1] * s, dtype=D)
    kernels[:, k * k // 2] = 1
    torch.testing.assert_close(carafe(x, kernels, s), F.interpolate(x, scale_factor=s, mode="nearest"), atol=0, rtol=0)


def test_module_identity_check_passes():
    assert "nearest upsampling" in Carafe.identity_check()


def test_uniform_kernels_are_a_box_filter_of_the_nearest_upsampling():
    """A zero encoder gives uniform kernels: the k×k mean (zero padded) of the source neighbourhood."""
    s, k = 2, 3
    op = Carafe(2, s, k_up=k, compressed_channels=3).double()
    with torch.no_grad():
        op.encoder.weight.zero_()
    x = torch.randn(1, 2, 4, 5, dtype=D, generator=_gen(3))
    box = F.avg_pool2d(x, k, 1, k // 2, count_include_pad=True)
    torch.testing.assert_close(op(x), F.interpolate(box, scale_factor=s, mode="nearest"), atol=1e-12, rtol=0)


def test_gradcheck_input_and_every_parameter():
    op = _randomised(Carafe(2, 2, k_up=3, k_enc=1, compressed_channels=2).double(), 0.3)
    x = torch.randn(1, 2, 3, 3, dtype=D, generator=_gen(4))
    assert gradcheck_operator(op, x, fast_mode=False)


def test_kind_metadata_and_refusals():
    cls = get_op("carafe")
    assert cls is Carafe and cls.kind == "upsampler" and cls.guide == "none"
    with pytest.raises(OpRegistryError, match="kind 'upsampler', not a convolution"):
        create_op("carafe", 4, 4, 3)
    with pytest.raises(TypeError, match="kind 'upsampler'"):
        Carafe.from_conv(nn.Conv2d(4, 4, 3))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(SwapError, match=r"'carafe' is of kind 'upsampler', not a convolution"):
        swap_convs(model, "carafe")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k_up=4), "k_up must be an odd"),
        (dict(k_enc=0), "k_enc"),
        (dict(scale_factor=0), "scale_factor"),
        (dict(compressed_channels=0), "compressed_channels"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Carafe(4, **kwargs)


def test_input_errors():
    op = Carafe(4, 2, compressed_channels=4)
    with pytest.raises(ValueError, match="takes no guide"):
        op(torch.randn(1, 4, 5, 5), torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="input has 3 channels"):
        op(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="do not fit input"):
        carafe(torch.randn(1, 4, 5, 5), torch.ones(1, 9, 5, 5) / 9, 2)


# --------------------------------------------------------------------------------------------------
# check-op runs the upsampler checks, and they can fail


class _WrongShape(Carafe):
    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        return super().adaptive_forward(x, guide)[..., 1:]


class _NotNearest(Carafe):
    """Reassembles around the wrong source pixel: the one-hot identity must catch it."""

    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        return carafe(torch.roll(x, 1, -1), self.kernels(x), self.scale_factor)


class _BatchMixing(Carafe):
    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        return super().adaptive_forward(x - x.mean(0, keepdim=True), guide)


def test_check_op_runs_the_upsampler_checks():
    from adaptconv.ops.conformance import run_checks

    results = {r.name: r for r in run_checks("carafe")}
    assert all(r.status == "pass" for r in results.values()), results
    assert {"output shapes", "identity", "gradients (gradcheck)", "not a conv (from_conv refuses)"} <= set(results)
    assert "from_conv" not in results  # a conv-only check


@pytest.mark.parametrize(
    "cls,check",
    [
        (_WrongShape, "output shapes"),
        (_NotNearest, "identity"),
        (_BatchMixing, "batch independence"),
    ],
)
def test_upsampler_checks_catch_broken_operators(cls, check):
    from adaptconv.ops.conformance import run_checks

    cls.name = cls.__name__
    results = {r.name: r for r in run_checks(cls, only=[check])}
    assert results[check].status == "fail", results[check]


def test_registry_checks_the_kind():
    from adaptconv.ops.base import AdaptiveModule
    from adaptconv.ops.registry import _add, list_ops

    class ConvKindModule(AdaptiveModule):
        kind = "conv"
        paper = "x"

    with pytest.raises(OpRegistryError, match="kind='conv'"):
        _add("conv_kind_module", ConvKindModule, "test")
    assert {"carafe"} <= set(list_ops("upsampler")) and "carafe" not in list_ops("conv")
    assert "paccrf" in list_ops("refiner")
    with pytest.raises(ValueError, match="kind must be one of"):
        list_ops("pooling")
