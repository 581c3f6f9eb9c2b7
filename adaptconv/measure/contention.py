"""Whether a latency was measured on a quiet machine: the host's load around a timing, a calibration
workload timed just before it, and the ``contended`` verdict drawn from both.

Why this exists: on a shared CPU a latency can be wrong by 50× with a tight interval and no ``noisy``
flag. With ``torch.set_num_threads`` equal to the cores and another runnable process, every OpenMP
parallel region ends at a barrier that waits for the worker thread the scheduler took off its core;
the waiting threads spin, so the worker gets the core back only at the next scheduler tick (4 ms on a
``HZ=250`` kernel without preemption). A forward pass then costs (parallel regions × 4 ms) whatever its
operators do: the identical 16.0 ms readings of several operators in a contended ``report/quick`` were
four ticks each, and every sample was equally slow, so the IQR stayed small.

What is recorded (:class:`HostLoad`), all from ``/proc`` and ``/sys`` where they exist (Linux), ``None``
elsewhere:

- the 1-minute load average before and after;
- the CPU time other processes used during the timing (the whole machine's busy time from
  ``/proc/stat`` minus this process's own CPU time), as an average number of busy cores, and the time
  the hypervisor took (``steal``);
- the CPUs' clock frequency where readable (min/mean/max MHz);
- the calibration: a fixed reference workload (matrix products and a small convolution) timed with the
  same thread count just before, and its slowdown against the fastest this machine has ever run it
  (kept per CPU model, thread count, device and torch version in a small JSON file, see
  :func:`calibration_path`; the first calibration on a machine has nothing to compare with).

A run is ``contended`` when other processes kept more cores busy than the timing left free (the cores
minus the threads it used), when steal exceeds :data:`STEAL_LIMIT` of the wall time, or when the
calibration ran more than :data:`CALIBRATION_LIMIT` × slower than this machine's best. The reasons are
recorded in words. :func:`wait_for_quiet` lets a caller wait a bounded time for the machine to settle
before timing, which is what removes the cause rather than only flagging it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

#: other processes may use the free cores plus this many cores' worth before a timing counts as contended
#: (the margin absorbs the kernel's own threads, short housekeeping bursts and /proc/stat's 10 ms ticks
#: over a timing of a few tenths of a second; a process that competes for a core shows as ~1)
CORE_MARGIN = 0.5
#: hypervisor steal above this fraction of the wall time marks a run contended
STEAL_LIMIT = 0.05
#: calibration slower than this factor × the machine's best marks a run contended (a quiet machine reads
#: 1.0–1.4, up to ~1.8 in a process's first calibration; a descheduled worker thread costs each parallel
#: region a scheduler tick, several times the workload)
CALIBRATION_LIMIT = 2.0
#: how often :func:`wait_for_quiet` samples the machine
QUIET_WINDOW_S = 0.25
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---- reading the machine ------------------------------------------------------------------------------


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _proc_stat() -> tuple[float, float] | None:
    """(busy seconds, steal seconds) of the whole machine since boot, from the first line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    # guest time is already included in user/nice, so it is not added again
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS, steal / _CLOCK_TICKS


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_mhz() -> dict[str, float] | None:
    """Current clock frequency of the usable CPUs: {min, mean, max} in MHz, where the system exposes it."""
    values: list[float] = []
    base = Path("/sys/devices/system/cpu")
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    for c in cpus:
        try:
            values.append(int((base / f"cpu{c}" / "cpufreq" / "scaling_cur_freq").read_text()) / 1e3)
        except (OSError, ValueError):
            break
    if len(values) != len(cpus):  # no cpufreq (a VM, say): /proc/cpuinfo's reading, where there is one
        values = []
        try:
            with open("/proc/cpuinfo") as f:
                values = [float(line.split(":")[1]) for line in f if line.lower().startswith("cpu mhz")]
        except (OSError, ValueError, IndexError):
            values = []
    if not values:
        return None
    return {"min": round(min(values), 1), "mean": round(sum(values) / len(values), 1), "max": round(max(values), 1)}


# ---- watching a timing ----------------------------------------------------------------------------------


@dataclass
class LoadWindow:
    """The machine's use over one stretch of wall time, seen from this process."""

    wall_s: float
    others_cores: float | None  # average number of cores other processes kept busy
    steal_fraction: float | None  # hypervisor steal / (wall × usable cpus)


class LoadMonitor:
    """``start()`` then ``stop()`` around a timing: what other processes did meanwhile."""

    def __init__(self) -> None:
        self._t0 = self._stat0 = self._own0 = None

    def start(self) -> LoadMonitor:
        self._t0, self._stat0, self._own0 = time.perf_counter(), _proc_stat(), _own_cpu_s()
        return self

    def stop(self) -> LoadWindow:
        if self._t0 is None:
            raise RuntimeError("LoadMonitor.stop() before start()")
        wall = time.perf_counter() - self._t0
        stat, own = _proc_stat(), _own_cpu_s()
        if stat is None or self._stat0 is None or wall <= 0:
            return LoadWindow(wall, None, None)
        busy = stat[0] - self._stat0[0]
        others = max(0.0, busy - (own - self._own0))  # /proc/stat counts in clock ticks: ±1 tick of noise
        steal = stat[1] - self._stat0[1]
        return LoadWindow(wall, others / wall, steal / (wall * usable_cpus()))


def free_cores(threads: int) -> int:
    """Cores a timing with ``threads`` threads leaves to other processes."""
    return max(0, usable_cpus() - max(1, threads))


def crowded(window: LoadWindow, threads: int) -> list[str]:
    """Why a window shows interference with a timing on ``threads`` threads (empty: it does not)."""
    reasons = []
    if window.others_cores is not None and window.others_cores > free_cores(threads) + CORE_MARGIN:
        reasons.append(
            f"other processes kept {window.others_cores:.2f} cores busy while {threads} of {usable_cpus()} were timed"
        )
    if window.steal_fraction is not None and window.steal_fraction > STEAL_LIMIT:
        reasons.append(f"the hypervisor took {100 * window.steal_fraction:.0f}% of the CPU time (steal)")
    return reasons


def wait_for_quiet(threads: int, max_wait_s: float) -> tuple[float, list[str]]:
    """Wait (at most ``max_wait_s``) until one :data:`QUIET_WINDOW_S` window shows no interference.

    Returns (seconds waited, the reasons of the last window: empty when the machine became quiet).
    """
    began = time.perf_counter()
    while True:
        mon = LoadMonitor().start()
        time.sleep(QUIET_WINDOW_S)
        reasons = crowded(mon.stop(), threads)
        waited = time.perf_counter() - began
        if not reasons or waited >= max_wait_s:
            return round(waited, 2), reasons


# ---- the calibration workload --------------------------------------------------------------------------

CALIBRATION_WORKLOAD = "4 × (256×256 @ 256×256 matmul) + conv2d 1×32×32×32 → 32, 3×3, float32"


def _workload(device: torch.device) -> Callable[[], Any]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=g).to(device)
    b = torch.randn(256, 256, generator=g).to(device)
    x = torch.randn(1, 32, 32, 32, generator=g).to(device)
    w = torch.randn(32, 32, 3, 3, generator=g).to(device)

    def run() -> Any:
        y = a
        for _ in range(4):
            y = torch.mm(y, b) * 0.05  # scaled to keep the values finite
        return y, torch.nn.functional.conv2d(x, w, padding=1)

    return run


def calibration_path() -> Path:
    """Where each machine's fastest calibration is kept: ``$ADAPTCONV_CALIBRATION``, else
    ``$XDG_CACHE_HOME/adaptconv/calibration.json`` (``~/.cache/...``)."""
    if os.environ.get("ADAPTCONV_CALIBRATION"):
        return Path(os.environ["ADAPTCONV_CALIBRATION"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adaptconv" / "calibration.json"


def _machine_key(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")), name)
        except OSError:
            pass
    return f"{device.type}|{name}|threads={threads}|torch={torch.__version__}"


def _best_known(key: str, seconds: float) -> float | None:
    """The fastest calibration recorded for ``key`` before this one; records this one if it is faster.
    A missing or damaged file holds nothing; writing is atomic and best effort (a read-only home only
    loses the history)."""
    path = calibration_path()
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict):
            table = {}
    except (OSError, ValueError):
        table = {}
    best = table.get(key)
    best = float(best) if isinstance(best, (int, float)) and best > 0 else None
    if best is None or seconds < best:
        table[key] = seconds
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(table, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError:
            pass
    return best


@dataclass
class Calibration:
    workload: str
    seconds: float  # lower quartile of the calibration samples
    best_s: float | None  # this machine's fastest before, None on its first calibration
    slowdown: float | None  # seconds / best_s (≥ 1 unless this run was the fastest yet)


def calibrate(device: torch.device | str, threads: int | None = None, samples: int = 21) -> Calibration:
    """Time the reference workload (lower quartile of ``samples`` runs after 10 warm-up runs) on ``device`` with
    the current (or ``threads``) thread count, and compare it with this machine's best."""
    device = torch.device(device)
    if threads is None:
        threads = torch.get_num_threads()
    run = _workload(device)
    cuda = device.type == "cuda"
    times = []
    warm = 10  # wake the intra-op threads (parked after any pause) and the allocator before timing
    for i in range(samples + warm):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            run()
            dt = time.perf_counter() - t0
        if i >= warm:
            times.append(dt)
    times.sort()
    # the lower quartile: a sporadic slow sample (a page fault, a timer interrupt) does not move it, while
    # contention that matters slows every sample (a descheduled worker costs each parallel region a tick)
    median = times[len(times) // 4]
    best = _best_known(_machine_key(device, threads), median)
    slowdown = median / best if best else None
    return Calibration(
        CALIBRATION_WORKLOAD,
        float(f"{median:.6g}"),
        float(f"{best:.6g}") if best else None,
        round(slowdown, 3) if slowdown is not None else None,
    )


# ---- the verdict ----------------------------------------------------------------------------------------


@dataclass
class HostLoad:
    """The host around one latency measurement, and whether it was quiet enough to trust."""

    cpus: int
    threads: int
    load_avg_before: float | None
    load_avg_after: float | None
    others_cores: float | None
    steal_fraction: float | None
    cpu_mhz: dict[str, float] | None
    calibration: dict[str, Any] | None
    waited_for_quiet_s: float
    contended: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("others_cores", "steal_fraction"):
            if isinstance(d[k], float):
                d[k] = round(d[k], 3)
        return d


def host_load(
    window: LoadWindow,
    threads: int,
    calibration: Calibration | None,
    *,
    load_before: float | None,
    waited_s: float = 0.0,
) -> HostLoad:
    reasons = crowded(window, threads)
    if calibration is not None and calibration.slowdown is not None and calibration.slowdown > CALIBRATION_LIMIT:
        reasons.append(
            f"the calibration workload ran {calibration.slowdown:.2f}× slower than this machine's best "
            f"({calibration.seconds * 1e3:.3g} ms against {calibration.best_s * 1e3:.3g} ms)"
        )
    return HostLoad(
        cpus=usable_cpus(),
        threads=threads,
        load_avg_before=load_before,
        load_avg_after=load_average(),
        others_cores=window.others_cores if window.others_cores is None or math.isfinite(window.others_cores) else None,
        steal_fraction=window.steal_fraction,
        cpu_mhz=cpu_mhz(),
        calibration=asdict(calibration) if calibration is not None else None,
        waited_for_quiet_s=waited_s,
        contended=bool(reasons),
        reasons=reasons,
    )


__all__ = [
    "CALIBRATION_LIMIT",
    "CORE_MARGIN",
    "Calibration",
    "HostLoad",
    "LoadMonitor",
    "LoadWindow",
    "STEAL_LIMIT",
    "calibrate",
    "calibration_path",
    "cpu_mhz",
    "crowded",
    "free_cores",
    "host_load",
    "load_average",
    "usable_cpus",
    "wait_for_quiet",
]
