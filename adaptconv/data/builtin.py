"""Real data that ships inside scikit-learn and scikit-image: nothing is downloaded.

- :func:`digits` — scikit-learn's ``load_digits`` (1,797 real 8×8 handwritten digits, 10 classes).
- :func:`middlebury_motorcycle` — scikit-image's ``stereo_motorcycle()`` (Middlebury 2014
  "Motorcycle", left view 500×741 with ground-truth disparity in pixels), for guided depth upsampling.
- :func:`sample_photos` — scikit-image's bundled photographs, as a denoising test set.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import BenchDataset, DatasetError, Transform, as_hw, center_crop_array, check_choice, uint8_to_float

__all__ = [
    "DigitsDataset",
    "digits",
    "MiddleburyMotorcycle",
    "middlebury_motorcycle",
    "MIDDLEBURY_TRAIN_COLS",
    "MIDDLEBURY_TEST_COLS",
    "SamplePhotos",
    "sample_photos",
    "PHOTO_NAMES",
    "DEFAULT_PHOTOS",
]


# --------------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # pixel values are integers 0..16
    images.setflags(write=False)
    target = bunch.target.astype(np.int64)
    target.setflags(write=False)
    return images, target


class DigitsDataset(BenchDataset):
    """scikit-learn's 8×8 digits as ``{"image": 1×8×8 in [0, 1], "label": int64}``.

    The train/test split is stratified (each class keeps its proportion) and a pure function of
    ``seed`` and ``test_fraction``: the same seed gives the same split, train and test are disjoint and
    together cover all 1,797 images.
    """

    name = "digits"
    task = "classification"
    num_classes = 10
    in_channels = 1
    class_names = tuple(str(d) for d in range(10))

    def __init__(
        self, split: str = "train", seed: int = 0, test_fraction: float = 0.25, transform: Transform | None = None
    ) -> None:
        super().__init__(transform)
        check_choice(split, ("train", "test"), "split", self.name)
        if not 0.0 < test_fraction < 1.0:
            raise DatasetError(f"{self.name}: test_fraction must be in (0, 1), got {test_fraction}")
        from sklearn.model_selection import train_test_split

        images, target = _load_digits()
        train_idx, test_idx = train_test_split(
            np.arange(len(target)), test_size=test_fraction, random_state=seed, stratify=target, shuffle=True
        )
        self.indices = np.sort(train_idx if split == "train" else test_idx)
        self.split, self.seed, self.test_fraction = split, seed, test_fraction
        self.images = torch.from_numpy(images[self.indices].copy()).unsqueeze(1)
        self.labels = torch.from_numpy(target[self.indices].copy())

    def __len__(self) -> int:
        return len(self.indices)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index].clone(), "label": self.labels[index].clone()}

    def _details(self) -> str:
        return f"1×8×8 gray, 10 classes, seed {self.seed}, test fraction {self.test_fraction} (scikit-learn)"


def digits(
    split: str = "train", seed: int = 0, test_fraction: float = 0.25, transform: Transform | None = None
) -> DigitsDataset:
    """scikit-learn's digits (1,797 real 8×8 images, 10 classes), stratified split by ``seed``."""
    return DigitsDataset(split, seed=seed, test_fraction=test_fraction, transform=transform)


# --------------------------------------------------------------------------------------------------
# Middlebury 2014 Motorcycle (scikit-image)
# --------------------------------------------------------------------------------------------------

#: Column ranges [start, stop) of the left view (741 columns) used for training and testing. The
#: 32 columns between them are used by neither: no pixel is shared, and a network whose receptive
#: margin is ≤ 32 px (e.g. ×16 upsampling of a 2-px low-resolution neighbourhood, or a stack of fifteen
#: 3×3 convolutions) fed a crop touching the edge of one region never saw the pixels next to it in the
#: other. The test region (500×245) holds 33% of the image and 33% of its valid pixels.
MIDDLEBURY_TRAIN_COLS = (0, 464)
MIDDLEBURY_TEST_COLS = (496, 741)


@functools.lru_cache(maxsize=1)
def _load_motorcycle() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from skimage.data import stereo_motorcycle

    left, _right, disp = stereo_motorcycle()
    # The file holds +inf where there is no ground truth (7.3% of the pixels; scikit-image's docstring
    # says NaN, so both are treated as invalid), and finite disparities in 7.19..59.91 px, all > 0.
    valid = np.isfinite(disp) & (disp > 0)
    depth = np.where(valid, disp, 0.0).astype(np.float32)
    rgb = uint8_to_float(left)
    return rgb, torch.from_numpy(depth)[None], torch.from_numpy(valid)[None]


class MiddleburyMotorcycle(BenchDataset):
    """Guided depth (disparity) upsampling on the Middlebury 2014 Motorcycle pair bundled with
    scikit-image: ``{"rgb": 3×H×W, "depth": 1×H×W disparity in px, "valid": 1×H×W}``.

    Splits: columns ``MIDDLEBURY_TRAIN_COLS`` (0–463) train, ``MIDDLEBURY_TEST_COLS`` (496–740) test,
    32 unused columns between (see there); ``"full"`` is the whole 500×741 image as one sample.

    - train with ``patch``: ``crops`` random crops of ``patch`` (int or (h, w)) from the train region
      per epoch; crop *i* of epoch *e* is a pure function of ``(seed, e, i)`` (``set_epoch`` changes
      *e*). Crops with fewer than ``min_valid`` valid pixels are redrawn (up to 20 times). With
      ``edge_fraction`` > 0, that fraction of the crops (on average) is drawn with probability
      proportional to the number of depth-edge pixels it holds (a jump of more than ``EDGE_JUMP`` px
      to the right or lower neighbour), the rest uniformly: upsampling errors live at depth edges,
      which uniform crops of this mostly smooth scene seldom show.
    - train without ``patch``: the whole train region (500×464) as one sample.
    - test / full with ``patch``: the non-overlapping ``patch`` tiles of the region in raster order (a
      remainder narrower than a tile is dropped); without ``patch``: the whole region as one sample.
    """

    name = "middlebury"
    task = "upsampling"
    depth_unit = "disparity px"

    #: disparity jump (px) between neighbouring valid pixels that counts as a depth edge
    EDGE_JUMP = 1.0

    def __init__(
        self,
        split: str = "train",
        patch: int | Sequence[int] | None = None,
        crops: int = 256,
        seed: int = 0,
        min_valid: float = 0.5,
        transform: Transform | None = None,
        edge_fraction: float = 0.0,
    ) -> None:
        super().__init__(transform)
        check_choice(split, ("train", "test", "full"), "split", self.name)
        if not 0 <= edge_fraction <= 1:
            raise DatasetError(f"{self.name}: edge_fraction must be in [0, 1], got {edge_fraction}")
        self.edge_fraction = float(edge_fraction)
        rgb, depth, valid = _load_motorcycle()
        cols = {"train": MIDDLEBURY_TRAIN_COLS, "test": MIDDLEBURY_TEST_COLS, "full": (0, rgb.shape[-1])}[split]
        self.columns = cols
        self.rgb = rgb[..., cols[0] : cols[1]]
        self.depth = depth[..., cols[0] : cols[1]]
        self.valid = valid[..., cols[0] : cols[1]]
        self.split, self.seed, self.min_valid, self.epoch = split, int(seed), float(min_valid), 0
        self.patch = None if patch is None else as_hw(patch, "patch")
        h, w = self.rgb.shape[-2:]
        if self.patch is not None and (self.patch[0] > h or self.patch[1] > w):
            raise DatasetError(f"{self.name}: patch {self.patch} larger than the {split} region {h}×{w}")
        if crops < 1:
            raise DatasetError(f"{self.name}: crops must be ≥ 1, got {crops}")
        self.crops = int(crops)
        self.random_crops = split == "train" and self.patch is not None
        if self.patch is not None and not self.random_crops:
            ph, pw = self.patch
            self.tiles = [(y, x) for y in range(0, h - ph + 1, ph) for x in range(0, w - pw + 1, pw)]
        else:
            self.tiles = [(0, 0)]
        self._edge_cdf: np.ndarray | None = None

    def depth_stats(self) -> tuple[float, float]:
        """(mean, standard deviation) of the valid depths of the whole region (whatever the crops)."""
        v = self.depth[self.valid].double()
        return float(v.mean()), float(v.std())

    def edge_map(self) -> torch.Tensor:
        """H×W bool: valid pixels whose right or lower valid neighbour differs by more than ``EDGE_JUMP``."""
        d, v = self.depth[0], self.valid[0]
        edges = torch.zeros_like(v)
        for dy, dx in ((0, 1), (1, 0)):
            a, b = d[: d.shape[0] - dy, : d.shape[1] - dx], d[dy:, dx:]
            both = v[: d.shape[0] - dy, : d.shape[1] - dx] & v[dy:, dx:]
            edges[: d.shape[0] - dy, : d.shape[1] - dx] |= both & ((a - b).abs() > self.EDGE_JUMP)
        return edges

    def _edge_crop_cdf(self) -> np.ndarray:
        """Cumulative distribution over the crop positions (row-major top-left corners), proportional
        to the number of edge pixels in each crop."""
        if self._edge_cdf is None:
            ph, pw = self.patch  # type: ignore[misc]
            e = self.edge_map().double()
            counts = F.avg_pool2d(e[None, None], (ph, pw), stride=1)[0, 0].flatten().numpy()
            total = counts.sum()
            if total <= 0:  # no edge at all: uniform
                counts = np.ones_like(counts)
                total = counts.sum()
            self._edge_cdf = np.cumsum(counts / total)
        return self._edge_cdf

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (still deterministic) set of training crops for ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.crops if self.random_crops else len(self.tiles)

    def crop_box(self, index: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of sample ``index`` within this split's region."""
        h, w = self.rgb.shape[-2:]
        if not self.random_crops:
            ph, pw = self.patch if self.patch is not None else (h, w)
            top, left = self.tiles[index]
            return top, left, ph, pw
        ph, pw = self.patch  # type: ignore[misc]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for _ in range(20):
            if self.edge_fraction > 0 and rng.random() < self.edge_fraction:
                cdf = self._edge_crop_cdf()
                pos = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)
                top, left = divmod(pos, w - pw + 1)
            else:
                top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            if self.valid[0, top : top + ph, left : left + pw].float().mean() >= self.min_valid:
                break
        return top, left, ph, pw

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        top, left, ph, pw = self.crop_box(index)
        win = (..., slice(top, top + ph), slice(left, left + pw))
        return {"rgb": self.rgb[win].clone(), "depth": self.depth[win].clone(), "valid": self.valid[win].clone()}

    def _details(self) -> str:
        h = self.rgb.shape[-2]
        edges = f", {self.edge_fraction:.0%} drawn by their depth edges" if self.edge_fraction else ""
        what = (
            f"{self.crops} random {self.patch[0]}×{self.patch[1]} crops/epoch (seed {self.seed}{edges})"
            if self.random_crops
            else f"{self.patch[0]}×{self.patch[1]} tiles"
            if self.patch
            else "whole region"
        )
        return (
            f"Middlebury 2014 Motorcycle (scikit-image), columns {self.columns[0]}–{self.columns[1] - 1} "
            f"({h}×{self.columns[1] - self.columns[0]}), {what}, disparity in px"
        )


def middlebury_motorcycle(
    split: str = "train",
    patch: int | Sequence[int] | None = None,
    crops: int = 256,
    seed: int = 0,
    min_valid: float = 0.5,
    transform: Transform | None = None,
    edge_fraction: float = 0.0,
) -> MiddleburyMotorcycle:
    """Middlebury 2014 Motorcycle (scikit-image) for guided depth upsampling; see
    :class:`MiddleburyMotorcycle` for the column split and the crops."""
    return MiddleburyMotorcycle(
        split,
        patch=patch,
        crops=crops,
        seed=seed,
        min_valid=min_valid,
        transform=transform,
        edge_fraction=edge_fraction,
    )


# --------------------------------------------------------------------------------------------------
# scikit-image photographs
# --------------------------------------------------------------------------------------------------

#: Real photographs bundled in scikit-image's wheel (each verified to load offline with 0.26).
PHOTO_NAMES = (
    "camera",
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "cat",
    "coins",
    "moon",
    "page",
    "text",
    "clock",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "brick",
    "grass",
    "gravel",
)
#: The default denoising set: a portrait, an indoor still life, an animal and an outdoor scene
#: (camera 512×512 gray, astronaut 512×512, coffee 400×600, chelsea 300×451, rocket 427×640) — fine
#: texture, edges and flat regions; the gray camera is repeated to 3 channels unless ``gray``.
DEFAULT_PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket")


def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    try:
        return np.asarray(getattr(skimage.data, name)())
    except (ModuleNotFoundError, OSError) as err:  # an older scikit-image that would download it
        raise DatasetError(
            f"photos: scikit-image {skimage.__version__} does not ship {name!r} in its wheel "
            f"({err}); nothing is downloaded here — choose other photos or a newer scikit-image"
        ) from err


class SamplePhotos(BenchDataset):
    """scikit-image's bundled photographs as a denoising test set: ``{"clean": C×H×W}``.

    ``gray=True`` converts to one channel (ITU-R 601 luma, as PIL's ``"L"``); otherwise gray photos
    are repeated to 3 channels. ``crop`` (int or (h, w)) centre-crops every photo to that size so they
    batch; ``None`` keeps each photo's own size.
    """

    name = "photos"
    task = "denoising"
    split = "test"

    def __init__(
        self,
        names: Sequence[str] | None = None,
        gray: bool = False,
        crop: int | Sequence[int] | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        self.names = tuple(DEFAULT_PHOTOS if names is None else names)
        if not self.names:
            raise DatasetError(f"{self.name}: names is empty; choose from {list(PHOTO_NAMES)}")
        for n in self.names:
            check_choice(n, PHOTO_NAMES, "photo", self.name)
        self.gray = bool(gray)
        self.in_channels = 1 if gray else 3
        self.crop = None if crop is None else as_hw(crop, "crop")
        self.images = [self._prepare(n) for n in self.names]

    def _prepare(self, name: str) -> torch.Tensor:
        array = _load_photo(name)
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[:, :, :3]
        if self.crop is not None:
            try:
                array = center_crop_array(array, self.crop)
            except DatasetError as err:
                raise DatasetError(f"{self.name}: photo {name!r}: {err}") from None
        image = uint8_to_float(array)
        if self.gray and image.shape[0] == 3:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            image = (image * weights).sum(0, keepdim=True)
        elif not self.gray and image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
        return image

    def __len__(self) -> int:
        return len(self.images)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        return {"clean": self.images[index].clone()}

    def _details(self) -> str:
        size = f"cropped to {self.crop[0]}×{self.crop[1]}" if self.crop else "full size"
        return f"scikit-image photos {', '.join(self.names)}; {'gray' if self.gray else 'RGB'}, {size}"


def sample_photos(
    names: Sequence[str] | None = None,
    gray: bool = False,
    crop: int | Sequence[int] | None = None,
    transform: Transform | None = None,
) -> SamplePhotos:
    """scikit-image's photographs (default ``DEFAULT_PHOTOS``) as ``{"clean": ...}`` samples."""
    return SamplePhotos(names, gray=gray, crop=crop, transform=transform)
