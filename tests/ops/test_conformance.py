"""Every registered operator passes the conformance checks; the checks themselves can fail."""

import pytest
import torch

from adaptconv import AdaptiveConv2d, list_ops
from adaptconv.ops.conformance import run_checks
from adaptconv.ops.conv import Conv2d


@pytest.mark.parametrize("name", list_ops())
def test_operator_conforms(name):
    failures = [f"{r.name}: {r.detail}" for r in run_checks(name) if not r.ok]
    assert not failures, "\n".join(failures)


class WrongShape(Conv2d):
    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        return super().adaptive_forward(x, guide)[..., 1:, :]


class BatchDependent(Conv2d):
    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        return super().adaptive_forward(x - x.mean(0, keepdim=True), guide)


class SilentDilation(AdaptiveConv2d):
    """Claims not to support dilation, and ignores it instead of refusing it."""
    paper = "broken on purpose"
    supports = frozenset({"stride", "padding", "groups", "bias"})

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, guide_channels=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, 1, groups, bias,
                         guide_channels=guide_channels)


class IgnoresGuide(Conv2d):
    paper = "broken on purpose"
    guide = "optional"


class LossyFromConv(Conv2d):
    paper = "broken on purpose"

    @classmethod
    def from_conv(cls, conv, **options):
        op = cls(**cls.conv_kwargs(conv), **options)  # built in float32: the copy loses precision
        with torch.no_grad():
            op.weight.copy_(conv.weight)
            op.bias.copy_(conv.bias)
        return op.to(conv.weight.dtype)


@pytest.mark.parametrize("cls,check", [
    (WrongShape, "output shapes"), (BatchDependent, "batch independence"),
    (SilentDilation, "unsupported arguments raise"), (IgnoresGuide, "guide"), (LossyFromConv, "from_conv"),
])
def test_checks_catch_broken_operators(cls, check):
    cls.name = cls.__name__
    results = {r.name: r for r in run_checks(cls)}
    assert results[check].status == "fail", results[check]
