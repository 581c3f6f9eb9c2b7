"""The data set registry: names, tasks, roots, options, and errors that list the choices."""

from __future__ import annotations

import pytest
import torch

from adaptconv.data import DATASETS, TASKS, DatasetError, DatasetSpec, get_dataset, list_datasets

NAMES = {
    "digits",
    "middlebury",
    "photos",
    "synthetic",
    "cifar10",
    "cifar100",
    "imagefolder",
    "nyu_depth_v2",
    "voc2012",
    "cityscapes",
    "image_folder_denoise",
    "synthetic_video",
    "frames",
}
BUILTIN = {"digits", "middlebury", "photos", "synthetic", "synthetic_video"}


def test_registry_entries():
    assert set(DATASETS) == NAMES
    for name, spec in DATASETS.items():
        assert isinstance(spec, DatasetSpec) and spec.name == name
        assert spec.tasks and set(spec.tasks) <= {*TASKS, "video"}
        assert spec.builtin == (name in BUILTIN)
        assert spec.description and "\n" not in spec.description and callable(spec.build)
        if not spec.builtin:
            assert "<root>" in spec.description  # says where the files must be
    assert set(DATASETS["synthetic"].tasks) == set(TASKS)
    assert list_datasets("segmentation") == ["synthetic", "voc2012", "cityscapes"]
    assert list_datasets("video") == ["synthetic_video", "frames"]
    assert set(list_datasets("upsampling")) == {"middlebury", "synthetic", "nyu_depth_v2"}
    assert set(list_datasets()) == NAMES


@pytest.mark.parametrize(
    "name,task,split,opts,keys",
    [
        ("digits", "classification", "test", {}, {"image", "label"}),
        ("middlebury", "upsampling", "train", {"patch": 32, "crops": 2}, {"rgb", "depth", "valid"}),
        ("photos", "denoising", "test", {"crop": 32}, {"clean"}),
        ("synthetic", "segmentation", "train", {"n": 4}, {"image", "mask"}),
        ("synthetic", "upsampling", "test", {"n": 4, "size": 16}, {"rgb", "depth", "valid"}),
    ],
)
def test_get_builtin_dataset(name, task, split, opts, keys):
    ds = get_dataset(name, task, split, **opts)
    assert ds.name == name and ds.split == split and set(ds[0]) == keys
    assert all(isinstance(v, torch.Tensor) for v in ds[0].values())
    assert ds.describe().startswith(name)


def test_get_real_dataset_from_root(tmp_path, fakes):
    fakes.cifar10(tmp_path)
    ds = get_dataset("cifar10", "classification", "test", root=tmp_path)
    assert len(ds) == 3 and ds.num_classes == 10
    fakes.voc(tmp_path)
    assert len(get_dataset("voc2012", "segmentation", "test", root=str(tmp_path))) == 1


def test_builtin_datasets_do_not_use_a_data_root(tmp_path):
    """A data root is machine-wide (given to every trial): built-in sets build without touching it."""
    ds = get_dataset("digits", "classification", "test", root=tmp_path / "not-there")
    assert len(ds) == 450
    assert len(get_dataset("synthetic", "denoising", "test", root=tmp_path, n=2)) == 2


def test_synthetic_default_sizes_and_split_streams():
    spec = DATASETS["synthetic"]
    assert len(spec.build("test", task="denoising", precompute=False)) == 1000
    assert len(spec.build("train", task="denoising", precompute=False)) == 5000
    with pytest.raises(DatasetError, match="serves several tasks"):
        spec.build("train", n=2)


def test_errors_list_the_choices(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'cifar1O' \(did you mean 'cifar10'.*datasets: \["):
        get_dataset("cifar1O", "classification", "train")
    with pytest.raises(DatasetError, match=r"unknown task 'segmentaton' \(did you mean 'segmentation'\?\)"):
        get_dataset("voc2012", "segmentaton", "train")
    with pytest.raises(DatasetError, match=r"does not serve task 'upsampling'.*datasets for upsampling: \["):
        get_dataset("voc2012", "upsampling", "train")
    with pytest.raises(DatasetError, match=r"has no split 'val'; choose one of \['train', 'test'\]"):
        get_dataset("digits", "classification", "val")
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['sed'\]; options: \['seed'"):
        get_dataset("digits", "classification", "train", sed=1)
    with pytest.raises(DatasetError, match="needs root.*nyu_depth_v2_labeled.mat"):
        get_dataset("nyu_depth_v2", "upsampling", "train")
    with pytest.raises(DatasetError, match=str(tmp_path / "missing")):
        get_dataset("image_folder_denoise", "denoising", "test", root=tmp_path / "missing")


def test_every_task_s_datasets_are_registered():
    """What a task offers (``Task.datasets``, what its config is checked against) is a registered data
    set serving a sample format (opbench has no data: its ``random`` is the layer's random input)."""
    from adaptconv.plugins import BUILTIN_TASKS
    from adaptconv.tasks import get_task

    for name in set(BUILTIN_TASKS) - {"opbench"}:
        offered = get_task(name).datasets
        assert offered and set(offered) <= set(DATASETS), (name, sorted(set(offered) - set(DATASETS)))
    assert get_task("opbench").datasets == ("random",)
    assert get_task("spatial_video").datasets == tuple(list_datasets("video"))
    assert (
        "cityscapes" in get_task("segmentation").datasets and "cityscapes" in get_task("spatial_segmentation").datasets
    )
