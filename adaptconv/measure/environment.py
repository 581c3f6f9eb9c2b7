"""What every record says about where and how it was measured.

:func:`environment` gathers the provenance the measurement protocol asks for (git commit and dirty
flag, package versions, CUDA/cuDNN, devices and driver, CPU model and threads, hostname, SLURM ids,
precision and memory format, backend flags, a UTC timestamp) into a JSON-serialisable dict. Nothing
here raises: a piece that cannot be found (no git, no GPU, no ``nvidia-smi``) is ``None``.

:func:`backend_flags` is the subset that changes kernel choice and numerics globally (cuDNN
benchmark and determinism, TF32): latency records carry it too, because timm's benchmark script and
others flip these flags process-wide.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: SLURM variables recorded when set (job, array and placement ids).
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_PARTITION",
    "SLURM_CLUSTER_NAME",
    "SLURM_JOB_NAME",
    "SLURM_JOB_NODELIST",
    "SLURM_PROCID",
    "SLURM_RESTART_COUNT",
)

#: Thread-count environment variables that change CPU timings.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES")

_PACKAGES = ("torch", "torchvision", "timm", "numpy", "adaptconv")
_TIMEOUT_S = 10.0


def _safe(fn, default=None):
    try:
        return fn()
    except Exception as exc:  # provenance must never break a trial
        log.debug("environment: %s failed: %s", getattr(fn, "__name__", fn), exc)
        return default


def _cpu_kernels() -> dict[str, str]:
    """Each family of compiled CPU kernels: "on", "off" or "unavailable" (and why)."""
    from adaptconv.ops import cpu_acda, cpu_deform, cpu_dynfilter, cpu_pac, cpu_paka

    return {
        "pac": cpu_pac.status(),
        "paka": cpu_paka.status(),
        "acda": cpu_acda.status(),
        "dynamic_filter": cpu_dynfilter.status(),
        "deform": cpu_deform.status(),
    }


def backend_flags() -> dict[str, Any]:
    """Global backend settings that change which kernels run and how precisely.

    ``tf32_matmul`` / ``tf32_cudnn`` are ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``; ``float32_matmul_precision`` is
    ``torch.get_float32_matmul_precision()`` ("highest" means no TF32 for matmuls). Where this torch
    has the newer ``fp32_precision`` settings they are recorded as well.
    """
    flags: dict[str, Any] = {
        "cudnn_enabled": _safe(lambda: bool(torch.backends.cudnn.enabled)),
        "cudnn_benchmark": _safe(lambda: bool(torch.backends.cudnn.benchmark)),
        "cudnn_deterministic": _safe(lambda: bool(torch.backends.cudnn.deterministic)),
        "tf32_matmul": _safe(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
        "tf32_cudnn": _safe(lambda: bool(torch.backends.cudnn.allow_tf32)),
        "float32_matmul_precision": _safe(torch.get_float32_matmul_precision),
        "deterministic_algorithms": _safe(torch.are_deterministic_algorithms_enabled),
        # on the CPU, the pixel-adaptive and deformable operators run compiled kernels when they could be
        # built, else the slower PyTorch path (pac_cpu_kernels: kept for the records and tables before)
        "cpu_kernels": _safe(_cpu_kernels, {}),
    }
    flags["pac_cpu_kernels"] = (flags["cpu_kernels"] or {}).get("pac")
    fp32 = {}
    for key, getter in (
        ("generic", lambda: torch.backends.fp32_precision),
        ("cuda_matmul", lambda: torch.backends.cuda.matmul.fp32_precision),
        ("cudnn_conv", lambda: torch.backends.cudnn.conv.fp32_precision),
    ):
        value = _safe(getter)
        if isinstance(value, str):
            fp32[key] = value
    if fp32:
        flags["fp32_precision"] = fp32
    return flags


def _run(cmd: list[str], cwd: str | Path | None = None) -> str | None:
    """stdout of a command, or None if it is missing, fails or hangs."""
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (default: the adaptconv package).

    ``commit`` is None unless the package's own files are tracked by that checkout (an installed copy
    inside some other repository's virtual environment is not a checkout of adaptconv). ``dirty`` is
    True when any file under the package directory differs from the commit, untracked files included
    (a new, uncommitted module changes behaviour as much as an edit does); ``dirty_files`` lists up to
    20 of them.
    """
    if path is None:
        import adaptconv

        path = Path(adaptconv.__file__).resolve().parent
    path = Path(path)
    out: dict[str, Any] = {"commit": None, "dirty": None, "dirty_files": [], "root": None}
    root = _run(["git", "rev-parse", "--show-toplevel"], cwd=path)
    if root is None:
        return out
    marker = next((name for name in ("__init__.py",) if (path / name).exists()), None)
    if marker is not None and _run(["git", "ls-files", "--error-unmatch", marker], cwd=path) is None:
        return out  # inside a repository, but not one that tracks this package
    commit = _run(["git", "rev-parse", "HEAD"], cwd=path)
    status = _run(["git", "status", "--porcelain", "--untracked-files=all", "--", "."], cwd=path)
    out["root"] = root.strip()
    out["commit"] = commit.strip() if commit else None
    if status is not None:
        lines = [line for line in status.splitlines() if line.strip()]
        out["dirty"] = bool(lines)
        out["dirty_files"] = [line[3:] for line in lines[:20]]
    return out


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        mod = sys.modules.get(name)
        version = getattr(mod, "__version__", None) if mod is not None else None
        if version is None:
            version = _safe(lambda: metadata.version(name))
        versions[name] = str(version) if version is not None else None
    return versions


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _nvidia_smi() -> list[dict[str, str]] | None:
    text = _run(
        ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,uuid", "--format=csv,noheader,nounits"]
    )
    if text is None:
        return None
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            gpus.append(dict(zip(("index", "name", "driver_version", "memory_total_mib", "uuid"), parts)))
    return gpus


def _cuda_devices() -> list[dict[str, Any]]:
    if not _safe(torch.cuda.is_available, False):
        return []
    devices = []
    for i in range(_safe(torch.cuda.device_count, 0)):
        props = _safe(lambda: torch.cuda.get_device_properties(i))
        devices.append(
            {
                "index": i,
                "name": _safe(lambda: torch.cuda.get_device_name(i)),
                "capability": _safe(lambda: ".".join(map(str, torch.cuda.get_device_capability(i)))),
                "total_memory_bytes": getattr(props, "total_memory", None),
                "multi_processor_count": getattr(props, "multi_processor_count", None),
            }
        )
    return devices


def _name(value: Any) -> str | None:
    """'float16' for torch.float16, 'channels_last' for torch.channels_last, strings unchanged."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return str(value).removeprefix("torch.")


def environment(*, precision: Any = None, memory_format: Any = None, device: Any = None) -> dict[str, Any]:
    """Provenance of a measurement, JSON-serialisable; never raises.

    ``precision`` (a dtype or a name such as "bf16-autocast"), ``memory_format`` (e.g.
    ``torch.channels_last``) and ``device`` are what the caller ran with; they are recorded as names.
    """
    cuda_available = bool(_safe(torch.cuda.is_available, False))
    smi = _nvidia_smi()
    drivers = sorted({g["driver_version"] for g in smi}) if smi else []
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": _safe(git_state, {"commit": None, "dirty": None, "dirty_files": [], "root": None}),
        "versions": package_versions(),
        "cuda": {
            "available": cuda_available,
            "torch_cuda_version": torch.version.cuda,
            "cudnn_version": _safe(torch.backends.cudnn.version),
            "device_count": _safe(torch.cuda.device_count, 0) if cuda_available else 0,
            "devices": _cuda_devices(),
            "driver_version": drivers[0] if len(drivers) == 1 else (drivers or None),
            "nvidia_smi": smi,
        },
        "cpu": {
            "model": _safe(_cpu_model),
            "machine": platform.machine(),
            "count": os.cpu_count(),
            "available": affinity,
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": _safe(torch.get_num_interop_threads),
        },
        "platform": platform.platform(),
        "hostname": _safe(socket.gethostname),
        "slurm": {var: os.environ[var] for var in SLURM_VARS if var in os.environ},
        "thread_env": {var: os.environ[var] for var in THREAD_VARS if var in os.environ},
        "precision": _name(precision),
        "memory_format": _name(memory_format),
        "device": _name(device),
        "backends": backend_flags(),
    }
