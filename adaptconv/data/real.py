"""Real data sets read from disk, in their published on-disk formats. Nothing here downloads.

Every loader takes ``root`` (the path the user gives) and ``split``. A missing root or a malformed
layout raises :class:`~adaptconv.data.base.DatasetError` naming the path and the expected layout.

==================  =================================================================================
loader              what must be on disk
==================  =================================================================================
``CIFAR10``         ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
                    (the python-pickle version, as unpacked from ``cifar-10-python.tar.gz``; also
                    what ``torchvision.datasets.CIFAR10`` writes). ``root`` may also be that folder.
``CIFAR100``        ``<root>/cifar-100-python/{train, test, meta}`` (``cifar-100-python.tar.gz``).
``ImageFolderClassification``  ``<root>/<split>/<class>/<image>`` (ImageNet style; any PIL-readable
                    image with a usual extension). Class indices follow the sorted class folders of
                    ``<root>/train`` when it exists (so every split agrees), else of the split's own.
``NYUDepthV2``      ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5), ``root`` being the file or its
                    folder; datasets ``images`` (N×3×640×480 uint8) and ``depths`` (N×640×480, metres).
``VOCSegmentation`` ``<root>/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
                    ImageSets/Segmentation/<split>.txt}``; ``root`` may also be ``VOCdevkit`` or
                    ``VOC2012`` itself.
``CityscapesSegmentation``  ``<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
                    ``<root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``; label ids mapped
                    to the 19 trainIds (others 255).
``ImageFolderDenoise``  a flat folder of ``.png .jpg .jpeg .bmp .tif .tiff`` images (BSD68, Set12,
                    Kodak24, ...), served as split ``"test"``; or ``<root>/<split>/`` folders.
==================  =================================================================================

Where a data set has no labelled test split (VOC 2012, Cityscapes, ImageNet), ``split="test"`` means its
validation split (``val``), the one papers report on.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import (
    IGNORE_INDEX,
    BenchDataset,
    DatasetError,
    Transform,
    as_hw,
    check_choice,
    require_dir,
    require_file,
    resize_shorter_center_crop,
    uint8_to_float,
)

__all__ = [
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
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _root(root: str | os.PathLike[str] | None, owner: str, layout: str) -> Path:
    if root is None:
        raise DatasetError(f"{owner}: no root given; expected {layout}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{owner}: root {path} does not exist; expected {layout}")
    return path


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle batches)
# --------------------------------------------------------------------------------------------------


def _unpickle(path: Path, owner: str, layout: str) -> dict[str, Any]:
    """One CIFAR pickle (written by Python 2: latin-1 keeps its byte strings intact) with str keys."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DatasetError(
            f"{owner}: cannot read {path} as a CIFAR pickle ({type(err).__name__}: {err}); expected {layout}"
        ) from None
    if not isinstance(entry, dict):
        raise DatasetError(f"{owner}: {path} holds a {type(entry).__name__}, not a dict; expected {layout}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _names(values: Sequence[Any]) -> tuple[str, ...]:
    return tuple(v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values)


class _CIFAR(BenchDataset):
    """CIFAR python batches read with ``pickle`` directly rather than through torchvision's classes:
    torchvision verifies every file's md5 and answers a mismatch or a missing file with "Dataset not
    found or corrupted", without naming the path. Here each file is checked and named; ``verify=True``
    also checks the md5 sums torchvision knows (``torchvision.datasets.CIFAR10.train_list`` etc.).

    Samples: ``{"image": 3×32×32 float in [0, 1], "label": int64}``; 50,000 train / 10,000 test.
    """

    task = "classification"
    in_channels = 3
    folder = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file = ""
    tv_class = ""

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "train",
        verify: bool = False,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        check_choice(split, ("train", "test"), "split", self.name)
        layout = self.layout()
        path = _root(root, self.name, layout)
        base = path if path.name == self.folder and not (path / self.folder).exists() else path / self.folder
        require_dir(base, self.name, layout)
        files = self.train_files if split == "train" else self.test_files
        for fname in (*files, self.meta_file):
            require_file(base / fname, self.name, layout)
        if verify:
            self._verify(base, layout)
        meta = _unpickle(base / self.meta_file, self.name, layout)
        names_key = self._names_key()
        if names_key not in meta:
            raise DatasetError(
                f"{self.name}: {base / self.meta_file} has no {names_key!r} (keys: {sorted(meta)}); expected {layout}"
            )
        self.class_names = _names(meta[names_key])
        self.num_classes = len(self.class_names)
        images, labels = [], []
        label_key = self._label_key()
        for fname in files:
            entry = _unpickle(base / fname, self.name, layout)
            for key in ("data", label_key):
                if key not in entry:
                    raise DatasetError(
                        f"{self.name}: {base / fname} has no {key!r} (keys: {sorted(entry)}); expected {layout}"
                    )
            data = np.asarray(entry["data"])
            lab = np.asarray(entry[label_key], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lab) != len(data):
                raise DatasetError(
                    f"{self.name}: {base / fname}: 'data' is {data.dtype} {data.shape} with "
                    f"{len(lab)} labels; expected uint8 N×3072 (3×32×32 per row) and N labels"
                )
            if len(lab) and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise DatasetError(f"{self.name}: {base / fname}: labels outside 0..{self.num_classes - 1}")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(lab)
        self.images = torch.from_numpy(np.concatenate(images))
        self.labels = torch.from_numpy(np.concatenate(labels))
        self.split, self.root = split, base

    def layout(self) -> str:
        files = ", ".join((*self.train_files, *self.test_files, self.meta_file))
        return (
            f"<root>/{self.folder}/{{{files}}} (the CIFAR python pickle format, as unpacked from "
            f"{self.folder.replace('-batches-py', '-python')}.tar.gz or written by torchvision)"
        )

    def _names_key(self) -> str:
        return "label_names"

    def _label_key(self) -> str:
        return "labels"

    def _verify(self, base: Path, layout: str) -> None:
        import torchvision.datasets
        from torchvision.datasets.utils import check_integrity

        tv = getattr(torchvision.datasets, self.tv_class)
        for fname, md5 in (*tv.train_list, *tv.test_list, (tv.meta["filename"], tv.meta["md5"])):
            if (base / fname).exists() and not check_integrity(str(base / fname), md5):
                raise DatasetError(
                    f"{self.name}: {base / fname} fails its md5 check (expected {md5}); expected {layout}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index].float().div(255.0), "label": self.labels[index].clone()}

    def _details(self) -> str:
        return f"3×32×32, {self.num_classes} classes, from {self.root}"


class CIFAR10(_CIFAR):
    """CIFAR-10 from ``<root>/cifar-10-batches-py/`` (see :class:`_CIFAR`)."""

    name = "cifar10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    tv_class = "CIFAR10"


class CIFAR100(_CIFAR):
    """CIFAR-100 from ``<root>/cifar-100-python/``; ``labels="fine"`` (100 classes) or ``"coarse"`` (20)."""

    name = "cifar100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    tv_class = "CIFAR100"

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "train",
        labels: str = "fine",
        verify: bool = False,
        transform: Transform | None = None,
    ) -> None:
        check_choice(labels, ("fine", "coarse"), "labels", self.name)
        self.label_type = labels
        super().__init__(root, split, verify=verify, transform=transform)

    def _names_key(self) -> str:
        return f"{self.label_type}_label_names"

    def _label_key(self) -> str:
        return f"{self.label_type}_labels"


# --------------------------------------------------------------------------------------------------
# ImageFolder (ImageNet-style) classification
# --------------------------------------------------------------------------------------------------


def _split_dir(root: Path, split: str, owner: str, layout: str) -> Path:
    path = root / split
    if not path.is_dir() and split == "test" and (root / "val").is_dir():
        path = root / "val"
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DatasetError(
            f"{owner}: split folder {path} does not exist (folders in {root}: {found}); expected {layout}"
        )
    return path


class ImageFolderClassification(BenchDataset):
    """ImageNet-style ``<root>/<split>/<class>/<image>``, listed by torchvision's ImageFolder logic
    (``torchvision.datasets.folder.make_dataset``, its extensions) with the class list fixed as below.

    Images are converted to RGB, resized so the shorter side is ``resize`` (default ``round(size /
    0.875)``, i.e. 256 for 224, the usual ImageNet evaluation) and centre-cropped to ``size``.
    ``split="test"`` uses ``<root>/val`` when ``<root>/test`` does not exist.
    """

    name = "imagefolder"
    task = "classification"
    in_channels = 3

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "train",
        size: int = 224,
        resize: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        from torchvision import transforms
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        layout = "<root>/<split>/<class>/<image>.jpg (torchvision ImageFolder / ImageNet layout)"
        base = _root(root, self.name, layout)
        require_dir(base, self.name, layout)
        folder = _split_dir(base, split, self.name, layout)
        class_root = base / "train" if (base / "train").is_dir() else folder
        classes = sorted(e.name for e in os.scandir(class_root) if e.is_dir())
        if not classes:
            raise DatasetError(f"{self.name}: no class folders in {class_root}; expected {layout}")
        extra = sorted({e.name for e in os.scandir(folder) if e.is_dir()} - set(classes))
        if extra:
            raise DatasetError(
                f"{self.name}: {folder} has class folders {extra} that {class_root} lacks; "
                f"every split must use the classes of {class_root}"
            )
        size = int(size)
        resize = int(resize) if resize is not None else round(size / 0.875)
        pipeline = transforms.Compose([transforms.Resize(resize, antialias=True), transforms.CenterCrop(size)])

        try:
            self.samples = make_dataset(
                str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS, allow_empty=True
            )
        except (FileNotFoundError, ValueError) as err:
            raise DatasetError(f"{self.name}: {folder}: {err}; expected {layout}") from None
        if not self.samples:
            raise DatasetError(
                f"{self.name}: no images under {folder}/<class>/ (extensions "
                f"{', '.join(IMG_EXTENSIONS)}); expected {layout}"
            )
        self.pipeline = pipeline
        self.class_names = tuple(classes)
        self.num_classes = len(classes)
        self.split, self.size, self.root = split, size, folder

    def __len__(self) -> int:
        return len(self.samples)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        path, label = self.samples[index]
        image = uint8_to_float(np.asarray(self.pipeline(_open_image(Path(path), self.name).convert("RGB"))))
        return {"image": image, "label": torch.tensor(label, dtype=torch.int64)}

    def _details(self) -> str:
        return f"3×{self.size}×{self.size}, {self.num_classes} classes, from {self.root}"


# --------------------------------------------------------------------------------------------------
# NYU Depth v2 (labelled set, MATLAB v7.3 / HDF5)
# --------------------------------------------------------------------------------------------------

#: (top, bottom, left, right) of the 480×640 frame kept by ``crop=True``: rows 45..470, columns
#: 41..600 (426×560), the crop of Eigen et al. (NIPS 2014) that removes the white border left by
#: registering the RGB and depth cameras.
NYU_EIGEN_CROP = (45, 471, 41, 601)
NYU_FILE = "nyu_depth_v2_labeled.mat"


class NYUDepthV2(BenchDataset):
    """NYU Depth v2 labelled set (1,449 RGB-D frames, 480×640) for guided depth upsampling.

    The file stores MATLAB's column-major arrays as h5py sees them: ``images`` N×3×W×H uint8 and
    ``depths`` N×W×H float (metres, in-painted, so all > 0 in the real file); both are transposed back
    to H×W here. Split (the guided depth super-resolution convention of DKN / FDKN and followers): the
    first ``train_count`` = 1,000 frames train, the rest (449) test. ``crop=True`` keeps
    ``NYU_EIGEN_CROP`` (426×560), ``False`` the whole 480×640 frame, or give your own (top, bottom,
    left, right). ``valid`` marks finite depths > 0.

    The file is opened lazily in each process that reads it (h5py handles do not survive ``fork``).
    """

    name = "nyu_depth_v2"
    task = "upsampling"
    depth_unit = "m"

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "train",
        crop: bool | Sequence[int] = True,
        train_count: int = 1000,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        import h5py

        check_choice(split, ("train", "test"), "split", self.name)
        layout = (
            f"the file {NYU_FILE} (MATLAB v7.3 / HDF5) at <root> or <root>/{NYU_FILE}, with datasets "
            f"'images' (N×3×640×480 uint8) and 'depths' (N×640×480 float, metres)"
        )
        path = _root(root, self.name, layout)
        if path.is_dir():
            path = require_file(path / NYU_FILE, self.name, layout)
        if not h5py.is_hdf5(path):
            raise DatasetError(f"{self.name}: {path} is not an HDF5 (MATLAB v7.3) file; expected {layout}")
        with h5py.File(path, "r") as f:
            for key in ("images", "depths"):
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise DatasetError(
                        f"{self.name}: {path} has no dataset {key!r} (keys: {sorted(f)}); expected {layout}"
                    )
            ishape, dshape = f["images"].shape, f["depths"].shape
        if len(ishape) != 4 or ishape[1] != 3 or tuple(dshape) != (ishape[0], ishape[2], ishape[3]):
            raise DatasetError(
                f"{self.name}: {path}: 'images' {ishape} and 'depths' {dshape} do not match; expected {layout}"
            )
        n, width, height = ishape[0], ishape[2], ishape[3]
        if not 0 < train_count < n:
            raise DatasetError(
                f"{self.name}: {path} holds {n} frames; train_count={train_count} leaves "
                f"no {'train' if train_count <= 0 else 'test'} frames"
            )
        if crop is True:
            crop = NYU_EIGEN_CROP
        if crop is False or crop is None:
            box = (0, height, 0, width)
        else:
            box = tuple(int(c) for c in crop)  # type: ignore[union-attr]
            if len(box) != 4 or not (0 <= box[0] < box[1] <= height and 0 <= box[2] < box[3] <= width):
                raise DatasetError(
                    f"{self.name}: crop {crop} (top, bottom, left, right) does not fit the "
                    f"{height}×{width} frames of {path}"
                )
        self.box = box
        self.path, self.split, self.train_count = path, split, int(train_count)
        self.frames = range(0, train_count) if split == "train" else range(train_count, n)
        self._file: Any = None
        self._pid: int | None = None

    def _h5(self) -> Any:
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __len__(self) -> int:
        return len(self.frames)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        f = self._h5()
        frame = self.frames[index]
        top, bottom, left, right = self.box
        # file axes are (frame, channel, x, y): slice x (columns) then y (rows), transpose to rows first
        image = np.asarray(f["images"][frame, :, left:right, top:bottom]).transpose(0, 2, 1)
        depth = np.asarray(f["depths"][frame, left:right, top:bottom], dtype=np.float32).T
        if image.dtype != np.uint8:
            raise DatasetError(f"{self.name}: {self.path}: 'images' is {image.dtype}, expected uint8")
        valid = np.isfinite(depth) & (depth > 0)
        return {
            "rgb": torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0),
            "depth": torch.from_numpy(np.where(valid, depth, 0.0).astype(np.float32))[None],
            "valid": torch.from_numpy(valid)[None],
        }

    def _details(self) -> str:
        top, bottom, left, right = self.box
        return (
            f"frames {self.frames.start}..{self.frames.stop - 1}, crop rows {top}..{bottom - 1} cols "
            f"{left}..{right - 1} ({bottom - top}×{right - left}), depth in m, from {self.path}"
        )


# --------------------------------------------------------------------------------------------------
# PASCAL VOC 2012 segmentation
# --------------------------------------------------------------------------------------------------

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _open_image(path: Path, owner: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"{owner}: cannot read image {path}: {err}") from None
    return image


class VOCSegmentation(BenchDataset):
    """PASCAL VOC 2012 semantic segmentation: ``{"image": 3×H×W, "mask": H×W int64}``, 21 classes,
    255 = the void/boundary label of the palette PNGs (``ignore_index``).

    Splits: ``train`` (1,464), ``val`` (1,449), ``trainval``; ``test`` means ``val`` (the test
    annotations are not public). ``size=None`` keeps each image's own size; an int or (h, w) resizes
    the shorter side and centre-crops (image bilinear, mask nearest).
    """

    name = "voc2012"
    task = "segmentation"
    class_names = VOC_CLASSES
    num_classes = len(VOC_CLASSES)
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "train",
        size: int | Sequence[int] | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        check_choice(split, ("train", "val", "trainval", "test"), "split", self.name)
        layout = (
            "<root>/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
            "ImageSets/Segmentation/{train,val,trainval}.txt} (the VOCtrainval_11-May-2012.tar layout)"
        )
        path = _root(root, self.name, layout)
        for candidate in (path / "VOCdevkit" / "VOC2012", path / "VOC2012", path):
            if (candidate / "JPEGImages").is_dir() or (candidate / "ImageSets").is_dir():
                base = candidate
                break
        else:
            raise DatasetError(
                f"{self.name}: found no VOC2012 folder at {path / 'VOCdevkit' / 'VOC2012'}; expected {layout}"
            )
        file_split = "val" if split == "test" else split
        list_file = require_file(base / "ImageSets" / "Segmentation" / f"{file_split}.txt", self.name, layout)
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"{self.name}: {list_file} lists no image ids; expected {layout}")
        for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
            require_dir(base / sub, self.name, layout)
            missing = [i for i in ids if not (base / sub / f"{i}{ext}").is_file()]
            if missing:
                raise DatasetError(
                    f"{self.name}: {len(missing)} of the {len(ids)} files listed in {list_file} "
                    f"are missing, e.g. {base / sub / (missing[0] + ext)}; expected {layout}"
                )
        self.ids, self.base, self.split = ids, base, split
        self.size = None if size is None else as_hw(size, "size")

    def __len__(self) -> int:
        return len(self.ids)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        image_path = self.base / "JPEGImages" / f"{self.ids[index]}.jpg"
        mask_path = self.base / "SegmentationClass" / f"{self.ids[index]}.png"
        image = _open_image(image_path, self.name).convert("RGB")
        mask = _open_image(mask_path, self.name)
        if mask.mode not in ("P", "L"):
            raise DatasetError(
                f"{self.name}: {mask_path} is a {mask.mode} image; expected a palette (P) PNG "
                f"whose indices are the class labels (0..20, 255 = void)"
            )
        if mask.size != image.size:
            raise DatasetError(
                f"{self.name}: {mask_path} is {mask.size[1]}×{mask.size[0]} but {image_path} is "
                f"{image.size[1]}×{image.size[0]}"
            )
        if self.size is not None:
            image = resize_shorter_center_crop(image, self.size, Image.BILINEAR)
            mask = resize_shorter_center_crop(mask, self.size, Image.NEAREST)
        labels = np.array(mask, dtype=np.uint8)
        bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX)
        if bad.any():
            raise DatasetError(
                f"{self.name}: {mask_path} has label values {sorted(set(labels[bad].tolist()))[:5]} "
                f"outside 0..{self.num_classes - 1} and {IGNORE_INDEX}"
            )
        return {"image": uint8_to_float(np.asarray(image)), "mask": torch.from_numpy(labels.astype(np.int64))}

    def _details(self) -> str:
        size = f"resized/cropped to {self.size[0]}×{self.size[1]}" if self.size else "native sizes"
        return f"21 classes, 255 = void, {size}, from {self.base}"


# --------------------------------------------------------------------------------------------------
# Cityscapes (fine annotations)
# --------------------------------------------------------------------------------------------------

#: The 34 label ids of the gtFine ``*_labelIds.png`` files as cityscapesScripts' ``labels.py`` defines
#: them: (id, name, trainId). 255 = ignored in training and evaluation. ``license plate`` (id -1) is
#: never drawn into the label images, so it has no entry.
CITYSCAPES_LABELS = (
    (0, "unlabeled", 255),
    (1, "ego vehicle", 255),
    (2, "rectification border", 255),
    (3, "out of roi", 255),
    (4, "static", 255),
    (5, "dynamic", 255),
    (6, "ground", 255),
    (7, "road", 0),
    (8, "sidewalk", 1),
    (9, "parking", 255),
    (10, "rail track", 255),
    (11, "building", 2),
    (12, "wall", 3),
    (13, "fence", 4),
    (14, "guard rail", 255),
    (15, "bridge", 255),
    (16, "tunnel", 255),
    (17, "pole", 5),
    (18, "polegroup", 255),
    (19, "traffic light", 6),
    (20, "traffic sign", 7),
    (21, "vegetation", 8),
    (22, "terrain", 9),
    (23, "sky", 10),
    (24, "person", 11),
    (25, "rider", 12),
    (26, "car", 13),
    (27, "truck", 14),
    (28, "bus", 15),
    (29, "caravan", 255),
    (30, "trailer", 255),
    (31, "train", 16),
    (32, "motorcycle", 17),
    (33, "bicycle", 18),
)
#: The 19 evaluated classes, in trainId order.
CITYSCAPES_CLASSES = tuple(
    name for _, name, train_id in sorted(CITYSCAPES_LABELS, key=lambda e: e[2]) if train_id != 255
)
_CITYSCAPES_IMAGE = "_leftImg8bit.png"
_CITYSCAPES_LABEL = "_gtFine_labelIds.png"


def _cityscapes_lut() -> np.ndarray:
    """label id → trainId for every uint8 value; ids outside the table map to 256 (caught as errors)."""
    lut = np.full(256, 256, dtype=np.int64)
    for label_id, _, train_id in CITYSCAPES_LABELS:
        lut[label_id] = train_id
    return lut


class CityscapesSegmentation(BenchDataset):
    """Cityscapes semantic segmentation with the fine annotations: ``{"image": 3×H×W, "mask": H×W
    int64}``, the 34 label ids of ``*_gtFine_labelIds.png`` mapped to the 19 trainIds of
    :data:`CITYSCAPES_LABELS` (every other id 255 = ``ignore_index``).

    Layout (``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` unpacked into one folder):
    ``<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
    ``<root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``. Splits: ``train`` (2,975),
    ``val`` (500); ``test`` means ``val`` (the test annotations are not public). ``size=None`` keeps
    the 1024×2048 frames; an int or (h, w) resizes the shorter side and centre-crops (image
    bilinear, mask nearest), as for VOC.
    """

    name = "cityscapes"
    task = "segmentation"
    class_names = CITYSCAPES_CLASSES
    num_classes = len(CITYSCAPES_CLASSES)
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "train",
        size: int | Sequence[int] | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        check_choice(split, ("train", "val", "test"), "split", self.name)
        layout = (
            f"<root>/leftImg8bit/<split>/<city>/<stem>{_CITYSCAPES_IMAGE} and "
            f"<root>/gtFine/<split>/<city>/<stem>{_CITYSCAPES_LABEL} (leftImg8bit_trainvaltest.zip and "
            f"gtFine_trainvaltest.zip unpacked into <root>)"
        )
        path = _root(root, self.name, layout)
        file_split = "val" if split == "test" else split
        image_dir = require_dir(path / "leftImg8bit" / file_split, self.name, layout)
        label_dir = require_dir(path / "gtFine" / file_split, self.name, layout)
        cities = sorted(p for p in image_dir.iterdir() if p.is_dir())
        if not cities:
            raise DatasetError(f"{self.name}: no city folders in {image_dir}; expected {layout}")
        samples = []
        for city in cities:
            for image in sorted(city.glob(f"*{_CITYSCAPES_IMAGE}")):
                stem = image.name[: -len(_CITYSCAPES_IMAGE)]
                samples.append((image, label_dir / city.name / f"{stem}{_CITYSCAPES_LABEL}"))
        if not samples:
            raise DatasetError(f"{self.name}: no *{_CITYSCAPES_IMAGE} in {image_dir}/<city>/; expected {layout}")
        missing = [(image, label) for image, label in samples if not label.is_file()]
        if missing:
            image, label = missing[0]
            raise DatasetError(
                f"{self.name}: {len(missing)} of the {len(samples)} images have no label file, e.g. "
                f"{image} has no {label}; expected {layout}"
            )
        self.samples, self.root, self.split = samples, path, split
        self.cities = tuple(c.name for c in cities)
        self.size = None if size is None else as_hw(size, "size")
        self._lut = _cityscapes_lut()

    def __len__(self) -> int:
        return len(self.samples)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        image_path, label_path = self.samples[index]
        image = _open_image(image_path, self.name).convert("RGB")
        label = _open_image(label_path, self.name)
        if label.mode not in ("L", "P"):
            raise DatasetError(
                f"{self.name}: {label_path} is a {label.mode} image; expected an 8-bit PNG of label ids "
                f"(0..{len(CITYSCAPES_LABELS) - 1}, the gtFine *{_CITYSCAPES_LABEL})"
            )
        if label.size != image.size:
            raise DatasetError(
                f"{self.name}: {label_path} is {label.size[1]}×{label.size[0]} but {image_path} is "
                f"{image.size[1]}×{image.size[0]}"
            )
        ids = np.asarray(label, dtype=np.uint8)
        train_ids = self._lut[ids]
        bad = train_ids > IGNORE_INDEX  # ids outside the table (the lookup gives 256)
        if bad.any():
            raise DatasetError(
                f"{self.name}: {label_path} has label ids {sorted(set(ids[bad].tolist()))[:5]} outside the "
                f"Cityscapes table (0..{len(CITYSCAPES_LABELS) - 1})"
            )
        if self.size is not None:
            image = resize_shorter_center_crop(image, self.size, Image.BILINEAR)
            mask = resize_shorter_center_crop(Image.fromarray(train_ids.astype(np.uint8)), self.size, Image.NEAREST)
            train_ids = np.asarray(mask)
        return {"image": uint8_to_float(np.asarray(image)), "mask": torch.from_numpy(train_ids.astype(np.int64))}

    def _details(self) -> str:
        size = f"resized/cropped to {self.size[0]}×{self.size[1]}" if self.size else "native sizes"
        return f"19 classes (trainIds), 255 = ignore, {len(self.cities)} cities, {size}, from {self.root}"


# --------------------------------------------------------------------------------------------------
# Folder of clean images (denoising test sets)
# --------------------------------------------------------------------------------------------------


def _image_mode(path: Path, owner: str) -> str:
    """PIL mode from the file header only (no pixel decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.mode
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"{owner}: cannot read image {path}: {err}") from None


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolderDenoise(BenchDataset):
    """Clean images for denoising: every ``.png .jpg .jpeg .bmp .tif .tiff`` file of a folder, sorted by
    name, as ``{"clean": C×H×W}``.

    Layout: a flat folder (BSD68, Set12, Kodak24, ...) is a test set, served for ``split="test"``;
    for training and testing from one root use ``<root>/train/`` and ``<root>/test/``.
    ``gray=None`` chooses 1 channel when every image is single-channel, else 3 (gray images repeated);
    ``True`` converts to luma, ``False`` to RGB. 16-bit images are scaled by 1/65535, 8-bit by 1/255.
    ``crop`` (int or (h, w)) centre-crops every image (so they batch); ``None`` keeps full size.
    """

    name = "image_folder_denoise"
    task = "denoising"

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "test",
        gray: bool | None = None,
        crop: int | Sequence[int] | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        exts = " ".join(IMAGE_EXTENSIONS)
        layout = f"a folder of images ({exts}) at <root> (served as split 'test') or at <root>/<split>/"
        path = _root(root, self.name, layout)
        require_dir(path, self.name, layout)
        flat = _list_images(path)
        if flat and (path / split).is_dir():
            raise DatasetError(f"{self.name}: {path} holds both images and a {split}/ folder; expected {layout}")
        if flat:
            if split != "test":
                raise DatasetError(
                    f"{self.name}: {path} is a flat folder of images, served only as split "
                    f"'test' (asked for {split!r}); for training lay out <root>/train/ and "
                    f"<root>/test/"
                )
            folder, files = path, flat
        else:
            folder = _split_dir(path, split, self.name, layout)
            files = _list_images(folder)
        if not files:
            raise DatasetError(f"{self.name}: no images ({exts}) in {folder}; expected {layout}")
        if gray is None:
            gray = all(_image_mode(p, self.name) in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F") for p in files)
        self.files, self.folder, self.split, self.gray = files, folder, split, bool(gray)
        self.in_channels = 1 if self.gray else 3
        self.crop = None if crop is None else as_hw(crop, "crop")

    def __len__(self) -> int:
        return len(self.files)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        path = self.files[index]
        image = _open_image(path, self.name)
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):
            array = np.asarray(image).astype(np.float32)
            array = array / (65535.0 if image.mode != "F" else 1.0)
            clean = torch.from_numpy(np.clip(array, 0.0, 1.0))[None]
        else:
            mode = "L" if self.gray or image.mode in ("L", "1") else "RGB"
            clean = uint8_to_float(np.asarray(image.convert(mode)))
        if self.gray and clean.shape[0] == 3:  # pragma: no cover - handled by convert("L")
            clean = clean.mean(0, keepdim=True)
        if not self.gray and clean.shape[0] == 1:
            clean = clean.expand(3, -1, -1).contiguous()
        if self.crop is not None:
            h, w = clean.shape[-2:]
            ch, cw = self.crop
            if ch > h or cw > w:
                raise DatasetError(f"{self.name}: cannot crop {path} ({h}×{w}) to {ch}×{cw}")
            top, left = (h - ch) // 2, (w - cw) // 2
            clean = clean[:, top : top + ch, left : left + cw].contiguous()
        return {"clean": clean}

    def _details(self) -> str:
        size = f"cropped to {self.crop[0]}×{self.crop[1]}" if self.crop else "full size"
        return f"{'gray' if self.gray else 'RGB'}, {size}, from {self.folder}"
