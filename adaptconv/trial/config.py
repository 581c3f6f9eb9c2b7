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

from ..schema import ConfigError, as_float, did_you_mean, parse, to_dict

TASK_NAMES = (
    "classification",
    "segmentation",
    "upsampling",
    "denoising",
    "opbench",
    "spatial_segmentation",
    "spatial_video",
)

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
            out.append(
                "measure.resolution and measure.resolutions: give one of them (resolution: 96 is resolutions: [96])"
            )
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

    def canonical(self) -> MeasureConfig:
        """One side is stored as ``resolution``, several as ``resolutions`` (see the field)."""
        if self.resolutions is not None and len(self.resolutions) == 1 and self.resolution is None:
            return dataclasses.replace(self, resolution=self.resolutions[0], resolutions=None)
        return self


@dataclass
class TrialConfig:
    task: str  # a registered task (adaptconv.tasks.list_tasks(): the built-ins and plugins' entry points)
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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # CPU threads (default: torch's)

    def validate(self, registry: bool = True) -> list[str]:
        """Every problem of the config; ``registry=False`` leaves out what depends on the operators
        installed now (for reading stored results, see :func:`parse_trial_config`)."""
        from ..models.swap import ConvSelection
        from ..tasks import list_tasks

        problems = []
        tasks = list_tasks()
        if self.task not in tasks:
            problems.append(
                f"task: {self.task!r} is not one of {', '.join(map(repr, tasks))}{did_you_mean(self.task, tasks)}"
            )
        problem = op_problem(self.op) if registry else None
        if problem:
            problems.append(problem)
        if self.steps is not None and self.epochs is not None:
            problems.append("steps and epochs: give one training budget, not both")
        for key in ("steps", "epochs", "batch_size", "eval_batch_size", "threads"):
            value = getattr(self, key)
            if value is not None and value < (0 if key in ("steps", "epochs") else 1):
                problems.append(f"{key}: must be {'>= 0' if key in ('steps', 'epochs') else '>= 1'}, got {value}")
        if self.optimizer.lr <= 0:
            problems.append(f"optimizer.lr: must be > 0, got {self.optimizer.lr}")
        problems += self.measure.problems()
        if self.swap is not None:
            unknown = set(self.swap) - set(ConvSelection.__dataclass_fields__)
            for key in sorted(unknown):
                problems.append(
                    f"swap.{key}: unknown key{did_you_mean(key, ConvSelection.__dataclass_fields__)}; "
                    f"allowed: {', '.join(ConvSelection.__dataclass_fields__)}"
                )
        return problems

    def normalised(self) -> dict[str, Any]:
        """The config as plain data with every default filled in (what identifies the trial)."""
        return to_dict(self)


#: where operators of the other kinds go in a trial config (they are task options, not swapped in)
KIND_KEYS = {
    "upsampler": ("task_options.upsampler", "tasks upsampling and segmentation"),
    "refiner": ("task_options.crf", "task segmentation"),
}


def conv_ops() -> list[str]:
    """The operators a trial can swap in: those of kind conv."""
    from ..ops import get_op, list_ops

    return [n for n in list_ops() if getattr(get_op(n), "kind", "conv") == "conv"]


def op_problem(op: str) -> str | None:
    """Why ``op`` cannot be a trial's ``op`` (unknown, or an operator of another kind), or None."""
    from ..ops import get_op, list_ops

    choices = conv_ops()
    if op in choices:
        return None
    if op in list_ops():
        kind = getattr(get_op(op), "kind", "conv")
        key, tasks = KIND_KEYS.get(kind, ("a task option", "its task"))
        return (
            f"op: {op!r} is an operator of kind {kind!r}, not a convolution, so it cannot be swapped in for "
            f"nn.Conv2d; choose it with `{key}: {op}` ({tasks}); `op` takes operators of kind conv: "
            f"{', '.join(choices)}"
        )
    return f"op: unknown operator {op!r}{did_you_mean(op, choices)}; choices: {', '.join(choices)}"


#: keys that left the trial config: (where the setting lives now, its old default). At the old default a
#: key is dropped (trial ids never held a default); another value is refused with where it went, except
#: when stored results are read, where it is moved there so old records stay readable
RETIRED_KEYS = {"dynconv_anneal": ("op_options.anneal", 0.1)}


def _retire_keys(mapping: dict[str, Any], where: str, reading: bool) -> dict[str, Any]:
    if not isinstance(mapping, dict) or not any(k in mapping for k in RETIRED_KEYS):
        return mapping
    mapping = dict(mapping)
    problems = []
    for key, (new, default) in RETIRED_KEYS.items():
        if key not in mapping:
            continue
        value = mapping.pop(key)
        if value == default:
            continue
        if reading:
            head, _, rest = new.partition(".")
            mapping[head] = {**(mapping.get(head) or {}), rest: value}
        else:
            problems.append(
                f"{key}: moved to {new} (an option of the operator: dynconv and odconv take it); write {new}: {value}"
            )
    if problems:
        raise ConfigError(problems, where)
    return mapping


def parse_trial_config(mapping: dict[str, Any], where: str = "trial config", registry: bool = True) -> TrialConfig:
    """Validate a mapping into a :class:`TrialConfig`, then let the task check its own parts and build
    the operator with its options once (what the trial would refuse is refused here).

    ``registry=False`` is for reading results whatever is installed now: an operator that is not
    installed (a plugin uninstalled, an operator renamed) is not an error, and its options are kept
    as written (without the operator, its defaults are unknown); what only the operator can say is
    not checked."""
    mapping = _retire_keys(mapping, where, reading=not registry)
    config = parse(TrialConfig, mapping, where, validate=False)
    problems = config.validate(registry=registry)
    if problems:
        raise ConfigError(problems, where)
    from ..ops import get_op
    from ..tasks import get_task

    task_cls = get_task(config.task)
    problems = task_cls.check_config(config)
    installed = config.op in conv_ops()
    op_options, op_problems = canonical_op_options(config.op, config.op_options)
    if op_problems and not registry:  # options the installed operator no longer takes: kept as written
        op_options, op_problems = dict(sorted(config.op_options.items())), []
    problems += op_problems
    guide = config.guide or task_cls.default_guide
    if installed and registry:
        need = get_op(config.op).guide
        if need == "required" and guide == "self":
            problems.append(f"guide: operator {config.op!r} needs an external guide; use guide: image")
        if op_options and not problems:
            problems += op_build_problems(config.op, op_options, guide == "image" and need != "none")
    if problems:
        raise ConfigError(problems, where)
    config = dataclasses.replace(config, op_options=op_options, measure=config.measure.canonical())
    if not installed:  # a task's own defaults that ask the operator (opbench's guide) cannot be applied
        from ..tasks.base import Task

        return Task.fill_defaults.__func__(task_cls, config)
    return task_cls.fill_defaults(config)


#: channel counts an operator is built with to check its options (the first that builds is enough):
#: divisible by 1-8, 12, 16, 24, 32 and 48, then by 5 and by 7, so an option that must divide the
#: channels is not refused only because of the width chosen here
CHECK_CHANNELS = (96, 80, 112)


def op_build_problems(op: str, options: dict[str, Any], guided: bool) -> list[str]:
    """Build ``op`` with ``options`` from an ``nn.Conv2d`` (as the hot-swap does) and return why it
    refuses, naming the option; each distinct configuration is built once per process."""
    import json

    try:
        key = json.dumps(options, sort_keys=True)
    except (TypeError, ValueError):
        key = repr(sorted(options.items()))
    return list(_op_build_problems(op, key, guided))


@functools.cache
def _op_build_problems(op: str, key: str, guided: bool) -> tuple[str, ...]:
    import json

    import torch
    from torch import nn

    from ..ops import get_op

    try:
        options = json.loads(key)
    except ValueError:  # not JSON-able: nothing a suite file can hold; the trial will say
        return ()
    cls = get_op(op)
    first = None
    for channels in CHECK_CHANNELS:
        conv = nn.Conv2d(channels, channels, 3, padding=1)
        try:
            with torch.no_grad():
                cls.from_conv(conv, **options, **({"guide_channels": 3} if guided else {}))
            return ()
        except Exception as exc:  # the operator's own refusal, whatever its type
            first = first or exc
    message = str(first).splitlines()[0] if str(first) else type(first).__name__
    named = [k for k in options if k in message] or list(options)
    shown = ", ".join(f"{k}={options[k]!r}" for k in named)
    return (f"op_options.{named[0]}: operator {op!r} refuses {shown}: {message}{_suggestion(cls, named[0], options)}",)


def _suggestion(cls, key: str, options: dict[str, Any]) -> str:
    """A did-you-mean for a misspelt choice of an option annotated with a Literal."""
    import typing

    try:
        hint = typing.get_type_hints(cls.__init__).get(key)
    except Exception:
        return ""
    if typing.get_origin(hint) is Literal and isinstance(options[key], str):
        return did_you_mean(options[key], typing.get_args(hint))
    return ""


def canonical_op_options(op: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Check operator options against the operator's constructor and drop those equal to its
    defaults, so ``{kernel_type: gaussian}`` and ``{}`` are the same trial."""
    import inspect

    from ..ops import get_op

    if op not in conv_ops():
        return options, []  # reported by validate()
    cls = get_op(op)
    allowed = _op_options(cls)
    floats = _float_options(cls)
    problems, out = [], {}
    for key, value in options.items():
        if key not in allowed:
            problems.append(
                f"op_options.{key}: {op!r} has no option {key!r}{did_you_mean(key, allowed)}; "
                f"options: {', '.join(allowed) or 'none'}"
            )
            continue
        if key in floats and isinstance(value, str):  # "1e-3" (YAML 1.1 reads it as a string)
            value = as_float(value) if as_float(value) is not None else value
        if allowed[key].default is inspect.Parameter.empty or allowed[key].default != value:
            out[key] = value
    return dict(sorted(out.items())), problems


@functools.cache
def _float_options(cls) -> frozenset[str]:
    """The options annotated as a float (or float | None), whose values may be written as strings
    that float() reads; str options are never converted."""
    import typing

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a plugin's annotations that do not resolve: no conversion, the constructor decides
        return frozenset()
    out = set()
    for name, hint in hints.items():
        args = set(typing.get_args(hint)) or {hint}
        if float in args and str not in args:
            out.add(name)
    return frozenset(out)


@functools.cache
def _op_options(cls) -> dict:
    """The keyword-only options of an operator's constructor (besides guide_channels and the factory
    arguments device/dtype every operator takes, adaptconv.ops.base.FACTORY_KWARGS)."""
    import inspect

    from ..ops.base import FACTORY_KWARGS

    params = inspect.signature(cls.__init__).parameters
    skip = ("guide_channels", *FACTORY_KWARGS)
    return {n: p for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in skip}
