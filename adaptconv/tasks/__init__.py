"""The tasks: each module owns its data, network, loss and metrics."""

from __future__ import annotations

import importlib

from ..schema import ConfigError, did_you_mean
from .base import Task

_MODULES = {
    "classification": ("adaptconv.tasks.classification", "Classification"),
    "segmentation": ("adaptconv.tasks.segmentation", "Segmentation"),
    "upsampling": ("adaptconv.tasks.upsampling", "Upsampling"),
    "denoising": ("adaptconv.tasks.denoising", "Denoising"),
    "opbench": ("adaptconv.tasks.opbench", "OpBench"),
    "spatial_segmentation": ("adaptconv.tasks.spatial_segmentation", "SpatialSegmentation"),
    "spatial_video": ("adaptconv.tasks.spatial_video", "SpatialVideo"),
}


def list_tasks() -> list[str]:
    return list(_MODULES)


def get_task(name: str) -> type[Task]:
    if name not in _MODULES:
        raise ConfigError([f"task: unknown task {name!r}{did_you_mean(name, _MODULES)}; choices: {', '.join(_MODULES)}"])
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(module), cls)


__all__ = ["Task", "get_task", "list_tasks"]
