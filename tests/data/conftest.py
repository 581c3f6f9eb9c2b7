"""Writers of small files in the real on-disk formats of the data sets (CIFAR pickles, NYU's MATLAB v7.3
HDF5 file, VOC's JPEGs and palette PNGs, Cityscapes' city folders of PNGs, class folders of JPEGs),
for the loaders' tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _pickle(path: Path, obj: object, bytes_keys: bool) -> None:
    if bytes_keys:  # what the original files give under pickle.load(..., encoding="bytes")
        obj = {k.encode(): v for k, v in obj.items()}  # type: ignore[union-attr]
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 3, bytes_keys: bool = False) -> dict:
    """``root/cifar-10-batches-py/`` with 5 train batches of ``per_batch`` images and a test batch."""
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    truth: dict[str, list] = {"train_data": [], "train_labels": []}
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        _pickle(
            base / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
            },
            bytes_keys,
        )
        truth["train_data"].append(data)
        truth["train_labels"] += labels
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = [int(x) for x in rng.integers(0, 10, n_test)]
    _pickle(
        base / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels,
            "data": test,
            "filenames": [f"t{j}.png" for j in range(n_test)],
        },
        bytes_keys,
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(
        base / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}, bytes_keys
    )
    truth["train_data"] = np.concatenate(truth["train_data"])
    truth.update(test_data=test, test_labels=test_labels, names=names, base=base)
    return truth


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 2) -> dict:
    rng = np.random.default_rng(1)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    truth = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        _pickle(
            base / split,
            {
                "filenames": [f"{split}{j}.png" for j in range(n)],
                "batch_label": split,
                "fine_labels": fine,
                "coarse_labels": coarse,
                "data": data,
            },
            False,
        )
        truth[split] = (data, fine, coarse)
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    _pickle(base / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names}, False)
    truth.update(fine_names=fine_names, coarse_names=coarse_names, base=base)
    return truth


def write_nyu(path: Path, n: int = 4, height: int = 480, width: int = 640) -> dict:
    """A MATLAB v7.3-style file: HDF5 with a 512-byte user block holding MATLAB's text header, and the
    labelled set's datasets with MATLAB's axes as h5py shows them (frame, channel, x, y)."""
    import h5py

    y = np.arange(height)[None, :]  # rows
    x = np.arange(width)[:, None]  # columns
    images = np.empty((n, 3, width, height), np.uint8)
    depths = np.empty((n, width, height), np.float32)
    for i in range(n):
        images[i, 0] = x % 256  # red = column index
        images[i, 1] = y % 256  # green = row index
        images[i, 2] = (10 * i) % 256  # blue = frame index
        depths[i] = 1.0 + 0.001 * x + 0.01 * y + i
    depths[0, min(100, width - 1), min(50, height - 1)] = 0.0  # a hole (row 50, column 100)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=images)
        f.create_dataset("depths", data=depths)
        f.create_dataset("labels", data=np.zeros((n, width, height), np.uint16))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")
    return {"images": images, "depths": depths}


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 entries, bit-interleaved), as in the devkit's labelcolormap."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc(root: Path, ids: dict[str, list[str]] | None = None, size: tuple[int, int] = (20, 24)) -> dict:
    ids = ids or {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    rng = np.random.default_rng(2)
    masks = {}
    h, w = size
    for k, image_id in enumerate(sorted({i for v in ids.values() for i in v})):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[4:12, 5:15] = 1 + k * 7 % 20  # an object
        mask[3, 4:16] = 255  # its void boundary
        mask[h - 5 :, : w // 2] = 15  # a person
        png = Image.fromarray(mask, mode="P")
        png.putpalette(voc_palette())
        png.save(base / "SegmentationClass" / f"{image_id}.png")
        masks[image_id] = mask
    for split, names in ids.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (base / "ImageSets" / "Segmentation" / "trainval.txt").write_text(
        "\n".join(ids.get("train", []) + ids.get("val", [])) + "\n"
    )
    return {"base": base, "masks": masks, "ids": ids}


#: the tiny Cityscapes tree of :func:`write_cityscapes`: split → city → frame stems
CITYSCAPES_TREE = {
    "train": {"aachen": ["aachen_000000_000019", "aachen_000001_000019"], "bochum": ["bochum_000000_000313"]},
    "val": {"frankfurt": ["frankfurt_000000_000294", "frankfurt_000000_000576"]},
}


def write_cityscapes(root: Path, size: tuple[int, int] = (8, 16)) -> dict:
    """``root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (random RGB) and
    ``root/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (8-bit grey label ids; the k-th frame
    holds ids (k + 0..h·w-1) mod 34, so every frame has all 34 ids); returns the arrays by stem."""
    rng = np.random.default_rng(4)
    h, w = size
    images, labels, k = {}, {}, 0
    for split, cities in CITYSCAPES_TREE.items():
        for city, stems in cities.items():
            (root / "leftImg8bit" / split / city).mkdir(parents=True)
            (root / "gtFine" / split / city).mkdir(parents=True)
            for stem in stems:
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                ids = ((np.arange(h * w) + k) % 34).astype(np.uint8).reshape(h, w)
                Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                Image.fromarray(ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
                images[stem], labels[stem], k = image, ids, k + 1
    return {"images": images, "labels": labels, "tree": CITYSCAPES_TREE}


def write_class_folders(root: Path, layout: dict[str, dict[str, int]], size: tuple[int, int] = (30, 40)) -> None:
    """``root/<split>/<class>/img<k>.JPEG``: ``layout[split][class]`` images of random colours."""
    rng = np.random.default_rng(3)
    h, w = size
    for split, classes in layout.items():
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k in range(count):
                colour = rng.integers(0, 256, 3, dtype=np.uint8)
                Image.fromarray(np.broadcast_to(colour, (h, w, 3)).copy()).save(folder / f"img{k}.JPEG", quality=95)


@pytest.fixture
def fakes():
    """The writers, as a namespace."""

    class Writers:
        cifar10 = staticmethod(write_cifar10)
        cifar100 = staticmethod(write_cifar100)
        nyu = staticmethod(write_nyu)
        voc = staticmethod(write_voc)
        cityscapes = staticmethod(write_cityscapes)
        class_folders = staticmethod(write_class_folders)
        palette = staticmethod(voc_palette)

    return Writers
