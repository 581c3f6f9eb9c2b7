"""The trial configuration: a plain mapping, validated into :class:`TrialConfig`.

Everything a trial depends on is here, so the normalised config (``normalised()``) identifies a trial:
task, dataset, backbone, operator and options, swap selection and guide, budget, optimiser and
schedule, batch size, seed, task options and what to measure. Keys that only say *where* to run
(``device``, ``threads``, ``data_root``) are kept in the record but are not part of what the trial
computes (see ``RUN_KEYS``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from ..schema import ConfigError, did_you_mean, parse, to_dict

TASK_NAMES = ("classification", "segmentation", "upsampling", "denoising", "opbench")

#: Keys that choose where/how a trial runs, not what it computes.
RUN_KEYS = ("device", "threads", "data_root")  # `pretrained` is a path too, but it changes the result


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only


@dataclass
class ScheduleConfig:
    name: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 0
    step_every: int | None = None  # "step": decay every N steps (default: a third of the budget)
    gamma: float = 0.1


@dataclass
class MeasureConfig:
    latency: bool = True
    memory: bool = True
    flops: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])  # batch 1 and a throughput batch
    resolution: int | None = None  # input side for measurements (default: the task's)
    # several input sides, measured in this order (FLOPs at the first); give this or `resolution`.
    # Normalised so that one side is always stored as `resolution` (trial ids of configs written
    # before this key existed stay the same, and `resolutions: [96]` is `resolution: 96`).
    resolutions: list[int] | None = None
    warmup: int = 3
    repeats: int = 20
    min_time_s: float = 0.3

    def sides(self) -> list[int | None]:
        """The input sides to measure at, in order (``[None]``: the task's own size)."""
        if self.resolutions is not None:
            return list(self.resolutions)
        return [self.resolution]

    def problems(self) -> list[str]:
        out = []
        if any(b < 1 for b in self.batch_sizes):
            out.append(f"measure.batch_sizes: must be >= 1, got {self.batch_sizes}")
        if self.resolution is not None and self.resolutions is not None:
            out.append("measure.resolution and measure.resolutions: give one of them "
                       "(resolution: 96 is resolutions: [96])")
        if self.resolution is not None and self.resolution < 1:
            out.append(f"measure.resolution: must be >= 1, got {self.resolution}")
        if self.resolutions is not None:
            if not self.resolutions:
                out.append("measure.resolutions: a non-empty list of input sides")
            elif any(r < 1 for r in self.resolutions):
                out.append(f"measure.resolutions: must be >= 1, got {self.resolutions}")
            elif len(set(self.resolutions)) != len(self.resolutions):
                out.append(f"measure.resolutions: repeats a value: {self.resolutions}")
        return out

    def canonical(self) -> "MeasureConfig":
        """One side is stored as ``resolution``, several as ``resolutions`` (see the field)."""
        if self.resolutions is not None and len(self.resolutions) == 1 and self.resolution is None:
            return dataclasses.replace(self, resolution=self.resolutions[0], resolutions=None)
        return self


@dataclass
class TrialConfig:
    task: Literal["classification", "segmentation", "upsampling", "denoising", "opbench"]
    dataset: str | None = None  # default: the task's built-in data
    data_root: str | None = None  # where a real dataset lives on disk
    backbone: str | None = None  # default: the task's network
    pretrained: str | None = None  # a state-dict file on disk loaded into the network before the swap
    op: str = "conv"
    op_options: dict[str, Any] = field(default_factory=dict)
    swap: dict[str, Any] | None = None  # ConvSelection keys; default: the task's operator layers
    guide: Literal["self", "image"] | None = None  # default: the task's
    steps: int | None = None  # training budget in optimiser steps ...
    epochs: int | None = None  # ... or in epochs (not both)
    batch_size: int = 16
    eval_batch_size: int | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    task_options: dict[str, Any] = field(default_factory=dict)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    eval_points: int = 5  # evaluations along training, for the training curve (the last is the final)
    dynconv_anneal: float = 0.1  # fraction of the budget over which dynconv's τ anneals 30 → 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # CPU threads (default: torch's)

    def validate(self) -> list[str]:
        from ..models.swap import ConvSelection
        from ..ops import list_ops

        problems = []
        if self.op not in list_ops():
            problems.append(f"op: unknown operator {self.op!r}{did_you_mean(self.op, list_ops())}; "
                            f"choices: {', '.join(list_ops())}")
        if self.steps is not None and self.epochs is not None:
            problems.append("steps and epochs: give one training budget, not both")
        for key in ("steps", "epochs", "batch_size", "eval_batch_size", "threads"):
            value = getattr(self, key)
            if value is not None and value < (0 if key in ("steps", "epochs") else 1):
                problems.append(f"{key}: must be {'>= 0' if key in ('steps', 'epochs') else '>= 1'}, got {value}")
        if self.optimizer.lr <= 0:
            problems.append(f"optimizer.lr: must be > 0, got {self.optimizer.lr}")
        if not 0 <= self.dynconv_anneal <= 1:
            problems.append(f"dynconv_anneal: a fraction of the budget in [0, 1], got {self.dynconv_anneal}")
        problems += self.measure.problems()
        if self.swap is not None:
            unknown = set(self.swap) - set(ConvSelection.__dataclass_fields__)
            for key in sorted(unknown):
                problems.append(f"swap.{key}: unknown key{did_you_mean(key, ConvSelection.__dataclass_fields__)}; "
                                f"allowed: {', '.join(ConvSelection.__dataclass_fields__)}")
        return problems

    def normalised(self) -> dict[str, Any]:
        """The config as plain data with every default filled in (what identifies the trial)."""
        return to_dict(self)


def parse_trial_config(mapping: dict[str, Any], where: str = "trial config") -> TrialConfig:
    """Validate a mapping into a :class:`TrialConfig`, then let the task check its own parts."""
    config = parse(TrialConfig, mapping, where)
    from ..tasks import get_task

    task_cls = get_task(config.task)
    problems = task_cls.check_config(config)
    op_options, op_problems = canonical_op_options(config.op, config.op_options)
    problems += op_problems
    if problems:
        raise ConfigError(problems, where)
    return task_cls.fill_defaults(dataclasses.replace(config, op_options=op_options,
                                                      measure=config.measure.canonical()))


def canonical_op_options(op: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Check operator options against the operator's constructor and drop those equal to its
    defaults, so ``{kernel_type: gaussian}`` and ``{}`` are the same trial."""
    import inspect

    from ..ops import get_op, list_ops

    if op not in list_ops():
        return options, []  # reported by validate()
    allowed = _op_options(get_op(op))
    problems, out = [], {}
    for key, value in options.items():
        if key not in allowed:
            problems.append(f"op_options.{key}: {op!r} has no option {key!r}{did_you_mean(key, allowed)}; "
                            f"options: {', '.join(allowed) or 'none'}")
        elif allowed[key].default is inspect.Parameter.empty or allowed[key].default != value:
            out[key] = value
    return dict(sorted(out.items())), problems


@functools.lru_cache(maxsize=None)
def _op_options(cls) -> dict:
    """The keyword-only options of an operator's constructor (besides guide_channels)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "guide_channels"}
