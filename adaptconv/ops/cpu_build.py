"""Building and loading the compiled CPU kernels (``csrc/*.cpp``), shared by every module that has some
(:mod:`adaptconv.ops.cpu_pac`, :mod:`adaptconv.ops.cpu_deform`, :mod:`adaptconv.ops.cpu_paka`,
:mod:`adaptconv.ops.cpu_acda`).

A :class:`Kernels` names one source file. On first use it is compiled with the system C++ compiler
(``$CXX`` or ``g++``, ``-O3 -march=native -fopenmp``; a few seconds) into a per-user cache
(``$ADAPTCONV_KERNEL_CACHE``, default ``~/.cache/adaptconv/kernels``, or a private folder under the temp
dir where that is read-only), keyed by the source, the flags, the compiler and the CPU (what
``-march=native`` depends on), so a cluster with mixed nodes builds one copy per CPU kind. The library
is built beside its final name and renamed, so concurrent workers never load a half-written file.

Every library exports ``int adaptconv_<name>_abi()``, checked against the Python side's number. Without a
compiler, when the build fails, or with ``config.cpu_kernels`` off (``ADAPTCONV_CPU_KERNELS=0``,
``config.override(cpu_kernels=False)``), :meth:`Kernels.available` is False and the caller runs its
PyTorch (or torchvision) path; a failed build warns once, naming the fallback.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from . import config

__all__ = ["Kernels", "FLAGS", "SUFFIX", "ptr", "cache_dir"]

CSRC = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
#: The dtypes the kernels are compiled for, and their entry points' suffix.
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def cache_dir() -> Path:
    root = os.environ.get("ADAPTCONV_KERNEL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adaptconv" / "kernels"


@functools.cache
def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(lines[:2])
    except OSError:
        return platform.processor() or platform.machine()


def _writable_cache() -> Path:
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK):
            raise PermissionError(cache)
    except OSError:  # a read-only home (some clusters): a private folder under the temp dir
        cache = Path(tempfile.gettempdir()) / f"adaptconv-kernels-{os.getuid()}"
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    return cache


def ptr(t: torch.Tensor | None):
    """A tensor's data pointer for ctypes (None stays a null pointer)."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class Kernels:
    """One compiled library: ``csrc/<name>.cpp``, built and loaded on first use.

    ``declare(lib)`` sets the entry points' ctypes signatures; ``what`` and ``fallback`` make the
    warning when the build fails ("the PAC CPU kernels are not available (…); PAC runs on …");
    ``extra_flags`` are added to :data:`FLAGS` (and to the cache key)."""

    def __init__(
        self,
        name: str,
        abi: int,
        declare: Callable[[ctypes.CDLL], None],
        what: str,
        fallback: str,
        extra_flags: tuple[str, ...] = (),
    ):
        self.name, self.abi, self.declare, self.what, self.fallback = name, abi, declare, what, fallback
        self.source = CSRC / f"{name}.cpp"
        self.flags = FLAGS + tuple(extra_flags)

    def _build(self) -> tuple[ctypes.CDLL | None, str]:
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            return None, f"no C++ compiler ({cxx!r} not found; set CXX)"
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
        version = version.splitlines()[0] if version else ""
        parts = [self.source.read_bytes(), " ".join(self.flags).encode(), version.encode(), _cpu_signature().encode()]
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
        cache = _writable_cache()
        lib_path = cache / f"{self.name}-{key}.so"
        if not lib_path.exists():
            # build beside the target, then rename: concurrent workers never load a half-written file
            fd, tmp = tempfile.mkstemp(prefix=f".{self.name}-", suffix=".so", dir=cache)
            os.close(fd)
            try:
                cmd = [cxx, *self.flags, "-o", tmp, str(self.source)]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                    return None, f"{cxx} failed on {self.source.name}: " + " | ".join(tail)
                os.replace(tmp, lib_path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        lib = ctypes.CDLL(str(lib_path))
        abi = getattr(lib, f"adaptconv_{self.name}_abi")()
        if abi != self.abi:
            return None, f"{lib_path} has ABI {abi}, expected {self.abi}"
        self.declare(lib)
        return lib, f"built ({lib_path})"

    @functools.cached_property
    def _loaded(self) -> tuple[ctypes.CDLL | None, str]:
        try:
            lib, how = self._build()
        except Exception as err:  # a broken toolchain must not break the operators: fall back
            lib, how = None, f"{type(err).__name__}: {err}"
        if lib is None:
            warnings.warn(
                f"adaptconv: the {self.what} CPU kernels are not available ({how}); {self.fallback}",
                RuntimeWarning,
                stacklevel=4,
            )
        return lib, how

    def library(self) -> tuple[ctypes.CDLL | None, str]:
        """(library or None, how it was built or why not); built once per process."""
        return self._loaded

    def available(self) -> bool:
        """The kernels are enabled (``config.cpu_kernels``) and built (building them on the first call)."""
        return config.cpu_kernels and self._loaded[0] is not None

    def status(self) -> str:
        """For an environment record: "on (built …)", "off (…)" or "unavailable (…)"."""
        if not config.cpu_kernels:
            return "off (ADAPTCONV_CPU_KERNELS=0 or config.cpu_kernels off)"
        lib, how = self._loaded
        return ("on " if lib is not None else "unavailable ") + f"({how})"

    def usable(self, *tensors: torch.Tensor | None) -> bool:
        """CPU tensors of one dtype the kernels take (float32/float64; ``None`` skipped), kernels on."""
        t0 = tensors[0]
        if t0.device.type != "cpu" or t0.dtype not in SUFFIX:
            return False
        if any(t is not None and (t.device.type != "cpu" or t.dtype != t0.dtype) for t in tensors[1:]):
            return False
        return self.available()

    def fn(self, name: str, dtype: torch.dtype):
        """The entry point ``<name>_<f32|f64>``."""
        return getattr(self._loaded[0], f"{name}_{SUFFIX[dtype]}")
