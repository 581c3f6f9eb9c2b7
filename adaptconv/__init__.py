"""adaptconv: a benchmark and ablation suite for content-adaptive convolutions.

The public API, for users and plugin authors (everything else is internal and may move):

- operators: :class:`AdaptiveConv2d` (a drop-in ``nn.Conv2d``), :class:`AdaptiveModule` (upsamplers and
  refiners), :func:`register_op`, :func:`get_op`, :func:`list_ops`, :func:`create_op`, :func:`op_kind`,
  :func:`plugin_errors`, :class:`OpRegistryError`, :func:`run_checks` (what ``adaptconv check-op`` runs);
- helpers an operator needs: :func:`resize_guide`, :func:`window_centres`, :func:`unfold_taps`,
  :func:`conv_output_size`, :func:`pair`, :func:`notify_train_step`;
- networks: :func:`swap_convs`, :class:`ConvSelection`, :class:`SwapError`;
- trials: :func:`run_trial`, :class:`TrialConfig`, :func:`parse_trial_config`;
- measurements: :func:`measure_latency`, :func:`inference_step`, :func:`training_step`,
  :func:`measure_peak_memory`, :func:`count_flops`, :func:`count_parameters`.

Names are imported on first use (module ``__getattr__``), not with the package, so the command line's
commands that read suites and records start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name → the module that defines it
_PUBLIC = {
    **dict.fromkeys(
        (
            "AdaptiveConv2d",
            "AdaptiveModule",
            "OpRegistryError",
            "create_op",
            "get_op",
            "list_ops",
            "op_kind",
            "plugin_errors",
            "register_op",
            "resize_guide",
        ),
        "adaptconv.ops",
    ),
    "notify_train_step": "adaptconv.ops.base",
    "run_checks": "adaptconv.ops.conformance",
    **dict.fromkeys(("window_centres", "unfold_taps", "conv_output_size", "pair"), "adaptconv.ops.taps"),
    **dict.fromkeys(("swap_convs", "ConvSelection", "SwapError"), "adaptconv.models.swap"),
    "run_trial": "adaptconv.trial.runner",
    **dict.fromkeys(("TrialConfig", "parse_trial_config"), "adaptconv.trial.config"),
    **dict.fromkeys(
        (
            "measure_latency",
            "inference_step",
            "training_step",
            "measure_peak_memory",
            "count_flops",
            "count_parameters",
        ),
        "adaptconv.measure",
    ),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
