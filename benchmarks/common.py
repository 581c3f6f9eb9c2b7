"""Shared set-up of the pixel-adaptive benchmarks (the pytest-benchmark tests and ``report.py``).

Three implementations side by side, on the same inputs and parameters:

- ``conv``: ``nn.Conv2d`` with the same geometry (the baseline);
- ``unfold``: the operator with the straightforward unfold formulation
  (``adaptconv.ops.config.override(implementation="unfold")``; the reference kept for the tests and these
  benchmarks);
- ``lean``: the operator as it runs by default (no unfold; for PAC, Triton kernels on CUDA and the
  compiled kernels of ``adaptconv.ops.cpu_pac`` on the CPU);
- ``lean-pytorch`` (PAC on the CPU only): the lean path with those kernels off, i.e. the PyTorch
  backend (``adaptconv.ops.torch_pac``) a machine without a C++ compiler runs.

Two phases: ``forward`` (inference, ``torch.no_grad``) and ``train`` (forward + backward of a fixed
output gradient, the input requiring a gradient as in a middle layer; parameter gradients are
allocated inside the step, so they count in its memory).

Memory is ``adaptconv.measure.measure_peak_memory``: on the CPU the peak of live tensor bytes above
the start of the step (PyTorch profiler memory events), on CUDA the allocator's peak.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from adaptconv.measure.memory import measure_peak_memory
from adaptconv.ops import config, cpu_acda, cpu_deform, cpu_pac, cpu_paka
from adaptconv.ops.acda import AcdaConv2d
from adaptconv.ops.dfn import DfnConv2d
from adaptconv.ops.pac import PacConv2d
from adaptconv.ops.paka import PakaConv2d

#: Operators: the baseline and the pixel-adaptive ones. "pac-rgb" is PAC guided by a 3-channel image
#: (the joint-upsampling use); "pac" is the default self-guided layer (the guide is its 64-channel input).
OPERATORS = ("conv", "pac", "pac-rgb", "paka", "dfn", "acda")
ADAPTIVE = OPERATORS[1:]
PHASES = ("forward", "train")
#: The configuration of the issue's targets.
TARGET = dict(batch=8, channels=64, size=56, kernel=3)
#: The resolution sweep (batch 1).
SWEEP = (32, 64, 128, 256, 512)


def set_threads() -> int:
    """Set (and return) torch's intra-op threads: ``ADAPTCONV_BENCH_THREADS`` or every core."""
    n = int(os.environ.get("ADAPTCONV_BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def device() -> torch.device:
    return torch.device(os.environ.get("ADAPTCONV_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))


def implementations(op: str) -> tuple[str, ...]:
    if op == "conv":
        return ("conv",)
    if op.startswith("pac") and device().type == "cpu":
        return ("unfold", "lean", "lean-pytorch")
    return ("unfold", "lean")


def environment() -> dict:
    return dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=str(device()),
        cpu=platform.processor() or platform.machine(),
        python=platform.python_version(),
        chunk_elements=config.chunk_elements,
        pac_cpu_kernels=cpu_pac.status(),
        paka_cpu_kernels=cpu_paka.status(),
        acda_cpu_kernels=cpu_acda.status(),
        deform_cpu_kernels=cpu_deform.status(),
    )


@dataclass
class Case:
    op: str
    impl: str
    phase: str
    batch: int = TARGET["batch"]
    channels: int = TARGET["channels"]
    size: int = TARGET["size"]
    kernel: int = TARGET["kernel"]

    @property
    def label(self) -> str:
        return f"{self.op}/{self.impl}/{self.phase}/B{self.batch}-C{self.channels}-{self.size}px-k{self.kernel}"


def _module(op: str, c: int, k: int) -> nn.Module:
    p = k // 2
    if op == "conv":
        return nn.Conv2d(c, c, k, padding=p)
    if op == "pac":
        return PacConv2d(c, c, k, padding=p)
    if op == "pac-rgb":
        return PacConv2d(c, c, k, padding=p, guide_channels=3)
    if op == "paka":
        return PakaConv2d(c, c, k, padding=p)
    if op == "dfn":
        return DfnConv2d(c, c, k, padding=p)
    if op == "acda":
        return AcdaConv2d(c, c, k, padding=p)
    raise ValueError(f"unknown operator {op!r}; one of {OPERATORS}")


def build(case: Case, dev: torch.device | None = None) -> tuple[Callable[[], object], Callable[[], None]]:
    """(step, reset): ``step()`` runs one forward (or forward + backward) of ``case``; ``reset()``
    drops the gradients of the previous step (outside the measured region)."""
    dev = dev or device()
    torch.manual_seed(0)
    module = _module(case.op, case.channels, case.kernel).to(dev)
    x, guide, grad_out = perturb_and_draw(
        module, case.batch, case.channels, case.size, 3 if case.op == "pac-rgb" else 0
    )
    settings = dict(
        implementation="unfold" if case.impl == "unfold" else "lean",
        cpu_kernels=config.cpu_kernels and case.impl != "lean-pytorch",
    )
    args = (x,) if guide is None else (x, guide)
    return step_and_reset(module, args, grad_out, case.phase, lambda: config.override(**settings))


def perturb_and_draw(
    module: nn.Module, batch: int, channels: int, size: int, guide_channels: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Move every parameter of ``module`` off its initialisation, so the adaptive branches (often
    zero-initialised) produce real per-pixel kernels, and draw the input, the guide (if
    ``guide_channels``) and a fixed output gradient, all from one seeded generator, on the module's
    device."""
    dev = next(module.parameters()).device
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p))
    x = torch.randn(batch, channels, size, size, generator=gen).to(dev)
    guide = torch.rand(batch, guide_channels, size, size, generator=gen).to(dev) if guide_channels else None
    grad_out = torch.randn(batch, channels, size, size, generator=gen).to(dev)
    return x, guide, grad_out


def step_and_reset(
    module: nn.Module, args: tuple, grad_out: torch.Tensor, phase: str, context: Callable
) -> tuple[Callable[[], object], Callable[[], None]]:
    """(step, reset): ``step()`` runs one forward under ``torch.no_grad`` (``phase`` "forward") or one
    forward + backward of ``grad_out`` (the first input then requires a gradient), inside
    ``context()``; ``reset()`` drops the gradients of the previous step (outside the measured region)."""
    x = args[0]
    if phase == "forward":

        def step():
            with torch.no_grad(), context():
                return module(*args)
    else:
        x.requires_grad_(True)

        def step():
            with context():
                y = module(*args)
                y.backward(grad_out)
            return y

    def reset():
        x.grad = None
        for p in module.parameters():
            p.grad = None

    return step, reset


def time_steps(
    steps: dict[str, tuple[Callable, Callable]],
    repeats: int,
    warmup: int = 1,
    dev: torch.device | None = None,
    settle: int = 1,
    min_block_s: float = 0.002,
    warmup_rounds: int = 2,
) -> dict[str, list[float]]:
    """Seconds per step for several cases, *interleaved* (one timed block of each case per round) so
    that a change of machine load affects all of them alike.

    In every round each case first runs ``settle`` untimed steps: the case before it (an unfold
    reference allocating hundreds of MiB, say) leaves the caches and the allocator's free lists in a
    state that the first step after it pays for and that a training loop, repeating the same layers,
    never sees. Without it the lean operators measured up to 40% slower and far noisier on CPU.

    A sample is the mean of a block of consecutive steps, as many as fill ``min_block_s`` (one step for
    anything slower; the count per case is fixed after the warm-up), after ``warmup_rounds`` untimed
    rounds (on this VM the first rounds after a configuration change ran ~1.5× slower for every case,
    the allocator and the kernel's memory management settling): a single step of a 16-channel
    layer on a 32×32 map takes ~0.1 ms, where one scheduler tick or interrupt is a large part of it. On
    CUDA the block is timed with CUDA events and synchronised once (a synchronisation after every step
    inflates small kernels)."""
    dev = dev or device()
    block: dict[str, int] = {}
    for key, (step, reset) in steps.items():
        for _ in range(warmup):
            reset()
            step()
        block[key] = max(1, math.ceil(min_block_s / max(_time_block(step, reset, 1, dev), 1e-9)))
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup_rounds + repeats):
        for key, (step, reset) in steps.items():
            for _ in range(settle):
                reset()
                step()
            t = _time_block(step, reset, block[key], dev)
            if r >= warmup_rounds:
                samples[key].append(t)
    return samples


def _time_block(step: Callable, reset: Callable, n: int, dev: torch.device) -> float:
    """Seconds per step over ``n`` consecutive steps (each after its ``reset``)."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(dev)
        start.record()
        for _ in range(n):
            reset()
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    for _ in range(n):
        reset()
        step()
    return (time.perf_counter() - t0) / n


def peak_memory(step: Callable, reset: Callable, dev: torch.device | None = None) -> int:
    dev = dev or device()
    reset()
    return measure_peak_memory(step, dev).peak_bytes


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def rel_iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return float("nan")
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / statistics.median(xs)


_ISOLATED = """
import json, resource, sys, time
sys.path.insert(0, {here!r})
import torch, common
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
torch.set_num_threads({threads})
case = common.Case(**json.loads(sys.argv[1]))
step, reset = common.build(case)
peak = common.peak_memory(step, reset)
reset(); t0 = time.perf_counter(); step(); dt = time.perf_counter() - t0
print("RESULT", json.dumps(dict(peak=peak, seconds=dt)))
"""


def run_isolated(case: Case, mem_limit_bytes: int, timeout: float = 900) -> dict:
    """Peak memory and one step's time of ``case`` in a fresh process whose address space is capped
    at ``mem_limit_bytes`` (so a reference that needs more fails alone instead of exhausting the
    machine): ``{"peak", "seconds"}`` or ``{"error"}``."""
    code = _ISOLATED.format(
        here=os.path.dirname(os.path.abspath(__file__)), limit=int(mem_limit_bytes), threads=torch.get_num_threads()
    )
    fields = dict(
        op=case.op,
        impl=case.impl,
        phase=case.phase,
        batch=case.batch,
        channels=case.channels,
        size=case.size,
        kernel=case.kernel,
    )
    try:
        run = subprocess.run(
            [sys.executable, "-c", code, json.dumps(fields)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (run.stderr.strip().splitlines() or ["?"])[-1]
    if "MemoryError" in run.stderr or "bad_alloc" in run.stderr or "DefaultCPUAllocator" in run.stderr:
        return dict(error=f"out of memory (address space capped at {mem_limit_bytes / 2**30:.0f} GiB)")
    return dict(error=f"failed (exit {run.returncode}): {tail}")


def memory_limit() -> int:
    """Cap for isolated runs: ``ADAPTCONV_BENCH_MEM_LIMIT_GIB`` or 2/3 of the physical memory."""
    gib = os.environ.get("ADAPTCONV_BENCH_MEM_LIMIT_GIB")
    if gib:
        return int(float(gib) * 2**30)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 2 / 3)


# --------------------------------------------------------------------------------------------------
# Every operator and its reference implementation (benchmarks/test_operators.py)
#
# The configurations of the issue: its target (B=8, 64→64, 56×56) and batch 1 at 16 channels, 32/64/128 px.
CONFIGS = {
    "B8-C64-56px": dict(batch=8, channels=64, size=56),
    "B1-C16-32px": dict(batch=1, channels=16, size=32),
    "B1-C16-64px": dict(batch=1, channels=16, size=64),
    "B1-C16-128px": dict(batch=1, channels=16, size=128),
}
#: Each operator's reference implementation, where one exists: "unfold" (the operator's straightforward
#: unfold formulation, ``config.override(implementation="unfold")``), "torchvision" (deform/mdeform with
#: the compiled CPU kernels off: ``torchvision.ops.deform_conv2d``, as the operators called before),
#: "timm" (``timm.layers.CondConv2d`` with the routing timm's EfficientNets put in front of it).
REFERENCES = {
    "pac": "unfold",
    "paka": "unfold",
    "acda": "unfold",
    "dfn": "unfold",
    "ddf": "unfold",
    "deform": "torchvision",
    "mdeform": "torchvision",
    "condconv": "timm",
}


def conv_operators() -> tuple[str, ...]:
    """Every built-in conv-kind operator, the baseline ``conv`` first."""
    from adaptconv.ops import registry

    return tuple(n for n in registry.BUILTIN_OPS if registry.op_kind(n) == "conv")


class TimmCondConv(nn.Module):
    """timm's ``CondConv2d`` routed as in timm's EfficientNet blocks: sigmoid(Linear(GAP(x)))."""

    def __init__(self, channels: int, kernel: int, num_experts: int = 4):
        super().__init__()
        from timm.layers import CondConv2d

        self.route = nn.Linear(channels, num_experts)
        self.conv = CondConv2d(channels, channels, kernel, padding=kernel // 2, bias=True, num_experts=num_experts)

    def forward(self, x):
        return self.conv(x, torch.sigmoid(self.route(x.mean((2, 3)))))


def build_operator(op: str, impl: str, phase: str, batch: int, channels: int, size: int, kernel: int = 3):
    """(step, reset) for any conv-kind operator (``impl`` "ours" or its :data:`REFERENCES` entry), built
    like :func:`build`: parameters moved off their initialisation (the adaptive branches often start at
    zero), a fixed output gradient. ``forward`` runs the module in eval mode under ``torch.no_grad``
    (inference: e.g. sparse_gated computes only its active pixels there), ``train`` in train mode."""
    from adaptconv.ops import create_op

    dev = device()
    torch.manual_seed(0)
    if impl == "timm":
        module = TimmCondConv(channels, kernel)
    else:
        module = create_op(op, channels, channels, kernel, padding=kernel // 2)
    module = module.to(dev).train(phase == "train")
    x, _, grad_out = perturb_and_draw(module, batch, channels, size)
    settings = dict(
        implementation="unfold" if impl == "unfold" else "lean",
        cpu_kernels=config.cpu_kernels and impl != "torchvision",
    )
    return step_and_reset(module, (x,), grad_out, phase, lambda: config.override(**settings))
