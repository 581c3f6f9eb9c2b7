"""What every operator inherits from adaptconv.ops.base.OperatorBase: device=/dtype= and the training-step hook."""

import inspect

import pytest
import torch
from torch import nn

from adaptconv.ops.base import AdaptiveConv2d, notify_train_step
from adaptconv.trial.config import _op_options


class Plain(AdaptiveConv2d):
    """An operator written without a word about devices or dtypes."""

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
        scale: float = 1.0,
        guide_channels=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            guide_channels=guide_channels,
        )
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *self.kernel_size))
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.steps: list = []

    def adaptive_forward(self, x, guide):
        return nn.functional.conv2d(x, self.weight * self.scale, None, self.stride, self.padding)

    def on_train_step(self, step, total):
        self.steps.append((step, total))


class Child(Plain):
    """A subclass of a subclass: the factory arguments reach the outermost constructor once."""

    def __init__(self, *args, extra: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = nn.Linear(extra, extra)


def test_every_operator_takes_device_and_dtype_without_writing_them():
    for cls in (Plain, Child):
        params = inspect.signature(cls.__init__).parameters
        assert params["device"].kind is inspect.Parameter.KEYWORD_ONLY and params["dtype"].default is None
        torch.manual_seed(0)
        a = cls(2, 3, 3)
        torch.manual_seed(0)
        b = cls(2, 3, 3, dtype=torch.float64)
        assert b.weight.dtype == b.scale.dtype == torch.float64 and b.count.dtype == torch.long  # floats only
        assert torch.equal(b.weight, a.weight.double())
        m = cls(2, 3, 3, device="meta")
        assert {t.device.type for t in [*m.parameters(), *m.buffers()]} == {"meta"}
    # the options a trial config may set leave them out
    assert set(_op_options(Child)) == {"extra"} and set(_op_options(Plain)) == {"scale"}
    with pytest.raises(ValueError, match=r"dtype must be a floating-point torch\.dtype, got torch\.int64"):
        Plain(2, 3, 3, dtype=torch.int64)


def test_build_like_initialises_on_the_cpu_in_the_convs_dtype():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    torch.manual_seed(0)
    op = Plain.build_like(conv)
    torch.manual_seed(0)
    ref = Plain(2, 3, 3, padding=1)
    assert op.weight.dtype == torch.float64 and torch.equal(op.weight, ref.weight.double())


def test_the_training_loop_hook_reaches_every_operator():
    net = nn.Sequential(Plain(2, 2, 1), nn.ReLU(), nn.Sequential(Child(2, 2, 1)))
    notify_train_step(net, 3, 10)
    assert net[0].steps == [(3, 10)] and net[2][0].steps == [(3, 10)]
