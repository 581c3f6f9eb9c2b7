"""Deformable convolution with non-finite values: the output the operators return never comes from a
non-finite offset.

torchvision's CPU kernel turns each offset into an integer pixel index; a NaN one is undefined
behaviour and segfaults at random (issue 14: ``x[0,0,3,3] = nan`` killed the process, exit 139), so it
never sees one. The compiled CPU kernel of :mod:`adaptconv.ops.cpu_deform` is safe with them
(``tests/ops/test_cpu_deform.py``) and counts them while sampling, so the operators give it the raw
offsets and redo the call with sanitised ones only when it found some. Either way the operators
sample non-finite offsets as 0 and make the output pixels that had one NaN, as ``nn.Conv2d`` would;
both kernels are checked.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from adaptconv.ops import config, cpu_deform, create_op
from adaptconv.ops import deform as deform_module


@pytest.fixture(params=["compiled", "torchvision"])
def checked_kernel(request, monkeypatch):
    """The sampling kernel (compiled, or torchvision's) behind a check: torchvision's must never see a
    non-finite offset; the compiled one may (it counts them), but then it must be called again with
    finite ones, and that last call's output is the one used. Records whether each call's offsets
    were finite."""
    calls = []
    compiled = request.param == "compiled"
    if compiled and not cpu_deform.available():
        pytest.skip(f"deformable CPU kernels: {cpu_deform.status()}")
    if not compiled:
        monkeypatch.setattr(config, "cpu_kernels", False)
    name = "deform_conv2d" if compiled else "_tv_deform_conv2d"
    owner = cpu_deform if compiled else deform_module
    real = getattr(owner, name)

    def kernel(x, offset, *args, **kwargs):
        finite = bool(torch.isfinite(offset).all())
        assert finite or compiled, "a non-finite offset reached torchvision's sampling kernel"
        calls.append(finite)
        return real(x, offset, *args, **kwargs)

    monkeypatch.setattr(owner, name, kernel)
    return calls


@pytest.mark.parametrize("name", ["deform", "mdeform"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_input_never_reaches_the_kernel(checked_kernel, name, bad):
    torch.manual_seed(0)
    op = create_op(name, 4, 6, 3, padding=1)
    torch.nn.init.normal_(op.offset_conv.weight)  # offsets depend on the input
    x = torch.randn(2, 4, 10, 10, requires_grad=True)
    with torch.no_grad():
        x[0, 1, 3, 3] = bad
    y = op(x)
    assert checked_kernel, "the kernel was not called"
    assert checked_kernel[-1], "the output came from a call with non-finite offsets"
    # the pixels whose offsets were not finite are NaN in every channel; the other image is untouched
    assert y[0, :, 3, 3].isnan().all()
    assert torch.isfinite(y[1]).all()
    clean = op(x.detach()[1:])
    torch.testing.assert_close(y[1:], clean)
    y.nan_to_num().sum().backward()  # backward runs on the sanitised offsets too


def test_functional_forms_sanitise_explicit_offsets(checked_kernel):
    x = torch.randn(1, 2, 6, 6)
    w = torch.randn(3, 2, 3, 3)
    offset = torch.zeros(1, 18, 6, 6)
    offset[0, 5, 2, 4] = float("nan")
    y = deform_module.deform_conv2d(x, offset, w, padding=1)
    assert checked_kernel[-1], "the output came from a call with non-finite offsets"
    assert y[0, :, 2, 4].isnan().all()
    finite = torch.ones(6, 6, dtype=torch.bool)
    finite[2, 4] = False
    # everywhere else it is the plain convolution (zero offsets)
    torch.testing.assert_close(y[0][:, finite], torch.nn.functional.conv2d(x, w, padding=1)[0][:, finite])
    mask = torch.ones(1, 9, 6, 6)
    y2 = deform_module.modulated_deform_conv2d(x, offset, mask, w, padding=1)
    torch.testing.assert_close(y2, y, equal_nan=True)


def test_the_issue_command_no_longer_crashes():
    """The exact reproduction from issue 14, in a child process (a segfault must not take pytest down)."""
    code = (
        "import torch,adaptconv;op=adaptconv.create_op('deform',8,8,3,padding=1).eval();"
        "x=torch.randn(2,8,16,16);x[0,0,3,3]=float('nan');y=op(x);"
        "print(int(y.isnan().any(dim=1).sum()))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert int(done.stdout.strip()) > 0  # NaN propagated to the neighbourhood, as a conv's would


def test_a_diverging_deform_trial_is_recorded_as_diverged():
    from adaptconv.trial import run_trial

    # lr 1e30 sends the weights, then the offsets, to inf/NaN within a step or two (issue 14: the
    # process died with a segfault instead of recording "diverged")
    record = run_trial(
        {
            "task": "classification",
            "dataset": "digits",
            "backbone": "simplecnn-s",
            "op": "deform",
            "steps": 6,
            "batch_size": 8,
            "threads": 1,
            "optimizer": {"name": "sgd", "lr": 1.0e30},
            "eval_points": 1,
            "measure": {"latency": False, "memory": False, "flops": False},
        }
    )
    assert record["status"] == "diverged", record.get("error")
    assert "non-finite loss" in record["error"]["message"]


def test_huge_finite_offsets_are_not_taken_for_non_finite():
    """The fast check sums the offsets; a finite sum overflowing to inf must not NaN any pixel.
    (Compiled kernel only: torchvision's turns a 3e38 offset into an out-of-range integer.)"""
    if not cpu_deform.available():
        pytest.skip(f"deformable CPU kernels: {cpu_deform.status()}")
    x = torch.randn(1, 2, 6, 6)
    w = torch.randn(3, 2, 3, 3)
    offset = torch.zeros(1, 18, 6, 6)
    offset[0, 0, 1, 1] = offset[0, 2, 1, 1] = 3e38  # finite, but their float32 sum is inf
    assert torch.isfinite(offset).all() and not torch.isfinite(offset.sum())
    y = deform_module.deform_conv2d(x, offset, w, padding=1)
    assert torch.isfinite(y).all()
    # elsewhere the plain convolution; at (1, 1) taps 0 and 1 read 0 (their dy puts them far outside)
    keep = torch.ones(6, 6, dtype=torch.bool)
    keep[1, 1] = False
    torch.testing.assert_close(y[0][:, keep], torch.nn.functional.conv2d(x, w, padding=1)[0][:, keep])
    w2 = w.clone()
    w2[:, :, 0, :2] = 0
    torch.testing.assert_close(y[0, :, 1, 1], torch.nn.functional.conv2d(x, w2, padding=1)[0, :, 1, 1])
