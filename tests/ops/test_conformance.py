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

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        *,
        guide_channels=None,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, 1, groups, bias, guide_channels=guide_channels
        )


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


class IgnoresDilation(Conv2d):
    """Issue 14 item 7: claims dilation, computes an undilated conv and crops it to nn.Conv2d's shape,
    and its from_conv is declared inexact, so neither the shape check nor from_conv can see it."""

    paper = "broken on purpose"
    function_preserving = False
    from_conv_note = "copies the weights (declared inexact)"

    def adaptive_forward(self, x, guide):
        import torch.nn.functional as F

        y = F.conv2d(x, self.weight, self.bias, 1, self.padding, 1, self.groups)
        crops = [(d - 1) * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel_size)]
        y = y[..., crops[0] : y.shape[-2] - crops[0], crops[1] : y.shape[-1] - crops[1]]
        return y[..., :: self.stride[0], :: self.stride[1]]

    @classmethod
    def from_conv(cls, conv, **options):
        op = cls.build_like(conv, **options)
        op.copy_conv_weight(conv)
        return op


class AveragesForStride(Conv2d):
    """Computes at stride 1 and average-pools to the strided shape."""

    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        import torch.nn.functional as F

        y = F.conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)
        return F.avg_pool2d(y, self.stride, self.stride, ceil_mode=True) if self.stride != (1, 1) else y


class PadsTheOutput(Conv2d):
    """Ignores padding and zero-pads the output to the expected shape."""

    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        import torch.nn.functional as F

        y = F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        want = self.output_size(*x.shape[-2:])
        dh, dw = want[0] - y.shape[-2], want[1] - y.shape[-1]
        return F.pad(y, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class IgnoresGroups(Conv2d):
    """Guided, and mixes every input channel into every output group (the weight repeated)."""

    paper = "broken on purpose"
    guide = "optional"

    def adaptive_forward(self, x, guide):
        import torch.nn.functional as F

        w = self.weight.repeat(1, self.groups, 1, 1) * (1 + guide.mean())
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)


class IgnoresBias(Conv2d):
    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        import torch.nn.functional as F

        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return y + 0 * self.bias.sum() if self.bias is not None else y


def test_an_operator_that_ignores_dilation_passed_every_other_check():
    """The blind spot of issue 14: only the argument check sees it."""
    IgnoresDilation.name = "IgnoresDilation"
    results = {r.name: r for r in run_checks(IgnoresDilation)}
    assert results["arguments take effect"].status == "fail"
    assert "ignores dilation" in results["arguments take effect"].detail
    assert all(r.ok for n, r in results.items() if n != "arguments take effect"), results


@pytest.mark.parametrize(
    "cls,word",
    [(AveragesForStride, "stride=2"), (PadsTheOutput, "border"), (IgnoresGroups, "groups=2"), (IgnoresBias, "bias")],
)
def test_the_argument_check_catches_each_ignored_argument(cls, word):
    cls.name = cls.__name__
    (result,) = run_checks(cls, only=["arguments take effect"])
    assert result.status == "fail" and word in result.detail, result


@pytest.mark.parametrize(
    "cls,check",
    [
        (WrongShape, "output shapes"),
        (BatchDependent, "batch independence"),
        (SilentDilation, "unsupported arguments raise"),
        (IgnoresGuide, "guide"),
        (LossyFromConv, "from_conv"),
        (IgnoresDilation, "arguments take effect"),
    ],
)
def test_checks_catch_broken_operators(cls, check):
    cls.name = cls.__name__
    results = {r.name: r for r in run_checks(cls)}
    assert results[check].status == "fail", results[check]


@pytest.mark.parametrize(
    "build",
    [
        lambda: __import__("adaptconv").create_op("pac", 4, 4, 3, padding=1),
        lambda: __import__("adaptconv").get_op("carafe")(4, scale_factor=2),
        lambda: __import__("adaptconv").ops.pac.PacConvTranspose2d(
            4, 4, 3, stride=2, padding=1, output_padding=1, guide_channels=3
        ),
    ],
    ids=["pac", "carafe", "pac-transpose"],
)
def test_an_input_in_another_dtype_is_refused_naming_the_operator_and_both_dtypes(build):
    """Issue 14 item 8: was "expected scalar type Double but found Float" from deep inside PAC."""
    op = build()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    args = (x, torch.rand(1, 3, 16, 16, dtype=torch.float64)) if "Transpose" in type(op).__name__ else (x,)
    with pytest.raises(TypeError) as info:
        op(*args)
    message = str(info.value)
    assert "torch.float64" in message and "torch.float32" in message, message
    assert (getattr(op, "name", "") or type(op).__name__) in message, message
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast mixes dtypes on purpose: not refused
        op(*(a.float() for a in args))
