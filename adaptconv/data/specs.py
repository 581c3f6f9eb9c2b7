"""What a data set is to the registry (:class:`DatasetSpec`), and the built-in data sets' specs.

The registry (:data:`adaptconv.data.DATASETS`) finds these through the table
:data:`adaptconv.plugins.BUILTIN_DATASETS` (name → ``"adaptconv.data.specs:CONSTANT"``), as it finds a
plugin's spec through its ``adaptconv.datasets`` entry point.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import TASKS, BenchDataset, DatasetError
from .builtin import digits, middlebury_motorcycle, sample_photos
from .real import (
    CIFAR10 as _CIFAR10,
)
from .real import (
    CIFAR100 as _CIFAR100,
)
from .real import (
    CityscapesSegmentation,
    ImageFolderClassification,
    ImageFolderDenoise,
    NYUDepthV2,
    VOCSegmentation,
)
from .synthetic import SyntheticScenes
from .video import FrameFolder, synthetic_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """A data set as the registry (:data:`adaptconv.data.DATASETS`) holds it: a built-in here, or the
    object a plugin's ``adaptconv.datasets`` entry point names (``name`` must be the entry point's).

    ``build(split, root=None, **options)`` returns the dataset; ``options`` are the keyword arguments
    of ``factory`` (a multi-task data set also takes ``task``). ``splits`` are the split names it
    accepts. Data sets read from disk need ``root``; ``builtin`` ones have no files and do not use a
    root given to them (a data root is a machine-wide setting passed to every trial).
    """

    name: str
    tasks: tuple[str, ...]
    builtin: bool
    factory: Callable[..., BenchDataset]
    splits: tuple[str, ...]
    description: str

    def options(self) -> tuple[str, ...]:
        """Keyword options ``build`` accepts (besides split, root and, for multi-task sets, task)."""
        params = inspect.signature(self.factory).parameters
        skip = {"split", "root", "task", "self"}
        return tuple(n for n, p in params.items() if n not in skip and p.kind is not p.VAR_KEYWORD)

    def build(self, split: str, root: str | os.PathLike[str] | None = None, **options: Any) -> BenchDataset:
        if split not in self.splits:
            raise DatasetError(f"dataset {self.name!r} has no split {split!r}; choose one of {list(self.splits)}")
        task = options.pop("task", None)
        if task is not None and task not in self.tasks:
            raise DatasetError(f"dataset {self.name!r} does not serve task {task!r}; it serves {list(self.tasks)}")
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            raise DatasetError(f"dataset {self.name!r}: unknown option(s) {unknown}; options: {list(self.options())}")
        if self.builtin and root is not None:
            # a data root is a machine-wide setting (the trial config's run key ``data_root``), given to
            # every trial of a suite: built-in data sets have no files to read and do not use it
            log.debug("dataset %r is built in; root %s not used", self.name, os.fspath(root))
            root = None
        if not self.builtin and root is None:
            raise DatasetError(f"dataset {self.name!r} reads files from disk and needs root: {self.description}")
        params = inspect.signature(self.factory).parameters
        kwargs: dict[str, Any] = dict(options)
        if "split" in params:
            kwargs["split"] = split
        if "root" in params:
            kwargs["root"] = root
        if "task" in params:
            if task is None:
                if len(self.tasks) != 1:
                    raise DatasetError(f"dataset {self.name!r} serves several tasks {list(self.tasks)}; pass task=...")
                task = self.tasks[0]
            kwargs["task"] = task
        return self.factory(**kwargs)


def _synthetic(task: str, split: str = "train", n: int | None = None, **options: Any) -> SyntheticScenes:
    n = (5000 if split == "train" else 1000) if n is None else n
    return SyntheticScenes(task, n, split=split, **options)


_SYNTH_PARAMS = [
    p for p in inspect.signature(SyntheticScenes).parameters.values() if p.name not in ("task", "n", "split")
]
_synthetic.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("task", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("split", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="train"),
        inspect.Parameter("n", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _SYNTH_PARAMS],
    ]
)

DIGITS = DatasetSpec(
    "digits",
    ("classification",),
    True,
    digits,
    ("train", "test"),
    "scikit-learn's 1,797 real 8×8 handwritten digits, 10 classes, seeded stratified split (built in)",
)

MIDDLEBURY = DatasetSpec(
    "middlebury",
    ("upsampling",),
    True,
    middlebury_motorcycle,
    ("train", "test", "full"),
    "Middlebury 2014 Motorcycle RGB + disparity (px), 500×741, train columns 0–463 / test "
    "496–740 (scikit-image, built in)",
)

PHOTOS = DatasetSpec(
    "photos",
    ("denoising",),
    True,
    sample_photos,
    ("test",),
    "scikit-image's bundled photographs (camera, astronaut, coffee, chelsea, rocket by "
    "default), a denoising test set (built in)",
)

SYNTHETIC = DatasetSpec(
    "synthetic",
    TASKS,
    True,
    _synthetic,
    ("train", "test", "val"),
    "seeded scenes of textured shapes: image, segmentation, shape label, piecewise-smooth "
    "depth; n defaults to 5000 train / 1000 test (generated, built in)",
)

CIFAR10 = DatasetSpec(
    "cifar10",
    ("classification",),
    False,
    _CIFAR10,
    ("train", "test"),
    "CIFAR-10 python batches at <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
)

CIFAR100 = DatasetSpec(
    "cifar100",
    ("classification",),
    False,
    _CIFAR100,
    ("train", "test"),
    "CIFAR-100 python pickles at <root>/cifar-100-python/{train,test,meta} (fine or coarse labels)",
)

IMAGEFOLDER = DatasetSpec(
    "imagefolder",
    ("classification",),
    False,
    ImageFolderClassification,
    ("train", "val", "test"),
    "ImageNet-style tree <root>/<split>/<class>/*.JPEG, resized and centre-cropped to size ('test' falls back to val/)",
)

NYU_DEPTH_V2 = DatasetSpec(
    "nyu_depth_v2",
    ("upsampling",),
    False,
    NYUDepthV2,
    ("train", "test"),
    "NYU Depth v2 labelled set, <root>/nyu_depth_v2_labeled.mat (HDF5); frames 0–999 train, 1000–1448 test; depth in m",
)

VOC2012 = DatasetSpec(
    "voc2012",
    ("segmentation",),
    False,
    VOCSegmentation,
    ("train", "val", "trainval", "test"),
    "PASCAL VOC 2012 at <root>/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/"
    "Segmentation}; 21 classes, 255 = void; 'test' = val",
)

CITYSCAPES = DatasetSpec(
    "cityscapes",
    ("segmentation",),
    False,
    CityscapesSegmentation,
    ("train", "val", "test"),
    "Cityscapes fine annotations at <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png with "
    "<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png; 34 label ids → 19 trainIds, 255 = ignore; 'test' = val",
)

SYNTHETIC_VIDEO = DatasetSpec(
    "synthetic_video",
    ("video",),
    True,
    synthetic_video,
    ("train", "test", "val"),
    "seeded videos of moving textured discs, squares and triangles over a static textured background, "
    "with per-frame labels (4 classes); n defaults to 48 train / 8 test (generated, built in)",
)

FRAMES = DatasetSpec(
    "frames",
    ("video",),
    False,
    FrameFolder,
    ("test",),
    "one video as a folder of frames <root>/frames/*.png|jpg (name order, one size), optional labels "
    "<root>/masks/<frame stem>.png (class indices, 255 = ignore); spatial_video trains on the same labelled frames",
)

IMAGE_FOLDER_DENOISE = DatasetSpec(
    "image_folder_denoise",
    ("denoising",),
    False,
    ImageFolderDenoise,
    ("train", "test", "val"),
    "clean images (png/jpg/bmp/tif) in a flat folder <root> (a test set, e.g. BSD68) or <root>/<split>/",
)
