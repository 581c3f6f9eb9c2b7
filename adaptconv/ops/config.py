"""The switches of the pixel-adaptive contractions (PAC, PAKA, DFN, ACDA, and CARAFE/PAC-CRF through them).

Plain module-level settings, read at call time (``config.implementation``, …), and one context manager,
:func:`override`, that changes any of them inside a block:

- ``implementation``: ``"lean"`` (the default: tiled contractions that never materialise the unfold)
  or ``"unfold"`` (the straightforward reference, kept for the tests and the benchmarks). Only the
  forward pass reads it: a graph built under "unfold" backpropagates through the unfold.
- ``chunk_elements``: the tile size, in elements of one tap's C × pixels block (2^17 float32 values =
  512 KiB, which stays in a core's cache through the per-tap passes; a stacked k²·C × pixels block is
  k² times that, 4.5 MiB for k = 3). The backward pass reads it too. ``ADAPTCONV_LEAN_CHUNK`` sets the
  default.
- ``cpu_kernels``: whether the operators may run their compiled CPU kernels on CPU tensors (built by
  :mod:`adaptconv.ops.cpu_build`: PAC's :mod:`~adaptconv.ops.cpu_pac`, PAKA's :mod:`~adaptconv.ops.cpu_paka`,
  ACDA's :mod:`~adaptconv.ops.cpu_acda`, the dynamic filtering of DFN/DDF/CARAFE/PAC-CRF
  :mod:`~adaptconv.ops.cpu_dynfilter`, deformable convolution's :mod:`~adaptconv.ops.cpu_deform`); off,
  the PyTorch (or torchvision) paths run. ``ADAPTCONV_CPU_KERNELS=0`` sets the default to off.

    with config.override(implementation="unfold", chunk_elements=4096):
        y = op(x)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["IMPLEMENTATIONS", "implementation", "chunk_elements", "cpu_kernels", "override"]

IMPLEMENTATIONS = ("lean", "unfold")

implementation: str = "lean"
chunk_elements: int = int(os.environ.get("ADAPTCONV_LEAN_CHUNK", 1 << 17))
cpu_kernels: bool = os.environ.get("ADAPTCONV_CPU_KERNELS", "1") not in ("0", "", "false", "off")


def _check(name: str, value) -> None:
    if name == "implementation" and value not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {value!r}")
    if name == "chunk_elements" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"chunk_elements must be a positive int, got {value!r}")
    if name == "cpu_kernels" and not isinstance(value, bool):
        raise ValueError(f"cpu_kernels must be a bool, got {value!r}")


@contextlib.contextmanager
def override(**settings) -> Iterator[None]:
    """Set the named settings (``implementation``, ``chunk_elements``, ``cpu_kernels``) inside the block,
    restoring the previous values on exit. Every value is checked before any is changed."""
    names = ("implementation", "chunk_elements", "cpu_kernels")
    for name, value in settings.items():
        if name not in names:
            raise ValueError(f"config.override: unknown setting {name!r} (known: {', '.join(names)})")
        _check(name, value)
    here = globals()
    old = {name: here[name] for name in settings}
    here.update(settings)
    try:
        yield
    finally:
        here.update(old)
