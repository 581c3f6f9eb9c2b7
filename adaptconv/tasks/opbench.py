"""Operator benchmark: latency and peak memory of the operator itself, no data and no training.

The network is ``depth`` stacked layers of the operator under test (``nn.Conv2d`` for ``op: conv``),
``channels_in → channels_out`` then ``channels_out → channels_out``, with "same" padding
(``dilation·(k−1)/2``), so the output keeps the input's side divided by ``stride``. The stride applies
to the first layer only: a stack of strided layers would shrink to nothing and measure a pyramid
rather than the operator. ``guide: image`` drives every layer with a 3-channel image (resized to each
layer's input, as the hot-swapping layer does); operators that take no guide ignore it, and the
trial is then the same as with ``guide: none`` (same id).

The budget is ``steps: 0`` and the metrics are empty: what the trial produces is the runner's
measurement, one run per ``measure.resolutions × measure.batch_sizes × {inference, train_step}``,
on uniform random inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..ops import create_op, get_op, list_ops, resize_guide
from .base import Task

GUIDE_CHANNELS = 3


@dataclass
class OpBenchOptions:
    channels_in: int = 64
    channels_out: int | None = None  # default: channels_in
    kernel_size: int = 3
    stride: int = 1  # first layer only (see the module docstring)
    dilation: int = 1
    groups: int = 1
    guide: str = "none"  # none | image (a 3-channel image guide for guided operators)
    depth: int = 1  # stacked layers
    size: int = 64  # input side measured when measure.resolution(s) is not given

    def validate(self) -> list[str]:
        problems = []
        for key in ("channels_in", "kernel_size", "stride", "dilation", "groups", "depth", "size"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.channels_out is not None and self.channels_out < 1:
            problems.append(f"channels_out: must be >= 1, got {self.channels_out}")
        if self.guide not in ("none", "image"):
            problems.append(f"guide: 'none' or 'image', got {self.guide!r}")
        out = self.channels_out or self.channels_in
        if self.groups >= 1 and (self.channels_in % self.groups or out % self.groups):
            problems.append(
                f"groups: channels_in={self.channels_in} and channels_out={out} must both be "
                f"divisible by groups={self.groups}"
            )
        return problems


class _NoData(Dataset):
    """opbench trains on nothing: an empty set keeps the runner's contract (train set, test set)."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        raise IndexError("opbench has no data")


class OpStack(nn.Module):
    """``depth`` operator layers; ``forward(x, guide=None)``."""

    def __init__(self, layers: list[nn.Module], guided: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.guided = guided

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            if self.guided:
                x = layer(x, resize_guide(guide, tuple(x.shape[-2:])))
            else:
                x = layer(x)
        return x


class OpBench(Task):
    name = "opbench"
    metrics = ()
    higher_is_better = {}
    Options = OpBenchOptions
    datasets = ("random",)
    default_dataset = "random"
    backbones = ("opstack",)
    default_swap = {}
    default_guide = "self"
    default_steps = 0

    @classmethod
    def check_config(cls, config) -> list[str]:
        problems = super().check_config(config)
        if config.steps not in (None, 0) or config.epochs not in (None, 0):
            problems.append(
                f"steps: opbench trains nothing (it measures the operator's latency and memory); "
                f"leave steps at 0, got steps={config.steps}, epochs={config.epochs}"
            )
        if config.swap:
            problems.append("swap: opbench builds the operator layers directly; there is nothing to swap into")
        if config.guide == "image":
            problems.append("guide: opbench's guide is task_options.guide (none | image), not the trial's guide")
        if config.pretrained:
            problems.append("pretrained: opbench builds fresh operator layers; there are no weights to load")
        if config.op not in list_ops():
            return problems  # reported by the config's own validation
        kind = getattr(get_op(config.op), "kind", "conv")
        if kind != "conv":
            problems.append(
                f"op: {config.op!r} is an operator of kind {kind!r}; opbench measures convolution "
                f"replacements (kind 'conv') only"
            )
        elif get_op(config.op).guide == "required" and config.task_options.get("guide", "none") == "none":
            problems.append(f"task_options.guide: operator {config.op!r} needs a guide; use guide: image")
        return problems

    @classmethod
    def fill_defaults(cls, config):
        config = super().fill_defaults(config)
        options = dict(config.task_options)
        options["channels_out"] = options["channels_out"] or options["channels_in"]
        if get_op(config.op).guide == "none":
            options["guide"] = "none"  # conv ignores a guide: one trial, not two identical ones
        return dataclasses.replace(config, steps=0, epochs=None, task_options=options)

    # ---- what the runner calls ------------------------------------------------------------------
    @property
    def guided(self) -> bool:
        return self.options.guide == "image" and get_op(self.config.op).guide != "none"

    def build_data(self) -> tuple[Dataset, Dataset]:
        return _NoData(), _NoData()

    def build_network(self, train_set: Dataset) -> nn.Module:
        o, cfg = self.options, self.config
        layers: list[nn.Module] = []
        for i in range(o.depth):
            cin = o.channels_in if i == 0 else o.channels_out
            args = dict(
                stride=o.stride if i == 0 else 1,
                padding=o.dilation * (o.kernel_size - 1) // 2,
                dilation=o.dilation,
                groups=o.groups,
            )
            if cfg.op == "conv":
                layers.append(nn.Conv2d(cin, o.channels_out, o.kernel_size, **args))
            else:
                layers.append(
                    create_op(
                        cfg.op,
                        cin,
                        o.channels_out,
                        o.kernel_size,
                        guide_channels=GUIDE_CHANNELS if self.guided else None,
                        **args,
                        **cfg.op_options,
                    )
                )
        return OpStack(layers, self.guided)

    def build_model(self, train_set: Dataset) -> tuple[nn.Module, dict[str, Any]]:
        model = self.build_network(train_set).to(self.device)
        params = sum(p.numel() for p in model.parameters())
        o = self.options
        reference = sum(
            p.numel() for p in nn.Conv2d(o.channels_in, o.channels_out, o.kernel_size, groups=o.groups).parameters()
        )
        reference += (o.depth - 1) * sum(
            p.numel() for p in nn.Conv2d(o.channels_out, o.channels_out, o.kernel_size, groups=o.groups).parameters()
        )
        summary = {
            "layers": o.depth,
            "params_before": reference,
            "params_after": params,
            "names": [f"layers.{i}" for i in range(o.depth)],
            "guide": "image" if self.guided else "none",
        }
        return model, summary

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise RuntimeError("opbench has no training loss (its budget is steps: 0)")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        return {}

    def example_inputs(self, batch_size: int, resolution: int | None = None) -> tuple[torch.Tensor, ...]:
        side = resolution or self.options.size
        x = torch.rand(batch_size, self.options.channels_in, side, side, device=self.device)
        if not self.guided:
            return (x,)
        return x, torch.rand(batch_size, GUIDE_CHANNELS, side, side, device=self.device)
