"""The spatial-execution tasks end to end at toy sizes, the synthetic video and the frames folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from adaptconv.data import CityscapesSegmentation, DatasetError
from adaptconv.data.video import FrameFolder, SyntheticVideo
from adaptconv.schema import ConfigError
from adaptconv.trial.config import parse_trial_config
from adaptconv.trial.runner import run_trial

MEASURE_OFF = {"latency": False, "memory": False, "flops": False}


def test_synthetic_video_is_seeded_labelled_and_moving():
    a, b = SyntheticVideo(2, 32, 4, seed=3, split="test"), SyntheticVideo(2, 32, 4, seed=3, split="test")
    assert torch.equal(a[1]["frames"], b[1]["frames"]) and torch.equal(a[1]["masks"], b[1]["masks"])
    v = a[0]
    assert v["frames"].shape == (4, 3, 32, 32) and v["masks"].shape == (4, 32, 32)
    assert int(v["masks"].max()) >= 1  # an object is labelled
    assert not torch.equal(v["masks"][0], v["masks"][-1])  # and it moves
    assert not torch.equal(SyntheticVideo(1, 32, 4, seed=4, split="test")[0]["frames"], v["frames"])


def _save(path, array):
    Image.fromarray(array).save(path)


def test_frame_folder_refuses_frames_of_different_sizes(tmp_path):
    (tmp_path / "frames").mkdir()
    _save(tmp_path / "frames" / "000.png", np.zeros((16, 16, 3), np.uint8))
    _save(tmp_path / "frames" / "001.png", np.zeros((16, 24, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"different sizes.*000\.png is 16×16 but 001\.png is 16×24"):
        FrameFolder(tmp_path)
    with pytest.raises(DatasetError, match="no folder"):
        FrameFolder(tmp_path / "nowhere")


def test_video_task_on_a_folder_of_frames_without_labels(tmp_path):
    (tmp_path / "frames").mkdir()
    video = SyntheticVideo(1, 32, 3, seed=0, split="test")[0]["frames"]
    for t in range(3):
        _save(tmp_path / "frames" / f"{t:03d}.png", (video[t].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    base = {
        "task": "spatial_video",
        "dataset": "frames",
        "data_root": str(tmp_path),
        "backbone": "simplecnn-s",
        "task_options": {"size": 32, "block_size": 8, "policy": "random", "target": 0.25},
        "measure": MEASURE_OFF,
        "threads": 1,
    }
    record = run_trial({**base, "steps": 2})
    assert record["status"] == "error" and "masks is missing" in record["error"]["message"]
    record = run_trial({**base, "steps": 0})
    assert record["status"] == "ok", record.get("error")
    m = record["metrics"]
    assert m["miou"] is None and record["baselines"] == {}  # no labels: no mIoU, no baseline to score
    assert m["block_fraction"] == pytest.approx((1 + 2 * 0.25) / 3)
    assert m["flops_ratio"] == pytest.approx(m["block_fraction"], rel=1e-6)


def test_video_task_all_blocks_is_the_dense_network():
    record = run_trial(
        {
            "task": "spatial_video",
            "backbone": "simplecnn-s",
            "steps": 3,
            "batch_size": 4,
            "task_options": {
                "size": 32,
                "frames": 3,
                "n_train": 2,
                "n_test": 2,
                "block_size": 8,
                "policy": "all",
                "class_weights": "sqrt_inverse",
                "texture_contrast": 0.25,
            },
            "measure": MEASURE_OFF,
            "threads": 1,
        }
    )
    assert record["status"] == "ok", record.get("error")
    m = record["metrics"]
    assert m["dense_agreement"] == 100.0 and m["miou"] == pytest.approx(m["dense_miou"])
    assert m["block_fraction"] == 1.0 and m["flops_ratio"] == 1.0
    # the trivial baselines, scored on the test videos' labels: predicting background everywhere gets
    # its IoU (the pixels that are background) over the classes present
    test = SyntheticVideo(2, 32, 3, seed=10_000, split="test", texture_contrast=0.25)
    masks = torch.stack([test[i]["masks"] for i in range(2)])
    present = int(sum(bool((masks == k).any()) for k in range(4)))
    background = float((masks == 0).float().mean())
    assert set(record["baselines"]) == {"majority", "chance"}
    assert record["baselines"]["majority"]["miou"] == pytest.approx(100 * background / present, rel=1e-6)


def test_dual_resolution_task_records_fraction_flops_and_policy_loss():
    record = run_trial(
        {
            "task": "spatial_segmentation",
            "backbone": "simplecnn-s",
            "steps": 4,
            "batch_size": 4,
            "task_options": {
                "size": 32,
                "n_train": 8,
                "n_test": 8,
                "block_size": 8,
                "target": 0.25,
                "policy": "heuristic",
            },
            "measure": {**MEASURE_OFF, "flops": True, "batch_sizes": [1]},
            "threads": 1,
        }
    )
    assert record["status"] == "ok", record.get("error")
    m = record["metrics"]
    assert m["high_fraction"] == 0.25 and record["active_fraction"]["eval"] == 0.25
    assert m["flops_ratio"] == pytest.approx(0.25 + 0.75 / 4, rel=0.05)
    learned = run_trial(
        {
            "task": "spatial_segmentation",
            "backbone": "simplecnn-s",
            "steps": 3,
            "batch_size": 4,
            "task_options": {"size": 32, "n_train": 8, "n_test": 8, "block_size": 8},
            "measure": MEASURE_OFF,
            "threads": 1,
        }
    )
    assert learned["status"] == "ok" and len(learned["curve"]["aux_loss"]) == 3  # the policy's loss is added


def _cityscapes_tree(root, rng) -> None:
    """A Cityscapes layout (leftImg8bit + gtFine labelIds) of 16×32 frames: 2 train cities, 1 val city."""
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("lindau",))):
        for city in cities:
            for folder in ("leftImg8bit", "gtFine"):
                (root / folder / split / city).mkdir(parents=True)
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                image = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
                ids = np.full((16, 32), 7, np.uint8)  # road (trainId 0)
                ids[4:12, 8:20] = 26  # a car (13)
                ids[:2] = 23  # sky (10)
                ids[-1] = 1  # ego vehicle: ignored
                _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
                _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)


@pytest.mark.parametrize("task", ["spatial_segmentation", "segmentation"])
def test_segmentation_tasks_run_on_a_cityscapes_layout(tmp_path, task):
    _cityscapes_tree(tmp_path, np.random.default_rng(0))
    options = {"size": 32, "block_size": 8, "policy": "heuristic", "target": 0.5} if task != "segmentation" else {}
    record = run_trial(
        {
            "task": task,
            "dataset": "cityscapes",
            "data_root": str(tmp_path),
            "backbone": "simplecnn-s",
            "steps": 2,
            "batch_size": 2,
            "task_options": {"size": 32, "decoder_width": 8, **options},
            "measure": MEASURE_OFF,
            "threads": 1,
        }
    )
    assert record["status"] == "ok", record.get("error")
    assert 0 <= record["metrics"]["miou"] <= 100
    # the majority baseline on the val city's trainIds: road everywhere, so its IoU is road's share of the
    # labelled pixels (ego vehicle ignored), averaged with car's and sky's 0
    val = CityscapesSegmentation(tmp_path, "val", size=32)
    masks = torch.stack([val[i]["mask"] for i in range(len(val))])
    assert set(masks.unique().tolist()) == {0, 10, 13, 255}
    road = float((masks == 0).sum() / (masks != 255).sum())
    assert record["baselines"]["majority"]["miou"] == pytest.approx(100 * road / 3, rel=1e-6)
    with pytest.raises(ConfigError, match=r"dataset: 'cityscape' does not serve task .*did you mean 'cityscapes'"):
        parse_trial_config({"task": task, "dataset": "cityscape"})


def test_bad_options_are_refused_before_running():
    with pytest.raises(ConfigError, match=r"block_size 96 px.*stride 32"):
        parse_trial_config(
            {"task": "spatial_segmentation", "backbone": "resnet18", "task_options": {"block_size": 96, "size": 192}}
        )
    with pytest.raises(ConfigError, match=r"target.*\(0, 1\]"):
        parse_trial_config({"task": "spatial_video", "task_options": {"target": 1.5}})
    with pytest.raises(ConfigError, match="takes op: conv"):
        parse_trial_config({"task": "spatial_video", "op": "pac"})
    with pytest.raises(ConfigError, match=r"texture_contrast: in \[0, 1\], got 2"):
        parse_trial_config({"task": "spatial_video", "task_options": {"texture_contrast": 2}})
    with pytest.raises(ConfigError, match="class_weights: one of none, sqrt_inverse"):
        parse_trial_config({"task": "spatial_video", "task_options": {"class_weights": "inverse"}})


def test_texture_contrast_flattens_the_background_and_keeps_the_scene():
    flat, full = (SyntheticVideo(1, 32, 2, seed=1, split="test", texture_contrast=c)[0] for c in (0.0, 1.0))
    assert torch.equal(flat["masks"], full["masks"])  # the same objects and motion
    background = flat["masks"][0] == 0
    assert flat["frames"][0][:, background].std(1).max() < 0.03  # sensor noise only
    assert full["frames"][0][:, background].std(1).max() > 0.05
