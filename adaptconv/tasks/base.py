"""What every task provides to the trial runner.

A task owns its data (train and test sets), its network (with the operator under test swapped in),
its loss and its metrics. The runner owns the loop, the budget, the optimiser and the measurements.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ..models.backbones import load_pretrained
from ..models.swap import ConvSelection, swap_convs, swap_summary
from ..ops import get_op
from ..schema import ConfigError, did_you_mean, parse


class Task:
    name: ClassVar[str]
    #: metric names reported by :meth:`evaluate`; the first is the headline metric
    metrics: ClassVar[tuple[str, ...]]
    higher_is_better: ClassVar[dict[str, bool]]
    #: dataclass of the task's own options (``task_options`` in the trial config)
    Options: ClassVar[type]
    datasets: ClassVar[tuple[str, ...]]
    default_dataset: ClassVar[str]
    backbones: ClassVar[tuple[str, ...]] = ()  # names besides timm models, first = default
    accepts_timm: ClassVar[bool] = False
    default_swap: ClassVar[dict[str, Any]] = {}
    default_guide: ClassVar[str] = "self"
    default_steps: ClassVar[int] = 200
    #: task options added after trials were stored: left out of the normalised config while at their
    #: default, so the ids of existing trials (which hash the config) do not change
    late_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, config, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.options = parse(self.Options, config.task_options, f"task_options of task {self.name!r}")

    # ---- configuration ---------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> list[str]:
        problems = []
        try:
            parse(cls.Options, config.task_options, "task_options")
        except ConfigError as exc:
            problems += [f"task_options.{p}" for p in exc.problems]
        if config.dataset is not None and config.dataset not in cls.datasets:
            problems.append(
                f"dataset: {config.dataset!r} does not serve task {cls.name!r}"
                f"{did_you_mean(config.dataset, cls.datasets)}; choices: {', '.join(cls.datasets)}"
            )
        if config.backbone is not None and config.backbone not in cls.backbones:
            if not cls.accepts_timm:
                problems.append(
                    f"backbone: {config.backbone!r} is not a network of task {cls.name!r}"
                    f"{did_you_mean(config.backbone, cls.backbones)}; choices: {', '.join(cls.backbones)}"
                )
            else:
                import timm

                if not timm.is_model(config.backbone):
                    problems.append(
                        f"backbone: {config.backbone!r} is neither built in ({', '.join(cls.backbones)}) nor a timm "
                        f"model{did_you_mean(config.backbone, list(cls.backbones) + timm.list_models())}"
                    )
        return problems

    @classmethod
    def fill_defaults(cls, config):
        return dataclasses.replace(
            config,
            dataset=config.dataset or cls.default_dataset,
            backbone=config.backbone or (cls.backbones[0] if cls.backbones else None),
            swap=config.swap if config.swap is not None else dict(cls.default_swap),
            guide=config.guide or cls.default_guide,
            steps=config.steps if (config.steps is not None or config.epochs is not None) else cls.default_steps,
            task_options={
                k: v
                for k, v in dataclasses.asdict(parse(cls.Options, config.task_options)).items()
                if not (k in cls.late_options and cls.late_options[k] == v)
            },
        )

    # ---- what the runner calls ------------------------------------------------------------------
    def build_data(self) -> tuple[Dataset, Dataset]:
        """(train set, test set)."""
        raise NotImplementedError

    def build_network(self, train_set: Dataset) -> nn.Module:
        """The task network with plain convolutions (before the operator is swapped in)."""
        raise NotImplementedError

    def build_model(self, train_set: Dataset) -> tuple[nn.Module, dict[str, Any]]:
        """The network with the operator under test swapped in, and the swap summary."""
        cfg = self.config
        model = self.build_network(train_set)
        pretrained = load_pretrained(model, cfg.pretrained) if cfg.pretrained else None
        model = model.to(self.device)
        # An operator that takes no guide (the conv baseline) runs self-contained whatever the task's
        # default guide; the summary records the guide actually used.
        guide = "self" if get_op(cfg.op).guide == "none" else cfg.guide
        records = swap_convs(
            model,
            cfg.op,
            ConvSelection.from_any(cfg.swap),
            guide,
            image_channels=self.image_channels(train_set),
            example_inputs=self.example_inputs(1),
            **cfg.op_options,
        )
        summary = swap_summary(records)
        summary["guide"] = "none" if get_op(cfg.op).guide == "none" else guide
        if pretrained:
            summary["pretrained"] = pretrained
        return model, summary

    def image_channels(self, train_set: Dataset) -> int:
        return 3

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def baselines(self, test_set: Dataset) -> dict[str, dict[str, float]]:
        """Trivial, non-learned predictors scored on the same test data with the task's own metrics:
        ``{name: {metric: value}}`` (bilinear upsampling, the majority class, the noisy input...).

        Stored in the record (``record["baselines"]``); the report shows each as a row of its own and
        as a line in the figures, so a reader sees at once whether a network learned anything."""
        return {}

    def example_inputs(self, batch_size: int, resolution: int | None = None) -> tuple[torch.Tensor, ...]:
        """Inputs of the network's forward for latency/memory/FLOPs measurement."""
        raise NotImplementedError

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
