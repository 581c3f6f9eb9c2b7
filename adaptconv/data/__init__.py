"""The data layer: built-in real data (shipped in scikit-learn / scikit-image), synthetic scenes and
videos, and loaders for real data sets on disk. It knows nothing of tasks' models, heads or metrics;
the task modules build on the sample formats described in :mod:`adaptconv.data.base`.

``DATASETS`` maps each name to a :class:`DatasetSpec` (the built-ins of :mod:`adaptconv.data.specs`,
listed in :data:`adaptconv.plugins.BUILTIN_DATASETS`, and those of plugin packages' ``adaptconv.datasets``
entry points); :func:`get_dataset` builds one for a task::

    ds = get_dataset("synthetic", "segmentation", "train", n=2000, size=32, seed=0)
    ds = get_dataset("cifar10", "classification", "test", root="/data")       # /data/cifar-10-batches-py/
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from ..plugins import BUILTIN_DATASETS, DATASETS_GROUP, PluginError, Registry
from .base import IGNORE_INDEX, TASKS, BenchDataset, DatasetError
from .builtin import (
    DEFAULT_PHOTOS,
    MIDDLEBURY_TEST_COLS,
    MIDDLEBURY_TRAIN_COLS,
    PHOTO_NAMES,
    DigitsDataset,
    MiddleburyMotorcycle,
    SamplePhotos,
    digits,
    middlebury_motorcycle,
    sample_photos,
)
from .real import (
    CIFAR10,
    CIFAR100,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS,
    IMAGE_EXTENSIONS,
    NYU_EIGEN_CROP,
    VOC_CLASSES,
    CityscapesSegmentation,
    ImageFolderClassification,
    ImageFolderDenoise,
    NYUDepthV2,
    VOCSegmentation,
)
from .specs import DatasetSpec
from .synthetic import SHAPES, TEXTURES, SceneConfig, SyntheticScenes, render_scenes
from .video import VIDEO_CLASSES, FrameFolder, SyntheticVideo, VideoDataset, VideoFrames, synthetic_video

__all__ = [
    "TASKS",
    "IGNORE_INDEX",
    "DatasetError",
    "BenchDataset",
    "DatasetSpec",
    "DATASETS",
    "REGISTRY",
    "dataset_plugin_errors",
    "get_dataset",
    "list_datasets",
    # built-in
    "digits",
    "DigitsDataset",
    "middlebury_motorcycle",
    "MiddleburyMotorcycle",
    "MIDDLEBURY_TRAIN_COLS",
    "MIDDLEBURY_TEST_COLS",
    "sample_photos",
    "SamplePhotos",
    "PHOTO_NAMES",
    "DEFAULT_PHOTOS",
    # synthetic
    "SyntheticScenes",
    "SceneConfig",
    "render_scenes",
    "SHAPES",
    "TEXTURES",
    # real, on disk
    "CIFAR10",
    "CIFAR100",
    "ImageFolderClassification",
    "NYUDepthV2",
    "NYU_EIGEN_CROP",
    "VOCSegmentation",
    "VOC_CLASSES",
    "CityscapesSegmentation",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_CLASSES",
    "ImageFolderDenoise",
    "IMAGE_EXTENSIONS",
    # video
    "VideoDataset",
    "SyntheticVideo",
    "synthetic_video",
    "FrameFolder",
    "VideoFrames",
    "VIDEO_CLASSES",
]


def _check(name: str, spec: Any, source: str) -> None:
    if not isinstance(spec, DatasetSpec):
        raise DatasetError(
            f"{source} registers dataset {name!r} but is not an adaptconv.data.DatasetSpec (got {type(spec).__name__})"
        )
    if spec.name != name:
        raise DatasetError(f"{source} registers dataset {name!r} but the spec is named {spec.name!r}; they must agree")


#: The data set registry: the built-ins of :data:`adaptconv.plugins.BUILTIN_DATASETS` and the
#: ``adaptconv.datasets`` entry points of plugin packages (each naming a :class:`DatasetSpec`).
REGISTRY: Registry[DatasetSpec] = Registry("dataset", DATASETS_GROUP, BUILTIN_DATASETS, _check, DatasetError)


class _Datasets(Mapping[str, DatasetSpec]):
    """Every data set by name (a read-only view of :data:`REGISTRY`; plugins that fail to load are left
    out and reported by :func:`dataset_plugin_errors`)."""

    def __getitem__(self, name: str) -> DatasetSpec:
        if name not in REGISTRY:
            raise KeyError(name)
        try:
            return REGISTRY.get(name)
        except DatasetError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        REGISTRY.load_all()
        return iter([n for n in REGISTRY.names() if n in REGISTRY.entries])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"DATASETS({', '.join(self)})"


#: Every data set by name.
DATASETS: Mapping[str, DatasetSpec] = _Datasets()


def dataset_plugin_errors() -> list[PluginError]:
    """Data set plugins that could not be registered, with the reason."""
    REGISTRY.load_all()
    return REGISTRY.errors()


def _formats() -> list[str]:
    """The sample formats (``task`` of :func:`get_dataset`): the built-in ones and any a plugin data set serves."""
    return list(dict.fromkeys([*TASKS, *(t for spec in DATASETS.values() for t in spec.tasks)]))


def list_datasets(task: str | None = None) -> list[str]:
    """Names of the data sets (serving ``task``, if given)."""
    if task is not None and task not in _formats():
        raise DatasetError(f"unknown task {task!r}; choose one of {_formats()}")
    return [n for n, s in DATASETS.items() if task is None or task in s.tasks]


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def get_dataset(
    name: str, task: str, split: str, root: str | os.PathLike[str] | None = None, **options: Any
) -> BenchDataset:
    """Build data set ``name`` for ``task`` and ``split``; errors name the valid choices."""
    formats = _formats()
    if task not in formats:
        raise DatasetError(f"unknown task {task!r}{_suggest(str(task), formats)}; choose one of {formats}")
    if name not in DATASETS:
        failed = [e.error for e in dataset_plugin_errors() if e.entry_point.split(" = ")[0] == name]
        hint = f" (a plugin providing {name!r} failed to load: {failed[0]})" if failed else ""
        raise DatasetError(
            f"unknown dataset {name!r}{_suggest(str(name), list(DATASETS))}{hint}; datasets: {list(DATASETS)}"
        )
    spec = DATASETS[name]
    if task not in spec.tasks:
        raise DatasetError(
            f"dataset {name!r} does not serve task {task!r} (it serves {list(spec.tasks)}); "
            f"datasets for {task}: {list_datasets(task)}"
        )
    return spec.build(split, root=root, task=task, **options)
