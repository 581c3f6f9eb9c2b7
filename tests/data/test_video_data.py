"""The video data: the registry's synthetic_video and frames, one decode per frame file, and the errors."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import adaptconv.data.video as video_module
from adaptconv.data import DATASETS, DatasetError, get_dataset
from adaptconv.data.video import FrameFolder, SyntheticVideo, VideoDataset, VideoFrames
from adaptconv.schema import ConfigError
from adaptconv.trial.config import parse_trial_config


def _write_video(root: Path, frames: int = 4, labelled: bool = True, size: tuple[int, int] = (8, 12)) -> dict:
    """``root/frames/000.png..`` (random RGB) and, if ``labelled``, ``root/masks/000.png..`` (ids 0..3)."""
    rng = np.random.default_rng(5)
    (root / "frames").mkdir(parents=True)
    if labelled:
        (root / "masks").mkdir()
    images, masks = [], []
    for t in range(frames):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "frames" / f"{t:03d}.png")
        images.append(image)
        if labelled:
            mask = rng.integers(0, 4, size, dtype=np.uint8)
            mask[0, 0] = 255  # an ignored pixel
            Image.fromarray(mask).save(root / "masks" / f"{t:03d}.png")
            masks.append(mask)
    return {"images": images, "masks": masks}


@pytest.fixture
def opens(monkeypatch):
    """Counts ``PIL.Image.open`` calls per file name (headers read and files decoded alike) and the
    decodes (``_open_image``, which loads the pixels) per file name, in adaptconv.data.video."""
    counts = {"open": collections.Counter(), "decode": collections.Counter()}
    pil_open, decode = Image.open, video_module._open_image

    def counting_open(fp, *args, **kwargs):
        counts["open"][f"{Path(fp).parent.name}/{Path(fp).name}"] += 1
        return pil_open(fp, *args, **kwargs)

    def counting_decode(path, owner):
        counts["decode"][f"{path.parent.name}/{path.name}"] += 1
        return decode(path, owner)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(video_module, "_open_image", counting_decode)
    return counts


def test_the_registry_serves_synthetic_video_and_frames(tmp_path):
    synthetic, frames = DATASETS["synthetic_video"], DATASETS["frames"]
    assert synthetic.tasks == frames.tasks == ("video",)
    assert synthetic.builtin and not frames.builtin and "<root>/frames" in frames.description
    ds = get_dataset("synthetic_video", "video", "test", n=2, size=16, frames=3, seed=7)
    ref = SyntheticVideo(2, 16, 3, seed=7, split="test")
    assert (
        len(ds) == 2 and torch.equal(ds[1]["frames"], ref[1]["frames"]) and torch.equal(ds[1]["masks"], ref[1]["masks"])
    )
    assert len(get_dataset("synthetic_video", "video", "train", size=8, frames=1)) == 48  # the task's n_train
    with pytest.raises(DatasetError, match=r"dataset 'frames' reads files from disk and needs root: .*<root>/frames"):
        get_dataset("frames", "video", "test")
    with pytest.raises(DatasetError, match=r"dataset 'frames' has no split 'train'"):
        get_dataset("frames", "video", "train", root=tmp_path)
    with pytest.raises(DatasetError, match=r"does not serve task 'segmentation'.*datasets for segmentation"):
        get_dataset("synthetic_video", "segmentation", "train")
    truth = _write_video(tmp_path)
    ds = get_dataset("frames", "video", "test", root=tmp_path, max_frames=3)
    assert isinstance(ds, FrameFolder) and ds.labelled and ds[0]["frames"].shape == (3, 3, 8, 12)
    assert torch.equal(ds[0]["masks"][2], torch.from_numpy(truth["masks"][2].astype(np.int64)))


def test_adaptconv_tasks_lists_the_video_data_sets(capsys):
    from adaptconv.cli import main
    from adaptconv.installed import describe_installation

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "synthetic_video, frames" in rows["spatial_video"]
    assert "| video " in rows["synthetic_video"] and "| built in " in rows["synthetic_video"]
    assert "| video " in rows["frames"] and "from disk (data_root)" in rows["frames"]
    assert "from disk (data_root)" in rows["cityscapes"] and "synthetic, voc2012, cityscapes" in rows["segmentation"]
    assert describe_installation()["tasks"]["spatial_video"]["datasets"] == ["synthetic_video", "frames"]


def test_the_video_task_checks_its_dataset_like_the_other_tasks():
    with pytest.raises(
        ConfigError, match=r"dataset: 'frame' does not serve task 'spatial_video' \(did you mean 'frames'"
    ):
        parse_trial_config({"task": "spatial_video", "dataset": "frame"})
    with pytest.raises(ConfigError, match=r"dataset: 'synthetic' does not serve task 'spatial_video'.*synthetic_video"):
        parse_trial_config({"task": "spatial_video", "dataset": "synthetic"})
    with pytest.raises(ConfigError, match=r"dataset: 'frames' does not serve task 'segmentation'"):
        parse_trial_config({"task": "segmentation", "dataset": "frames"})


def test_video_frames_decode_each_frame_file_once(tmp_path, opens):
    truth = _write_video(tmp_path, frames=4)
    folder = FrameFolder(tmp_path)
    assert not opens["decode"]  # construction reads the headers only
    assert all(opens["open"][f"frames/{t:03d}.png"] == 1 for t in range(4)) and not any(
        k.startswith("masks/") for k in opens["open"]
    )
    frames = VideoFrames(folder)
    assert len(frames) == 4 and not opens["decode"]  # counting the frames decodes nothing
    for t in range(4):
        s = frames[t]
        assert torch.equal(s["image"], torch.from_numpy(truth["images"][t]).permute(2, 0, 1).float() / 255)
        assert torch.equal(s["mask"], torch.from_numpy(truth["masks"][t].astype(np.int64)))
    expected = {f"{d}/{t:03d}.png": 1 for d in ("frames", "masks") for t in range(4)}
    assert opens["decode"] == expected
    assert all(opens["open"][f"frames/{t:03d}.png"] == 2 for t in range(4))  # header + one decode
    # shuffled, as training reads them: still one decode per frame and epoch
    opens["decode"].clear()
    torch.manual_seed(0)
    batches = list(DataLoader(frames, batch_size=3, shuffle=True))
    assert sum(b["image"].shape[0] for b in batches) == 4
    assert opens["decode"] == expected
    # the whole video: each file once
    opens["decode"].clear()
    video = folder[0]
    assert video["frames"].shape == (4, 3, 8, 12) and opens["decode"] == expected


def test_unlabelled_frames_get_the_ignore_mask(tmp_path, opens):
    _write_video(tmp_path, frames=2, labelled=False)
    frames = VideoFrames(FrameFolder(tmp_path))
    s = frames[1]
    assert s["mask"].shape == (8, 12) and (s["mask"] == 255).all()
    assert opens["decode"] == {"frames/001.png": 1}


def test_synthetic_video_frames_are_the_videos_frames():
    videos = SyntheticVideo(2, 16, 3, seed=1, split="train")
    frames = VideoFrames(videos)
    assert len(frames) == 6 and frames.num_classes == 4 and frames.name == "synthetic_video-frames"
    for i, (v, t) in enumerate([(v, t) for v in range(2) for t in range(3)]):
        assert torch.equal(frames[i]["image"], videos[v]["frames"][t])
        assert torch.equal(frames[i]["mask"], videos[v]["masks"][t])


class _CountingVideos(VideoDataset):
    """A video data set with whole videos only (the generic ``frame``/``num_frames`` of VideoDataset)."""

    name = "counting"
    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.decoded = collections.Counter()

    def __len__(self) -> int:
        return 3

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        self.decoded[index] += 1
        frames = torch.full((index + 2, 3, 4, 4), index / 4)
        return {"frames": frames, "masks": torch.full((index + 2, 4, 4), index % 2, dtype=torch.int64)}


def test_video_frames_of_a_whole_video_data_set_decode_each_video_once_in_order():
    videos = _CountingVideos()
    frames = VideoFrames(videos)
    assert len(frames) == 2 + 3 + 4 and dict(videos.decoded) == {0: 1, 1: 1, 2: 1}  # counted once each
    videos.decoded.clear()
    samples = [frames[i] for i in range(len(frames))]
    assert dict(videos.decoded) == {0: 1, 1: 1, 2: 1}  # in order: one decode per video, not per frame
    assert [float(s["image"][0, 0, 0]) for s in samples] == [0.0] * 2 + [0.25] * 3 + [0.5] * 4
    with pytest.raises(DatasetError, match="VideoFrames takes a video data set.*got SyntheticScenes"):
        VideoFrames(get_dataset("synthetic", "segmentation", "test", n=2))


def test_frame_folder_errors_name_the_file(tmp_path):
    _write_video(tmp_path, frames=3)
    (tmp_path / "masks" / "001.png").unlink()
    with pytest.raises(DatasetError, match=rf"1 frame\(s\) have no mask, e.g. {tmp_path / 'masks' / '001.png'}"):
        FrameFolder(tmp_path)
    Image.fromarray(np.full((8, 12), 7, np.uint8)).save(tmp_path / "masks" / "001.png")
    folder = FrameFolder(tmp_path)
    with pytest.raises(
        DatasetError, match=rf"{tmp_path / 'masks' / '001.png'} holds labels \[7\] outside 0..3 and 255"
    ):
        folder.frame(0, 1)
    with pytest.raises(DatasetError, match="001.png holds labels"):
        folder[0]
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "masks" / "001.png")
    with pytest.raises(DatasetError, match=r"001.png is 8×10 but its frame 001.png is 8×12"):
        folder.frame(0, 1)
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / "masks" / "001.png")
    with pytest.raises(DatasetError, match=r"001.png is 8×12×3 but its frame 001.png is 8×12; a mask is one channel"):
        folder.frame(0, 1)
    assert folder.frame(0, 2)["mask"].shape == (8, 12)  # the other frames still read
    (tmp_path / "frames" / "002.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=rf"cannot read image {tmp_path / 'frames' / '002.png'}"):
        FrameFolder(tmp_path)
    empty = tmp_path / "empty"
    (empty / "frames").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no image"):
        FrameFolder(empty)
