"""Peak memory of a phase (an inference pass, a training step), on CUDA and on the CPU.

What the numbers mean (the same on both devices, so CPU and GPU records compare):

- ``peak_bytes``: the highest amount of tensor memory that was live *above what was live when the
  phase started* (activations, autograd buffers, gradients, workspaces; not the parameters and inputs
  that existed before). This is what an unfold's k² blow-up shows up in.
- ``method``: how it was measured.
  - ``cuda-allocator``: ``torch.cuda.reset_peak_memory_stats`` → run → ``max_memory_allocated`` minus
    ``memory_allocated`` at the start. CUDA records also carry ``peak_allocated_bytes`` and
    ``peak_reserved_bytes`` (absolute, as the allocator reports them).
  - ``cpu-profiler``: PyTorch's profiler with ``profile_memory=True`` reports every CPU tensor
    allocation and free in order; the running sum's maximum is the peak. It counts tensor storage
    only (not the Python heap or library workspaces outside PyTorch's allocator).

    One difference from the CUDA number: the profiler cannot see the *free* of a block allocated
    before profiling started (it logs "Memory block of unknown size was allocated before the profiling
    started"), so memory the phase releases from before its start is not netted out. The CPU number is
    then the peak of the memory the phase itself allocated, which can exceed the CUDA number (e.g. a
    step that begins by freeing the previous step's gradients). :func:`adaptconv.measure.training_step`
    clears gradients at the *end* of the step so both devices measure the same thing; warm a phase up
    once before measuring it (optimizer state, caches) for the same reason.

Both methods run ``gc.collect()`` first, so garbage from earlier code is not freed (CUDA) or
invisibly freed (CPU) in the middle of the measured phase.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

# Kineto (the profiler's backend) logs every start/stop to stderr; keep trial logs readable. Its
# "profiler_start/stop" lines are at level 5 (USDT) in torch >= 2.10, so 6 is needed to hide them; the
# variable is read when the profiler is first used in the process.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")


@dataclass
class MemoryPeak:
    peak_bytes: int
    method: str
    device: str
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_peak(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


def measure_peak_memory(fn: Callable[[], object], device: torch.device | str) -> MemoryPeak:
    """Run ``fn`` once and return the peak tensor memory it needed (see the module docstring)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return MemoryPeak(peak - start, "cuda-allocator", str(device), peak, torch.cuda.max_memory_reserved(device))
    if device.type == "cpu":
        return MemoryPeak(_cpu_peak(fn), "cpu-profiler", "cpu")
    raise ValueError(f"peak memory: unsupported device {device}")
