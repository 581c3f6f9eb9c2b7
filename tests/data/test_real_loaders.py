"""Loaders of real data sets on disk, against small files written in the real formats (see conftest)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from adaptconv.data import (
    CIFAR10,
    CIFAR100,
    IGNORE_INDEX,
    NYU_EIGEN_CROP,
    VOC_CLASSES,
    CityscapesSegmentation,
    DatasetError,
    ImageFolderClassification,
    ImageFolderDenoise,
    NYUDepthV2,
    VOCSegmentation,
    get_dataset,
)


def _check_common(ds) -> None:
    assert isinstance(ds.name, str) and ds.name
    text = ds.describe()
    assert isinstance(text, str) and ds.name in text and str(len(ds)) in text


# ------------------------------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_reads_the_python_batches(tmp_path, fakes, bytes_keys):
    truth = fakes.cifar10(tmp_path, per_batch=4, n_test=3, bytes_keys=bytes_keys)
    train, test = CIFAR10(tmp_path, "train"), CIFAR10(tmp_path, "test")
    assert (len(train), len(test)) == (20, 3)
    assert train.num_classes == 10 and train.in_channels == 3 and train.class_names == tuple(truth["names"])
    for i in (0, 7, 19):
        s = train[i]
        assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
        expected = torch.from_numpy(truth["train_data"][i].reshape(3, 32, 32)).float() / 255
        torch.testing.assert_close(s["image"], expected, rtol=0, atol=0)
        assert s["label"].dtype == torch.int64 and s["label"].ndim == 0
        assert int(s["label"]) == truth["train_labels"][i]
    assert [int(test[i]["label"]) for i in range(3)] == truth["test_labels"]
    assert 0.0 <= float(train[3]["image"].min()) and float(train[3]["image"].max()) <= 1.0
    _check_common(train)


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path, fakes):
    fakes.cifar10(tmp_path)
    assert len(CIFAR10(tmp_path / "cifar-10-batches-py", "test")) == 3


def test_cifar100_fine_and_coarse_labels(tmp_path, fakes):
    truth = fakes.cifar100(tmp_path, n_train=6, n_test=2)
    fine, coarse = CIFAR100(tmp_path, "train"), CIFAR100(tmp_path, "train", labels="coarse")
    assert (fine.num_classes, coarse.num_classes) == (100, 20)
    assert fine.class_names[7] == "fine07" and coarse.class_names[3] == "coarse03"
    data, fine_labels, coarse_labels = truth["train"]
    assert [int(fine[i]["label"]) for i in range(6)] == fine_labels
    assert [int(coarse[i]["label"]) for i in range(6)] == coarse_labels
    torch.testing.assert_close(fine[5]["image"], torch.from_numpy(data[5].reshape(3, 32, 32)).float() / 255)
    assert len(CIFAR100(tmp_path, "test")) == 2


def test_cifar_missing_root_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"{missing}.*cifar-10-batches-py/.*data_batch_1"):
        CIFAR10(missing)
    with pytest.raises(DatasetError, match="cifar-100-python/"):
        CIFAR100(tmp_path / "empty_but_missing")


def test_cifar_missing_folder_or_file_is_named(tmp_path, fakes):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'cifar-10-batches-py'} does not exist"):
        CIFAR10(tmp_path)
    truth = fakes.cifar10(tmp_path)
    (truth["base"] / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=f"{truth['base'] / 'data_batch_3'} is missing"):
        CIFAR10(tmp_path, "train")
    assert len(CIFAR10(tmp_path, "test")) == 3  # the test split does not need the train batches


def test_cifar_malformed_pickles_are_named(tmp_path, fakes):
    truth = fakes.cifar10(tmp_path)
    batch = truth["base"] / "data_batch_2"
    batch.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=f"cannot read {batch}"):
        CIFAR10(tmp_path)
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, f)
    with pytest.raises(DatasetError, match=f"{batch}: 'data' is uint8 \\(4, 100\\)"):
        CIFAR10(tmp_path)
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "fine_labels": [0] * 4}, f)
    with pytest.raises(DatasetError, match=f"{batch} has no 'labels'"):
        CIFAR10(tmp_path)


def test_cifar_verify_checks_md5(tmp_path, fakes):
    fakes.cifar10(tmp_path)
    with pytest.raises(DatasetError, match="data_batch_1 fails its md5 check"):
        CIFAR10(tmp_path, verify=True)


# ------------------------------------------------------------------------------------ ImageFolder


def test_imagefolder_classes_splits_and_sizes(tmp_path, fakes):
    fakes.class_folders(tmp_path, {"train": {"cat": 3, "dog": 2, "eel": 1}, "val": {"dog": 2, "eel": 1}})
    train = ImageFolderClassification(tmp_path, "train", size=16)
    assert len(train) == 6 and train.class_names == ("cat", "dog", "eel") and train.num_classes == 3
    assert [int(train[i]["label"]) for i in range(6)] == [0, 0, 0, 1, 1, 2]
    s = train[0]
    assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
    assert 0.0 <= float(s["image"].min()) <= float(s["image"].max()) <= 1.0
    # val lacks "cat", yet uses train's class indices; "test" falls back to val/
    for split in ("val", "test"):
        val = ImageFolderClassification(tmp_path, split, size=16)
        assert [int(val[i]["label"]) for i in range(len(val))] == [1, 1, 2]
        assert val.class_names == train.class_names
    _check_common(train)


def test_imagefolder_reads_the_pixels(tmp_path, fakes):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((20, 20), 200, np.uint8)).save(folder / "gray.png")  # gray → RGB
    s = ImageFolderClassification(tmp_path, "train", size=8, resize=8)[0]
    assert s["image"].shape == (3, 8, 8)
    torch.testing.assert_close(s["image"], torch.full((3, 8, 8), 200 / 255))


def test_imagefolder_errors_name_paths(tmp_path, fakes):
    with pytest.raises(DatasetError, match=f"root {tmp_path / 'x'} does not exist.*<root>/<split>/<class>"):
        ImageFolderClassification(tmp_path / "x")
    fakes.class_folders(tmp_path, {"train": {"a": 1}})
    with pytest.raises(DatasetError, match=f"{tmp_path / 'val'} does not exist.*\\['train'\\]"):
        ImageFolderClassification(tmp_path, "val")
    (tmp_path / "val" / "zzz").mkdir(parents=True)
    with pytest.raises(DatasetError, match="class folders \\['zzz'\\]"):
        ImageFolderClassification(tmp_path, "val")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images under"):
        ImageFolderClassification(tmp_path / "empty", "train")


# ------------------------------------------------------------------------------------ NYU Depth v2


def test_nyu_reads_the_transposed_matlab_axes(tmp_path, fakes):
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    truth = fakes.nyu(path, n=4)
    train = NYUDepthV2(tmp_path, "train", crop=False, train_count=3)
    test = NYUDepthV2(path, "test", crop=False, train_count=3)
    assert (len(train), len(test)) == (3, 1)
    s = train[0]
    assert s["rgb"].shape == (3, 480, 640) and s["depth"].shape == (1, 480, 640) and s["valid"].shape == (1, 480, 640)
    assert s["rgb"].dtype == torch.float32 and s["depth"].dtype == torch.float32 and s["valid"].dtype == torch.bool
    rows, cols = torch.arange(480)[:, None], torch.arange(640)[None, :]
    torch.testing.assert_close(s["rgb"][0], ((cols % 256).float() / 255).expand(480, 640))  # red = column
    torch.testing.assert_close(s["rgb"][1], ((rows % 256).float() / 255).expand(480, 640))  # green = row
    expected = torch.from_numpy(truth["depths"][0].T.copy())
    assert not bool(s["valid"][0, 50, 100]) and float(s["depth"][0, 50, 100]) == 0.0
    assert int(s["valid"].sum()) == 480 * 640 - 1
    torch.testing.assert_close(s["depth"][0][s["valid"][0]], expected[s["valid"][0]])
    assert float(test[0]["rgb"][2, 0, 0]) == pytest.approx(30 / 255)  # the last frame (index 3)
    assert float(test[0]["depth"][0, 0, 0]) == pytest.approx(4.0)
    assert train.depth_unit == "m"
    _check_common(train)
    train.close()


def test_nyu_crop_box(tmp_path, fakes):
    fakes.nyu(tmp_path / "nyu_depth_v2_labeled.mat", n=3)
    top, bottom, left, right = NYU_EIGEN_CROP
    s = NYUDepthV2(tmp_path, "train", train_count=2)[1]  # crop=True by default
    assert s["rgb"].shape == (3, bottom - top, right - left) == (3, 426, 560)
    assert round(float(s["rgb"][0, 0, 0]) * 255) == left and round(float(s["rgb"][1, 0, 0]) * 255) == top
    assert float(s["depth"][0, 0, 0]) == pytest.approx(1.0 + 0.001 * left + 0.01 * top + 1)
    own = NYUDepthV2(tmp_path, "test", crop=(10, 20, 30, 50), train_count=2)[0]
    assert own["rgb"].shape == (3, 10, 20) and round(float(own["rgb"][0, 0, 0]) * 255) == 30
    with pytest.raises(DatasetError, match="does not fit"):
        NYUDepthV2(tmp_path, "test", crop=(0, 500, 0, 10), train_count=2)


def test_nyu_default_split_is_first_1000_train(tmp_path, fakes):
    fakes.nyu(tmp_path / "nyu_depth_v2_labeled.mat", n=3, height=8, width=10)
    with pytest.raises(DatasetError, match="holds 3 frames; train_count=1000 leaves no test frames"):
        NYUDepthV2(tmp_path, "train", crop=False)


def test_nyu_survives_worker_processes(tmp_path, fakes):
    fakes.nyu(tmp_path / "nyu_depth_v2_labeled.mat", n=5, height=16, width=20)
    ds = NYUDepthV2(tmp_path, "train", crop=False, train_count=4)
    first = ds[0]["depth"]  # opens the file in this process
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert batches[0]["depth"].shape == (2, 1, 16, 20)
    torch.testing.assert_close(batches[0]["depth"][0], first)
    torch.testing.assert_close(batches[1]["rgb"][1], ds[3]["rgb"])


def test_nyu_errors_name_the_file(tmp_path, fakes):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nyu_depth_v2_labeled.mat'} is missing.*'images'"):
        NYUDepthV2(tmp_path)
    with pytest.raises(DatasetError, match=f"root {tmp_path / 'gone'} does not exist"):
        NYUDepthV2(tmp_path / "gone")
    bogus = tmp_path / "nyu_depth_v2_labeled.mat"
    bogus.write_text("MATLAB 5.0 MAT-file")  # an old-style .mat is not HDF5
    with pytest.raises(DatasetError, match=f"{bogus} is not an HDF5"):
        NYUDepthV2(tmp_path)
    import h5py

    with h5py.File(bogus, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 3, 10, 8), np.uint8))
    with pytest.raises(DatasetError, match=f"{bogus} has no dataset 'depths'"):
        NYUDepthV2(tmp_path, train_count=1)
    with h5py.File(bogus, "a") as f:
        f.create_dataset("depths", data=np.zeros((2, 8, 10), np.float32))  # not transposed like images
    with pytest.raises(DatasetError, match="do not match"):
        NYUDepthV2(tmp_path, train_count=1)


# --------------------------------------------------------------------------------------------- VOC


def test_voc_reads_palette_masks(tmp_path, fakes):
    truth = fakes.voc(tmp_path)
    train, val = VOCSegmentation(tmp_path, "train"), VOCSegmentation(tmp_path, "val")
    assert (len(train), len(val), len(VOCSegmentation(tmp_path, "trainval"))) == (2, 1, 3)
    assert len(VOCSegmentation(tmp_path, "test")) == 1  # test = val
    assert train.num_classes == 21 and train.class_names == VOC_CLASSES and train.ignore_index == IGNORE_INDEX == 255
    assert train.class_names[15] == "person"
    for ds in (train, val):
        for i, image_id in enumerate(ds.ids):
            s = ds[i]
            assert s["image"].shape == (3, 20, 24) and s["image"].dtype == torch.float32
            assert s["mask"].shape == (20, 24) and s["mask"].dtype == torch.int64
            assert torch.equal(s["mask"], torch.from_numpy(truth["masks"][image_id].astype(np.int64)))
    assert set(train[0]["mask"].unique().tolist()) == {0, 1, 15, 255}
    _check_common(train)


def test_voc_root_variants_and_resize(tmp_path, fakes):
    truth = fakes.voc(tmp_path)
    assert len(VOCSegmentation(tmp_path / "VOCdevkit", "train")) == 2
    assert len(VOCSegmentation(truth["base"], "train")) == 2
    s = VOCSegmentation(tmp_path, "train", size=10)[1]
    assert s["image"].shape == (3, 10, 10) and s["mask"].shape == (10, 10)
    assert set(s["mask"].unique().tolist()) <= {0, 8, 15, 255}  # nearest: no new labels


def test_voc_errors_name_paths(tmp_path, fakes):
    with pytest.raises(DatasetError, match=f"root {tmp_path / 'voc'} does not exist.*VOCdevkit/VOC2012"):
        VOCSegmentation(tmp_path / "voc")
    with pytest.raises(DatasetError, match="found no VOC2012 folder"):
        VOCSegmentation(tmp_path)
    truth = fakes.voc(tmp_path)
    missing = truth["base"] / "SegmentationClass" / "2007_000039.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=f"1 of the 2 files .* missing, e.g. {missing}"):
        VOCSegmentation(tmp_path, "train")
    rgb_mask = truth["base"] / "SegmentationClass" / "2007_000033.png"
    Image.open(rgb_mask).convert("RGB").save(rgb_mask)
    with pytest.raises(DatasetError, match=f"{rgb_mask} is a RGB image; expected a palette"):
        VOCSegmentation(tmp_path, "val")[0]
    (truth["base"] / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetError, match="Segmentation/val.txt is missing"):
        VOCSegmentation(tmp_path, "val")


# ------------------------------------------------------------------------------------- Cityscapes

#: cityscapesScripts' labels.py, written out independently of the loader's table: the label ids of
#: the 19 evaluated classes and their trainIds; every other id of 0..33 is ignored (255)
EVALUATED = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def _train_ids(label_ids: np.ndarray) -> torch.Tensor:
    out = np.full(label_ids.shape, 255, np.int64)
    for label_id, train_id in EVALUATED.items():
        out[label_ids == label_id] = train_id
    return torch.from_numpy(out)


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path, fakes):
    truth = fakes.cityscapes(tmp_path)
    train = CityscapesSegmentation(tmp_path, "train")
    assert len(train) == 3 and train.cities == ("aachen", "bochum")
    assert train.num_classes == 19 and train.ignore_index == IGNORE_INDEX == 255
    assert train.class_names[0] == "road" and train.class_names[11] == "person" and train.class_names[18] == "bicycle"
    stems = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]  # city, then name order
    for i, stem in enumerate(stems):
        s = train[i]
        assert s["image"].shape == (3, 8, 16) and s["image"].dtype == torch.float32
        assert torch.equal(s["image"], torch.from_numpy(truth["images"][stem]).permute(2, 0, 1).float() / 255)
        assert s["mask"].shape == (8, 16) and s["mask"].dtype == torch.int64
        assert torch.equal(s["mask"], _train_ids(truth["labels"][stem]))
    # every frame holds all 34 ids: each of the 19 trainIds and the ignore label appear
    assert set(train[0]["mask"].unique().tolist()) == set(range(19)) | {255}
    # ids 0..6 (unlabeled, ego vehicle, ..., ground), parking, rail track, guard rail, bridge, tunnel,
    # polegroup, caravan and trailer are all ignored
    ids, mask = truth["labels"][stems[0]], train[0]["mask"]
    for ignored in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30):
        assert (mask[torch.from_numpy(ids == ignored)] == 255).all()
    _check_common(train)


def test_cityscapes_splits_size_and_registry(tmp_path, fakes):
    truth = fakes.cityscapes(tmp_path)
    val, test = CityscapesSegmentation(tmp_path, "val"), CityscapesSegmentation(tmp_path, "test")
    assert len(val) == len(test) == 2 and test.cities == ("frankfurt",)  # test = val
    assert torch.equal(test[1]["mask"], _train_ids(truth["labels"]["frankfurt_000000_000576"]))
    s = CityscapesSegmentation(tmp_path, "val", size=4)[0]  # 8×16 → shorter side 4 (4×8) → centre 4×4
    assert s["image"].shape == (3, 4, 4) and s["mask"].shape == (4, 4)
    assert set(s["mask"].unique().tolist()) <= set(range(19)) | {255}  # nearest: no new labels
    ds = get_dataset("cityscapes", "segmentation", "val", root=tmp_path, size=4)
    assert len(ds) == 2 and ds[0]["mask"].shape == (4, 4)
    with pytest.raises(DatasetError, match="needs root.*leftImg8bit"):
        get_dataset("cityscapes", "segmentation", "train")
    with pytest.raises(DatasetError, match=r"unknown split 'trainval'"):
        CityscapesSegmentation(tmp_path, "trainval")


def test_cityscapes_errors_name_what_is_wrong(tmp_path, fakes):
    with pytest.raises(DatasetError, match=f"root {tmp_path / 'cs'} does not exist.*leftImg8bit"):
        CityscapesSegmentation(tmp_path / "cs")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'leftImg8bit' / 'train'} does not exist"):
        CityscapesSegmentation(tmp_path)
    fakes.cityscapes(tmp_path)
    (tmp_path / "leftImg8bit" / "val" / "extra").mkdir()  # an empty city folder is harmless
    assert len(CityscapesSegmentation(tmp_path, "val")) == 2
    gt = tmp_path / "gtFine" / "train"
    label = gt / "bochum" / "bochum_000000_000313_gtFine_labelIds.png"
    label.unlink()
    image = tmp_path / "leftImg8bit" / "train" / "bochum" / "bochum_000000_000313_leftImg8bit.png"
    with pytest.raises(DatasetError, match=f"1 of the 3 images have no label file, e.g. {image} has no {label}"):
        CityscapesSegmentation(tmp_path, "train")
    gt.rename(tmp_path / "gtFine" / "moved")
    with pytest.raises(DatasetError, match=f"{gt} does not exist; expected .*gtFine_labelIds.png"):
        CityscapesSegmentation(tmp_path, "train")
    # label ids outside the 34 of the table
    label = tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png"
    ids = np.array(Image.open(label))
    ids[0, :3] = (34, 200, 34)
    Image.fromarray(ids).save(label)
    val = CityscapesSegmentation(tmp_path, "val")
    with pytest.raises(
        DatasetError, match=rf"{label} has label ids \[34, 200\] outside the Cityscapes table \(0..33\)"
    ):
        val[0]
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(label)  # a colour image, not label ids
    with pytest.raises(DatasetError, match=f"{label} is a RGB image; expected an 8-bit PNG of label ids"):
        val[0]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(label)
    with pytest.raises(DatasetError, match=f"{label} is 8×8 but .*frankfurt_000000_000294_leftImg8bit.png is 8×16"):
        val[0]
    assert val[1]["mask"].shape == (8, 16)  # the other frame still reads
    empty = tmp_path / "empty"
    (empty / "leftImg8bit" / "train").mkdir(parents=True)
    (empty / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no city folders in"):
        CityscapesSegmentation(empty)
    (empty / "leftImg8bit" / "train" / "ulm").mkdir()
    with pytest.raises(DatasetError, match=r"no \*_leftImg8bit.png in"):
        CityscapesSegmentation(empty)


# ----------------------------------------------------------------------------- denoising folders


def test_denoise_flat_folder_gray_rgb_and_16_bit(tmp_path):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "a.png")
    Image.fromarray(gray).save(tmp_path / "b.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDenoise(tmp_path)
    assert len(ds) == 2 and ds.in_channels == 1 and ds.split == "test"
    torch.testing.assert_close(ds[0]["clean"], torch.from_numpy(gray).float()[None] / 255)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "c.tif")
    mixed = ImageFolderDenoise(tmp_path)
    assert mixed.in_channels == 3 and mixed[0]["clean"].shape == (3, 12, 10)  # gray repeated
    assert ImageFolderDenoise(tmp_path, gray=True)[2]["clean"].shape == (1, 12, 10)
    assert ImageFolderDenoise(tmp_path, crop=(4, 6))[1]["clean"].shape == (3, 4, 6)
    sixteen = tmp_path / "deep"
    sixteen.mkdir()
    Image.fromarray(np.full((5, 7), 65535 // 5, np.uint16)).save(sixteen / "x.png")
    s = ImageFolderDenoise(sixteen)[0]["clean"]
    assert s.shape == (1, 5, 7) and float(s.max()) == pytest.approx(0.2, abs=1e-4)
    _check_common(ds)


def test_denoise_split_folders_and_errors(tmp_path):
    with pytest.raises(DatasetError, match=f"root {tmp_path / 'bsd68'} does not exist"):
        ImageFolderDenoise(tmp_path / "bsd68")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty' / 'test'} does not exist"):
        ImageFolderDenoise(tmp_path / "empty")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(DatasetError, match="served only as split 'test'"):
        ImageFolderDenoise(tmp_path, "train")
    tree = tmp_path / "tree"
    for split, n in (("train", 3), ("test", 1)):
        (tree / split).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(np.full((6, 6, 3), 40 * k, np.uint8)).save(tree / split / f"{k}.jpg")
    assert (len(ImageFolderDenoise(tree, "train")), len(ImageFolderDenoise(tree, "test"))) == (3, 1)
    (tree / "val").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        ImageFolderDenoise(tree, "val")
    with pytest.raises(DatasetError, match="cannot crop"):
        ImageFolderDenoise(tree, "train", crop=8)[0]
