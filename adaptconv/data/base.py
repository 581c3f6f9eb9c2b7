"""Shared pieces of the data layer: the error type, the sample-format vocabulary and small helpers.

Sample formats (the contract the task modules rely on; every image is float32 in [0, 1], C×H×W):

- classification: ``{"image": C×H×W, "label": int64 scalar}``; attributes ``num_classes``,
  ``in_channels``, ``class_names``.
- segmentation: ``{"image": 3×H×W, "mask": H×W int64 (255 = ignore)}``; attributes ``num_classes``,
  ``class_names``, ``ignore_index`` (255).
- upsampling (guided depth upsampling): ``{"rgb": 3×H×W, "depth": 1×H×W float32, "valid": 1×H×W bool}``
  at the high (ground-truth) resolution; attribute ``depth_unit``. ``depth`` is 0 wherever ``valid``
  is False, so arithmetic on it never meets NaN or inf.
- denoising: ``{"clean": C×H×W}``; attribute ``in_channels``.
- video (the ``spatial_video`` task's data, :mod:`adaptconv.data.video`; not one of :data:`TASKS`, which
  the synthetic scenes serve): ``{"frames": T×3×H×W, "masks": T×H×W int64 (255 = ignore)}``, one
  frame at a time through ``frame(i, t)``; attributes ``num_classes``, ``ignore_index``.

Every dataset has a ``name`` attribute and a ``describe()`` method returning a short string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DatasetError",
    "TASKS",
    "IGNORE_INDEX",
    "BenchDataset",
    "uint8_to_float",
    "resize_shorter_center_crop",
    "center_crop_array",
]

TASKS = ("classification", "segmentation", "upsampling", "denoising")
IGNORE_INDEX = 255

Sample = dict[str, torch.Tensor]
Transform = Callable[[Sample], Sample]


class DatasetError(ValueError):
    """A dataset cannot be built: missing root, malformed on-disk layout, or an invalid option."""


class BenchDataset(Dataset):
    """Base of every dataset here: a ``name``, the ``task`` its samples are formatted for, ``describe()``.

    Subclasses implement ``__len__`` and ``_get(index)``; an optional ``transform`` (a callable taking
    and returning the sample dict) is applied by ``__getitem__``.
    """

    name: str = "dataset"
    task: str = ""
    split: str = ""

    def __init__(self, transform: Transform | None = None) -> None:
        self.transform = transform

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        return index

    def __getitem__(self, index: int) -> Sample:
        sample = self._get(self._check_index(index))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def _details(self) -> str:
        return ""

    def describe(self) -> str:
        details = self._details()
        extra = f", {details}" if details else ""
        split = f" [{self.split}]" if self.split else ""
        return f"{self.name}{split}: {len(self)} {self.task} samples{extra}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def check_choice(value: Any, choices: Sequence[Any], what: str, owner: str) -> None:
    if value not in choices:
        raise DatasetError(f"{owner}: unknown {what} {value!r}; choose one of {list(choices)}")


def uint8_to_float(array: np.ndarray) -> torch.Tensor:
    """H×W or H×W×C uint8 (or bool/float already in [0, 1]) → C×H×W float32 tensor in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype == np.uint8:
        chw = np.ascontiguousarray(array.transpose(2, 0, 1))
        if not chw.flags.writeable:  # e.g. np.asarray of a PIL image
            chw = chw.copy()
        out = torch.from_numpy(chw).float().div_(255.0)
    elif array.dtype == np.uint16:
        out = torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32) / 65535.0)
    elif array.dtype == bool:
        out = torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32))
    else:
        out = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))
        out = out.clamp_(0.0, 1.0)
    return out


def center_crop_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop of the first two axes of ``array`` to ``size`` = (h, w); error if it is smaller."""
    h, w = array.shape[:2]
    ch, cw = size
    if ch > h or cw > w:
        raise DatasetError(f"cannot crop a {h}×{w} image to {ch}×{cw}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return array[top : top + ch, left : left + cw]


def as_hw(size: int | Sequence[int], what: str = "size") -> tuple[int, int]:
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise DatasetError(f"{what} must be a positive int or (height, width); got {size!r}")
    return pair  # type: ignore[return-value]


def resize_shorter_center_crop(image: Any, size: int | tuple[int, int], resample: int) -> Any:
    """PIL image: resize so the shorter side matches the crop, then centre-crop to ``size``."""
    from PIL import Image  # noqa: F401  (PIL is a torchvision dependency)

    th, tw = as_hw(size)
    w, h = image.size
    scale = max(th / h, tw / w)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), resample=resample)
    left, top = (nw - tw) // 2, (nh - th) // 2
    return image.crop((left, top, left + tw, top + th))


def require_dir(path: Path, owner: str, layout: str) -> Path:
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise DatasetError(f"{owner}: {path} {what}; expected {layout}")
    return path


def require_file(path: Path, owner: str, layout: str) -> Path:
    if not path.is_file():
        what = "is missing" if not path.exists() else "is not a file"
        raise DatasetError(f"{owner}: {path} {what}; expected {layout}")
    return path
