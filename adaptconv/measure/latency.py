"""Latency of one iteration of a callable, measured the way the protocol asks.

- Warm-up first (``warmup`` iterations, which also absorbs lazy initialisation and torch.compile),
  then a short calibration that picks the block size, then at least ``repeats`` timed samples (more
  while the timed total is below ``min_time_s``, never more once ``max_time_s`` is spent).
- **CUDA**: a CUDA event is recorded before and after a *block* of iterations and the host waits on
  the end event once per block; a sample is the block's event time divided by the block size. The
  block is sized so a block lasts at least ``block_target_s`` (1 ms): a synchronisation after every
  iteration would inflate small kernels, and a host timer without one measures only the launches.
  Iterations inside a block run back to back, as in a real loop (the host may launch ahead).
  Events are recorded on the current stream: work ``fn`` puts on side streams must be joined back
  into it (as any correct PyTorch code does before using the result).
- **CPU**: ``time.perf_counter`` around every iteration, or around a block when one iteration is
  shorter than ``block_target_s`` (50 µs). The thread count can be set for the measurement
  (``threads``) and is always recorded.
- Python's garbage collector is paused while timing (as ``timeit`` does).
- Statistics over the samples: median, quartiles and IQR, mean and standard deviation, a percentile
  bootstrap 95% CI of the median (numpy, seeded) and a ``noisy`` flag when IQR/median > 10%.
- The host (:mod:`.contention`): optionally a bounded wait for the machine to be quiet, then a
  calibration workload timed with the same threads, and the load of other processes over the timing;
  ``contended`` says the number is not the operator's alone (a tight IQR does not: on an oversubscribed
  CPU every sample can be equally wrong).

The record carries everything that changes the number: device, timer, block size, warm-up and
calibration counts, torch thread counts, cuDNN benchmark and TF32 flags.

:func:`inference_step` and :func:`training_step` build the zero-argument callables for the two phases
the protocol separates (forward-only inference; forward + backward + optimizer step).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from . import contention
from .environment import backend_flags

#: Relative IQR above which a measurement is flagged noisy.
NOISY_THRESHOLD = 0.10
#: Default minimum duration of a timed block.
CUDA_BLOCK_TARGET_S = 1e-3
CPU_BLOCK_TARGET_S = 5e-5
#: Upper bound on the iterations in one block.
MAX_BLOCK = 1 << 16


def _sig(x: float | None, digits: int = 6) -> float | None:
    """Round to ``digits`` significant digits (JSON-friendly, no false precision)."""
    if x is None or not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


# --------------------------------------------------------------------------------------------------
# Statistics
@dataclass
class SampleStats:
    n: int
    median: float
    q1: float
    q3: float
    iqr: float
    rel_iqr: float
    mean: float
    std: float
    min: float
    max: float
    ci95_low: float
    ci95_high: float
    noisy: bool


def summarize(
    samples: Sequence[float], *, n_boot: int = 2000, seed: int = 0, noisy_threshold: float = NOISY_THRESHOLD
) -> SampleStats:
    """Statistics of latency samples (any unit).

    Quartiles use numpy's default (linear interpolation) percentiles. The CI is the 2.5th–97.5th
    percentile of the medians of ``n_boot`` bootstrap resamples drawn with ``numpy.random.default_rng(seed)``.
    ``std`` is the sample standard deviation (ddof=1; 0 for one sample).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"summarize: need a non-empty 1-D sequence of samples, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("summarize: samples contain NaN or infinity")
    if n_boot < 1:
        raise ValueError(f"summarize: n_boot must be >= 1, got {n_boot}")
    median = float(np.median(x))
    q1, q3 = (float(v) for v in np.percentile(x, [25.0, 75.0]))
    iqr = q3 - q1
    rel_iqr = iqr / median if median > 0 else (0.0 if iqr == 0 else math.inf)
    if x.size == 1:
        lo = hi = median
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, x.size, size=(n_boot, x.size))
        boot = np.median(x[idx], axis=1)
        lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return SampleStats(
        n=int(x.size),
        median=median,
        q1=q1,
        q3=q3,
        iqr=iqr,
        rel_iqr=float(rel_iqr),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        min=float(x.min()),
        max=float(x.max()),
        ci95_low=lo,
        ci95_high=hi,
        noisy=bool(rel_iqr > noisy_threshold),
    )


# --------------------------------------------------------------------------------------------------
@dataclass
class LatencyResult:
    """Seconds per iteration. ``samples_s`` are the raw samples (one per timed block)."""

    samples_s: list[float]
    median_s: float
    q1_s: float
    q3_s: float
    iqr_s: float
    rel_iqr: float
    mean_s: float
    std_s: float
    min_s: float
    max_s: float
    ci95_low_s: float
    ci95_high_s: float
    n: int
    noisy: bool
    device: str
    timer: str  # "cuda-event" | "perf_counter"
    block_size: int
    warmup: int
    calibration_iters: int
    timed_iters: int
    threads: int
    interop_threads: int
    gc_disabled: bool
    backends: dict[str, Any] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    noisy_threshold: float = NOISY_THRESHOLD
    #: other processes competed for the device during the timing (None: the host was not checked)
    contended: bool | None = None
    #: the host around the timing: load, others' CPU use, clock, calibration, reasons (contention.HostLoad)
    host: dict[str, Any] | None = None

    @property
    def cudnn_benchmark(self) -> bool | None:
        return self.backends.get("cudnn_benchmark")

    @property
    def tf32_matmul(self) -> bool | None:
        return self.backends.get("tf32_matmul")

    @property
    def tf32_cudnn(self) -> bool | None:
        return self.backends.get("tf32_cudnn")

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    def throughput(self, batch_size: int) -> float:
        """Samples per second at the median latency for a batch of ``batch_size``."""
        return batch_size / self.median_s if self.median_s > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable; times rounded to 6 significant digits."""
        d = asdict(self)
        for key, value in d.items():
            if key.endswith("_s") and isinstance(value, float):
                d[key] = _sig(value)
        d["samples_s"] = [_sig(v) for v in self.samples_s]
        d["rel_iqr"] = _sig(self.rel_iqr, 4)
        d["unit"] = "seconds per iteration"
        return d


# --------------------------------------------------------------------------------------------------
# Timers: each returns the elapsed seconds of ``n`` back-to-back calls of ``fn``.
def _time_cpu(fn: Callable[[], Any], n: int) -> float:
    if n == 1:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def _time_cuda(fn: Callable[[], Any], n: int) -> float:
    """CUDA events around ``n`` iterations on the current stream; one host wait, on the end event."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3  # ms → s


def _calibrate(
    timer: Callable[[Callable[[], Any], int], float], fn: Callable[[], Any], target_s: float
) -> tuple[int, int]:
    """(block size, iterations spent): double a trial block until it lasts >= target_s / 2."""
    n, spent = 1, 0
    while True:
        elapsed = timer(fn, n)
        spent += n
        if elapsed >= target_s / 2 or n >= MAX_BLOCK:
            per_iter = elapsed / n
            break
        n *= 2
    if per_iter <= 0:
        return MAX_BLOCK, spent
    return int(min(MAX_BLOCK, max(1, math.ceil(target_s / per_iter)))), spent


def measure_latency(
    fn: Callable[[], Any],
    *,
    device: torch.device | str,
    warmup: int = 10,
    repeats: int = 30,
    min_time_s: float = 0.5,
    max_time_s: float = 60.0,
    block: int | None = None,
    block_target_s: float | None = None,
    threads: int | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    noisy_threshold: float = NOISY_THRESHOLD,
    disable_gc: bool = True,
    check_host: bool = True,
    quiet_wait_s: float = 0.0,
) -> LatencyResult:
    """Time ``fn`` (one iteration, no arguments) on ``device``.

    ``repeats`` is the minimum number of samples; sampling continues while the timed total is below
    ``min_time_s``, and stops adding samples beyond ``repeats`` once ``max_time_s`` (wall clock,
    timing phase only) is spent. ``block`` fixes the iterations per sample; by default it is
    calibrated so a block lasts at least ``block_target_s`` (1 ms on CUDA, 50 µs on the CPU).
    ``threads`` sets ``torch.set_num_threads`` for the measurement (restored afterwards).

    ``check_host``: time the calibration workload first and watch the other processes during the
    timing, setting ``contended`` and ``host`` (see :mod:`.contention`); ``quiet_wait_s``: before that,
    wait up to this long for a moment when no other process competes for the cores.
    """
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"measure_latency: unsupported device {device} (use 'cuda' or 'cpu')")
    if not callable(fn):
        raise TypeError(f"measure_latency: fn must be a zero-argument callable, got {type(fn).__name__}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"measure_latency: need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    if block is not None and (not isinstance(block, int) or block < 1):
        raise ValueError(f"measure_latency: block must be a positive int or None, got {block!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("measure_latency: CUDA was requested but torch.cuda.is_available() is False")

    cuda = device.type == "cuda"
    timer = _time_cuda if cuda else _time_cpu
    target = block_target_s if block_target_s is not None else (CUDA_BLOCK_TARGET_S if cuda else CPU_BLOCK_TARGET_S)
    old_threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    device_ctx = torch.cuda.device(device) if cuda else contextlib.nullcontext()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with device_ctx:
            # on CUDA one host thread launches the work: it is the one other processes can slow down
            host_threads = 1 if cuda else torch.get_num_threads()
            waited = 0.0
            if check_host and quiet_wait_s > 0:
                # before the warm-up: the wait sleeps, and the intra-op threads park while it does
                waited, _ = contention.wait_for_quiet(host_threads, quiet_wait_s)
            for _ in range(warmup):
                fn()
            if cuda:
                torch.cuda.synchronize(device)
            if disable_gc:  # as timeit does: no collection pauses inside the timed loop
                gc.disable()
            calibration = 0
            if block is None:
                block, calibration = _calibrate(timer, fn, target)
            if check_host:
                reference = contention.calibrate(device, torch.get_num_threads())
                load_before = contention.load_average()
                monitor = contention.LoadMonitor().start()
            samples: list[float] = []
            timed = 0.0
            t_start = time.perf_counter()
            while True:
                elapsed = timer(fn, block)
                samples.append(elapsed / block)
                timed += elapsed
                if len(samples) >= repeats:
                    if timed >= min_time_s or time.perf_counter() - t_start >= max_time_s:
                        break
            host = None
            if check_host:
                host = contention.host_load(
                    monitor.stop(), host_threads, reference, load_before=load_before, waited_s=waited
                )
        measured_threads = torch.get_num_threads()
        interop = torch.get_num_interop_threads()
    finally:
        if disable_gc and gc_was_enabled:
            gc.enable()
        if threads is not None:
            torch.set_num_threads(old_threads)

    stats = summarize(samples, n_boot=n_boot, seed=seed, noisy_threshold=noisy_threshold)
    return LatencyResult(
        samples_s=samples,
        median_s=stats.median,
        q1_s=stats.q1,
        q3_s=stats.q3,
        iqr_s=stats.iqr,
        rel_iqr=stats.rel_iqr,
        mean_s=stats.mean,
        std_s=stats.std,
        min_s=stats.min,
        max_s=stats.max,
        ci95_low_s=stats.ci95_low,
        ci95_high_s=stats.ci95_high,
        n=stats.n,
        noisy=stats.noisy,
        device=str(device),
        timer="cuda-event" if cuda else "perf_counter",
        block_size=block,
        warmup=warmup,
        calibration_iters=calibration,
        timed_iters=block * len(samples),
        threads=measured_threads,
        interop_threads=interop,
        gc_disabled=disable_gc,
        backends=backend_flags(),
        bootstrap={"n_boot": n_boot, "seed": seed, "ci": 0.95, "statistic": "median"},
        noisy_threshold=noisy_threshold,
        contended=host.contended if host is not None else None,
        host=host.as_dict() if host is not None else None,
    )


# --------------------------------------------------------------------------------------------------
# The two phases
def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """``model(inputs)`` for a tensor, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a mapping."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _default_loss(output: Any) -> torch.Tensor:
    """Mean of squares of every floating output tensor: a gradient reaches every output element."""
    tensors = [
        t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    if not tensors:
        raise ValueError("training_step: the model output holds no floating-point tensor to build a loss from")
    loss = tensors[0].float().square().mean()
    for t in tensors[1:]:
        loss = loss + t.float().square().mean()
    return loss


def _input_device_type(inputs: Any) -> str:
    for leaf in torch.utils._pytree.tree_leaves(inputs):
        if isinstance(leaf, torch.Tensor):
            return leaf.device.type
    return "cpu"


def inference_step(
    model: torch.nn.Module, inputs: Any, *, grad_mode: str = "inference_mode", autocast_dtype: torch.dtype | None = None
) -> Callable[[], Any]:
    """A zero-argument callable running one forward pass in eval mode without autograd.

    ``grad_mode``: "inference_mode" (default, ``torch.inference_mode``) or "no_grad". The model is put
    in eval mode by each call if it is in training mode (a cheap check), so inference and training
    callables built for the same model can be timed in any order. ``autocast_dtype`` wraps the forward
    in ``torch.autocast`` for the inputs' device type. Returns the output.
    """
    if grad_mode not in ("inference_mode", "no_grad"):
        raise ValueError(f"inference_step: grad_mode must be 'inference_mode' or 'no_grad', got {grad_mode!r}")
    grad_ctx = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad
    device_type = _input_device_type(inputs)

    def step() -> Any:
        if model.training:
            model.eval()
        amp = (
            torch.autocast(device_type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with grad_ctx(), amp:
            return call_model(model, inputs)

    return step


def training_step(
    model: torch.nn.Module,
    inputs: Any,
    loss_fn: Callable[[Any], torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    *,
    set_to_none: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running one full training step in train mode:
    forward, ``loss_fn(output)``, backward, ``optimizer.step()``, ``optimizer.zero_grad()``.

    ``loss_fn`` maps the model output to a scalar (close over targets); None uses the mean of squares
    of the output. Gradients are cleared at the end of the step, so every call (and a memory
    measurement of one call) starts without gradients. Returns the detached loss (no host sync).
    """
    if optimizer is None or not hasattr(optimizer, "step"):
        raise TypeError("training_step: pass a torch.optim optimizer over the model's parameters")
    loss_fn = loss_fn or _default_loss
    device_type = _input_device_type(inputs)

    def step() -> torch.Tensor:
        if not model.training:
            model.train()
        amp = (
            torch.autocast(device_type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with amp:
            loss = loss_fn(call_model(model, inputs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=set_to_none)
        return loss.detach()

    return step
