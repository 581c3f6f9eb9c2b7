"""Built-in real data: scikit-learn's digits, scikit-image's Middlebury Motorcycle and photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptconv.data import (
    DEFAULT_PHOTOS,
    MIDDLEBURY_TEST_COLS,
    MIDDLEBURY_TRAIN_COLS,
    PHOTO_NAMES,
    DatasetError,
    digits,
    middlebury_motorcycle,
    sample_photos,
)

# ------------------------------------------------------------------------------------------ digits


def _digit_ids(ds) -> set[int]:
    return set(ds.indices.tolist())


def test_digits_split_sizes_disjoint_and_complete():
    train, test = digits("train"), digits("test")
    assert (len(train), len(test)) == (1347, 450)
    assert not _digit_ids(train) & _digit_ids(test)
    assert _digit_ids(train) | _digit_ids(test) == set(range(1797))
    assert train.num_classes == 10 and train.in_channels == 1 and train.class_names[3] == "3"


def test_digits_split_is_stratified():
    from sklearn.datasets import load_digits

    target = load_digits().target
    test = digits("test", seed=3)
    counts = np.bincount(test.labels.numpy(), minlength=10)
    expected = np.bincount(target, minlength=10) * 0.25
    assert np.all(np.abs(counts - expected) <= 1.0)


def test_digits_same_seed_same_split_other_seed_other_split():
    a, b, c = digits("train", seed=1), digits("train", seed=1), digits("train", seed=2)
    assert np.array_equal(a.indices, b.indices)
    assert torch.equal(a[5]["image"], b[5]["image"])
    assert not np.array_equal(a.indices, c.indices)


def test_digits_samples_are_the_real_pixels_scaled():
    from sklearn.datasets import load_digits

    raw = load_digits().images
    ds = digits("test", seed=0)
    for i in (0, 17, 449):
        s = ds[i]
        assert s["image"].shape == (1, 8, 8) and s["image"].dtype == torch.float32
        assert s["label"].dtype == torch.int64 and s["label"].ndim == 0
        torch.testing.assert_close(s["image"][0], torch.from_numpy(raw[ds.indices[i]] / 16.0).float())
    assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
    assert "digits" in ds.describe() and "450" in ds.describe()


def test_digits_bad_arguments():
    with pytest.raises(DatasetError, match="split"):
        digits("val")
    with pytest.raises(DatasetError, match="test_fraction"):
        digits("train", test_fraction=1.5)


# -------------------------------------------------------------------------------------- Middlebury


def _raw_motorcycle():
    from skimage.data import stereo_motorcycle

    return stereo_motorcycle()


def test_middlebury_regions_are_disjoint_with_a_gap():
    (a0, a1), (b0, b1) = MIDDLEBURY_TRAIN_COLS, MIDDLEBURY_TEST_COLS
    assert a1 + 32 <= b0 and a0 == 0 and b1 == 741
    train, test = middlebury_motorcycle("train"), middlebury_motorcycle("test")
    assert train[0]["rgb"].shape == (3, 500, a1 - a0) and test[0]["depth"].shape == (1, 500, b1 - b0)
    full = middlebury_motorcycle("full")[0]
    torch.testing.assert_close(full["rgb"][..., b0:b1], test[0]["rgb"])
    torch.testing.assert_close(full["depth"][..., a0:a1], train[0]["depth"])


def test_middlebury_invalid_disparity_is_the_files_inf():
    left, _, disp = _raw_motorcycle()
    s = middlebury_motorcycle("full")[0]
    assert s["rgb"].shape == (3, 500, 741) and s["valid"].dtype == torch.bool
    assert np.isinf(disp).sum() == 27226 and np.isnan(disp).sum() == 0  # what the file holds
    assert torch.equal(s["valid"][0], torch.from_numpy(np.isfinite(disp)))
    assert float(s["depth"][~s["valid"]].abs().max()) == 0.0
    valid_depth = s["depth"][s["valid"]]
    assert 7.0 < float(valid_depth.min()) and float(valid_depth.max()) < 60.0
    torch.testing.assert_close(s["rgb"][:, 10, 20], torch.from_numpy(left[10, 20]).float() / 255)
    assert middlebury_motorcycle("train").depth_unit == "disparity px"


def test_middlebury_train_crops_are_seeded_and_inside_the_train_region():
    a = middlebury_motorcycle("train", patch=64, crops=6, seed=0)
    b = middlebury_motorcycle("train", patch=64, crops=6, seed=0)
    c = middlebury_motorcycle("train", patch=64, crops=6, seed=1)
    assert len(a) == 6
    full = middlebury_motorcycle("full")[0]
    for i in range(6):
        sa = a[i]
        assert sa["rgb"].shape == (3, 64, 64) and sa["valid"].float().mean() >= 0.5
        torch.testing.assert_close(sa["depth"], b[i]["depth"])
        top, left, h, w = a.crop_box(i)
        assert left + w <= MIDDLEBURY_TRAIN_COLS[1]
        torch.testing.assert_close(sa["rgb"], full["rgb"][:, top : top + h, left : left + w])
    assert [a.crop_box(i) for i in range(6)] != [c.crop_box(i) for i in range(6)]
    before = [a.crop_box(i) for i in range(6)]
    a.set_epoch(1)
    assert [a.crop_box(i) for i in range(6)] != before
    a.set_epoch(0)
    assert [a.crop_box(i) for i in range(6)] == before


def test_middlebury_test_tiles_are_deterministic_and_disjoint():
    tiles = middlebury_motorcycle("test", patch=(100, 80))
    assert len(tiles) == (500 // 100) * (245 // 80)
    boxes = [tiles.crop_box(i) for i in range(len(tiles))]
    covered = np.zeros((500, 245), int)
    for top, left, h, w in boxes:
        covered[top : top + h, left : left + w] += 1
    assert covered.max() == 1 and covered.sum() == len(tiles) * 100 * 80
    whole = middlebury_motorcycle("test")[0]
    top, left, h, w = boxes[-1]
    torch.testing.assert_close(tiles[len(tiles) - 1]["rgb"], whole["rgb"][:, top : top + h, left : left + w])
    with pytest.raises(DatasetError, match="larger than"):
        middlebury_motorcycle("test", patch=300)


# -------------------------------------------------------------------------------------- photos


def test_default_photos_full_size_and_gray():
    ds = sample_photos()
    assert ds.names == DEFAULT_PHOTOS == ("camera", "astronaut", "coffee", "chelsea", "rocket")
    assert ds.in_channels == 3 and len(ds) == 5
    shapes = [tuple(ds[i]["clean"].shape) for i in range(5)]
    assert shapes == [(3, 512, 512), (3, 512, 512), (3, 400, 600), (3, 300, 451), (3, 427, 640)]
    camera = ds[0]["clean"]
    assert torch.equal(camera[0], camera[2])  # gray photo repeated to RGB
    gray = sample_photos(gray=True, crop=128)
    assert gray.in_channels == 1 and all(gray[i]["clean"].shape == (1, 128, 128) for i in range(5))
    for i in range(5):
        x = ds[i]["clean"]
        assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert "photos" in ds.describe()


def test_every_listed_photo_loads_offline():
    ds = sample_photos(PHOTO_NAMES, crop=64)
    batch = torch.stack([ds[i]["clean"] for i in range(len(ds))])
    assert batch.shape == (len(PHOTO_NAMES), 3, 64, 64)
    assert float(batch.std()) > 0.05


def test_photos_bad_names_and_crops():
    with pytest.raises(DatasetError, match="unknown photo 'lena'"):
        sample_photos(["lena"])
    with pytest.raises(DatasetError, match="chelsea.*cannot crop"):
        sample_photos(["chelsea"], crop=400)
