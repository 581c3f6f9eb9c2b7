"""Peak memory: a known allocation is measured to within a few %, an unfold shows its k² blow-up while a
conv does not (ratios, not absolute numbers), and the CUDA path against a fake allocator."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.measure import inference_step, measure_peak_memory, training_step


def test_cpu_peak_of_a_known_allocation():
    nbytes = 8_000_000

    def fn():
        a = torch.empty(nbytes, dtype=torch.uint8)
        a.fill_(1)
        return None

    m = measure_peak_memory(fn, "cpu")
    assert m.method == "cpu-profiler" and m.device == "cpu"
    assert m.peak_bytes == pytest.approx(nbytes, rel=0.03)
    json.dumps(m.as_dict())


def test_cpu_peak_is_the_maximum_not_the_sum():
    def fn():
        a = torch.empty(3_000_000, dtype=torch.uint8)
        del a
        b = torch.empty(2_000_000, dtype=torch.uint8)
        c = torch.empty(2_000_000, dtype=torch.uint8)
        return b, c

    assert measure_peak_memory(fn, "cpu").peak_bytes == pytest.approx(4_000_000, rel=0.03)
    assert measure_peak_memory(lambda: None, "cpu").peak_bytes == 0


def test_unfold_shows_k_squared_blow_up_and_conv_does_not():
    x = torch.randn(2, 16, 32, 32)
    w = torch.randn(16, 16, 3, 3)
    unfold = measure_peak_memory(lambda: F.unfold(x, 3, padding=1), "cpu").peak_bytes
    conv = measure_peak_memory(lambda: F.conv2d(x, w, padding=1), "cpu").peak_bytes
    in_bytes = x.numel() * x.element_size()
    assert unfold >= 9 * in_bytes
    assert conv < unfold / 3


def test_training_step_peak_exceeds_inference_peak():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1))
    x = torch.randn(2, 4, 24, 24)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    step = training_step(model, x, None, opt)
    step()  # warm-up
    infer = measure_peak_memory(inference_step(model, x), "cpu").peak_bytes
    train = measure_peak_memory(step, "cpu").peak_bytes
    assert train > infer > 0


def test_cuda_path_reports_the_peak_above_the_start(monkeypatch):
    state = {"allocated": 1000, "peak": 5000, "reset": 0, "sync": 0}

    def reset(device=None):
        state["reset"] += 1
        state["peak"] = state["allocated"]

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: state.__setitem__("sync", state["sync"] + 1))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 8192)

    def fn():  # allocates 700 bytes on top of the 1000 already there, then frees them
        state["peak"] = max(state["peak"], state["allocated"] + 700)

    m = measure_peak_memory(fn, "cuda:0")
    assert m.method == "cuda-allocator" and m.device == "cuda:0"
    assert state["reset"] == 1 and state["sync"] == 2
    assert m.peak_bytes == 700
    assert (m.peak_allocated_bytes, m.peak_reserved_bytes) == (1700, 8192)


def test_unsupported_device():
    with pytest.raises(ValueError):
        measure_peak_memory(lambda: None, "meta")
