"""Latency: statistics on injected samples (exact), the CPU timer on a known sleep (sanity bounds only),
the CUDA event path against a fake CUDA runtime, and the inference / training step factories."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from adaptconv.measure import LatencyResult, inference_step, measure_latency, summarize, training_step


# --------------------------------------------------------------------------------------------------
# Statistics, exactly
def test_summarize_exact_on_injected_samples():
    s = summarize([9, 1, 5, 3, 7, 2, 8, 4, 6])  # 1..9, shuffled
    assert s.n == 9
    assert s.median == 5.0
    assert (s.q1, s.q3, s.iqr) == (3.0, 7.0, 4.0)
    assert s.rel_iqr == pytest.approx(0.8)
    assert s.mean == 5.0
    assert s.std == pytest.approx(np.std(np.arange(1, 10), ddof=1))
    assert (s.min, s.max) == (1.0, 9.0)
    assert s.noisy is True
    assert s.ci95_low <= s.median <= s.ci95_high
    assert 1.0 <= s.ci95_low and s.ci95_high <= 9.0


def test_summarize_even_count_and_quartile_interpolation():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert s.median == 2.5
    assert (s.q1, s.q3) == (1.75, 3.25)  # numpy's linear interpolation


def test_noisy_flag_follows_relative_iqr():
    quiet = summarize([1.0] * 10 + [1.02] * 10)  # IQR/median = 0.02 / 1.01
    assert not quiet.noisy and quiet.rel_iqr == pytest.approx(0.02 / 1.01)
    noisy = summarize([1.0] * 10 + [1.3] * 10)  # IQR/median = 0.3 / 1.15
    assert noisy.noisy
    assert not summarize([1.0] * 10 + [1.3] * 10, noisy_threshold=0.5).noisy
    assert summarize([2.0] * 7).iqr == 0.0 and not summarize([2.0] * 7).noisy


def test_bootstrap_ci_is_seeded_and_contains_the_median():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=200)
    a, b = summarize(x, seed=3), summarize(x, seed=3)
    assert (a.ci95_low, a.ci95_high) == (b.ci95_low, b.ci95_high)
    assert a.ci95_low < a.median < a.ci95_high
    assert a.ci95_high - a.ci95_low < a.q3 - a.q1  # the median's CI is narrower than the spread
    single = summarize([0.5])
    assert (single.ci95_low, single.median, single.ci95_high, single.std) == (0.5, 0.5, 0.5, 0.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0, 2.0]]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        summarize(bad)


# --------------------------------------------------------------------------------------------------
# CPU timing
def test_cpu_latency_of_a_known_sleep():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    r = measure_latency(fn, device="cpu", warmup=2, repeats=8, min_time_s=0.0)
    assert isinstance(r, LatencyResult)
    assert r.timer == "perf_counter" and r.device == "cpu"
    assert r.block_size == 1  # 2 ms is far above the CPU block target
    assert r.n == len(r.samples_s) == 8
    assert len(calls) == r.warmup + r.calibration_iters + r.timed_iters
    # sanity bound only (a loaded machine may sleep much longer): never shorter than asked
    assert 0.0019 <= r.median_s < 0.2
    assert r.min_s <= r.median_s <= r.max_s
    assert r.ci95_low_s <= r.median_s <= r.ci95_high_s
    assert r.threads == torch.get_num_threads()
    assert set(r.backends) >= {"cudnn_benchmark", "tf32_matmul", "tf32_cudnn"}
    d = json.loads(json.dumps(r.as_dict()))
    assert len(d["samples_s"]) == 8 and d["block_size"] == 1 and d["warmup"] == 2
    assert {"cudnn_benchmark", "tf32_matmul", "tf32_cudnn"} <= set(d["backends"])


def test_fast_function_is_timed_in_blocks():
    calls = []
    r = measure_latency(lambda: calls.append(1), device="cpu", warmup=3, repeats=5, min_time_s=0.0)
    assert r.block_size > 1
    assert r.timed_iters == r.block_size * r.n
    assert len(calls) == 3 + r.calibration_iters + r.timed_iters
    assert r.median_s < 1e-3


def test_fixed_block_skips_calibration():
    calls = []
    r = measure_latency(lambda: calls.append(1), device="cpu", warmup=0, repeats=4, min_time_s=0.0, block=7)
    assert (r.block_size, r.calibration_iters, r.n, len(calls)) == (7, 0, 4, 28)


def test_min_time_extends_and_max_time_caps_sampling():
    r = measure_latency(lambda: time.sleep(0.001), device="cpu", warmup=0, repeats=3, min_time_s=0.03)
    assert r.n > 3 and sum(r.samples_s) * r.block_size >= 0.03
    capped = measure_latency(
        lambda: time.sleep(0.001), device="cpu", warmup=0, repeats=3, min_time_s=100.0, max_time_s=0.02
    )
    assert 3 <= capped.n < 100


def test_thread_count_is_set_recorded_and_restored():
    before = torch.get_num_threads()
    seen = []
    r = measure_latency(
        lambda: seen.append(torch.get_num_threads()),
        device="cpu",
        warmup=1,
        repeats=2,
        min_time_s=0.0,
        block=1,
        threads=2,
    )
    assert r.threads == 2 and set(seen) == {2}
    assert torch.get_num_threads() == before


def test_gc_is_paused_while_timing_and_restored():
    import gc

    states = []
    measure_latency(lambda: states.append(gc.isenabled()), device="cpu", warmup=0, repeats=2, min_time_s=0.0, block=1)
    assert states == [False, False] and gc.isenabled()


def test_bad_arguments():
    with pytest.raises(ValueError):
        measure_latency(lambda: None, device="cpu", repeats=0)
    with pytest.raises(ValueError):
        measure_latency(lambda: None, device="cpu", block=0)
    with pytest.raises(ValueError):
        measure_latency(lambda: None, device="meta")


# --------------------------------------------------------------------------------------------------
# CUDA path, against a fake CUDA runtime (the real one is exercised where a GPU exists)
class _FakeCuda:
    """A GPU whose clock advances by ``per_iter_s`` per fn() call; counts host synchronisations."""

    def __init__(self, per_iter_s: float):
        self.per_iter_s = per_iter_s
        self.gpu_clock = 0.0
        self.event_syncs = 0
        self.device_syncs = 0
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing, "timing events must be created with enable_timing=True"
                self.t = None

            def record(self, stream=None):
                self.t = fake.gpu_clock

            def synchronize(self):
                fake.event_syncs += 1

            def elapsed_time(self, end):
                assert self.t is not None and end.t is not None
                return (end.t - self.t) * 1e3  # milliseconds, like CUDA

        self.Event = Event

    def fn(self):
        self.gpu_clock += self.per_iter_s

    def synchronize(self, device=None):
        self.device_syncs += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    import contextlib

    fake = _FakeCuda(per_iter_s=2e-4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    monkeypatch.setattr(torch.cuda, "synchronize", fake.synchronize)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    return fake


def test_cuda_path_uses_events_per_block_and_one_sync_per_block(fake_cuda):
    calls = []

    def fn():
        calls.append(1)
        fake_cuda.fn()

    r = measure_latency(fn, device="cuda", warmup=5, repeats=10, min_time_s=0.0, check_host=False)
    assert r.timer == "cuda-event" and r.device == "cuda"
    # every sample is GPU time / block size: exactly the fake kernel time
    assert r.samples_s == pytest.approx([2e-4] * r.n)
    assert r.median_s == pytest.approx(2e-4)
    # blocks last >= ~1 ms, and not much longer
    assert r.block_size * 2e-4 >= 1e-3 - 1e-12
    assert (r.block_size - 1) * 2e-4 < 1e-3
    # one host wait per timed block (plus one per calibration round), never one per iteration
    calibration_rounds = int(math.log2(r.calibration_iters + 1))
    assert fake_cuda.event_syncs == r.n + calibration_rounds
    assert fake_cuda.event_syncs < len(calls) / 2
    assert fake_cuda.device_syncs == 1  # after the warm-up only
    assert len(calls) == 5 + r.calibration_iters + r.timed_iters


def test_cuda_path_with_a_slow_kernel_uses_blocks_of_one(fake_cuda):
    fake_cuda.per_iter_s = 5e-3
    r = measure_latency(fake_cuda.fn, device="cuda", warmup=1, repeats=4, min_time_s=0.0, check_host=False)
    assert r.block_size == 1 and r.calibration_iters == 1
    assert r.samples_s == pytest.approx([5e-3] * 4)
    assert fake_cuda.event_syncs == 4 + 1


def test_cuda_requested_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        measure_latency(lambda: None, device="cuda")


# --------------------------------------------------------------------------------------------------
# Step factories
def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_inference_step_eval_mode_without_autograd():
    model = _model().train()
    x = torch.randn(4, 6)
    out = inference_step(model, x)()
    assert not model.training and not out.requires_grad and torch.is_inference(out)
    out2 = inference_step(model.train(), x, grad_mode="no_grad")()
    assert not model.training and not out2.requires_grad and not torch.is_inference(out2)
    torch.testing.assert_close(out, out2)
    with pytest.raises(ValueError):
        inference_step(model, x, grad_mode="enable")


def test_training_step_updates_parameters_and_clears_gradients():
    model = _model().eval()
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    step = training_step(model, x, lambda out: nn.functional.mse_loss(out, y), opt)
    loss = step()
    assert model.training
    assert loss.dim() == 0 and not loss.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # the default loss (mean of squares) also works, and the step can be timed
    r = measure_latency(training_step(model, x, None, opt), device="cpu", warmup=1, repeats=3, min_time_s=0.0)
    assert r.n == 3


def test_step_inputs_as_tuple_and_dict():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, a, b=None):
            return self.lin(a) + (0 if b is None else b)

    m, a, b = Two(), torch.randn(2, 3), torch.ones(2, 3)
    torch.testing.assert_close(inference_step(m, (a, b))(), inference_step(m, {"a": a, "b": b})())
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    training_step(m, {"a": a}, None, opt)()
