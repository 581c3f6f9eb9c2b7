"""Video for the block-reuse task: built-in synthetic video with labels, and a folder of frames on disk.

Sample format (``task = "video"``): ``{"frames": T×3×H×W float32 in [0, 1], "masks": T×H×W int64}``
(masks of 255 = unlabelled where a folder has none). Every video data set is a :class:`VideoDataset`:
besides whole videos it gives ``num_frames(i)`` and one frame at a time (``frame(i, t)``, the
segmentation format ``{"image", "mask"}``), which :class:`VideoFrames` uses to flatten videos into
single frames to train the image network — so a folder of frames is decoded one file per frame.

:class:`SyntheticVideo`: a static textured background (two octaves of seeded value noise plus
stripes, coloured) seen by a fixed camera with a little sensor noise per frame, and 1..``max_objects``
moving objects — disc, square, triangle (classes 1, 2, 3; 0 = background) — each with its own
colour and stripe texture, moving at constant velocity and bouncing off the borders. Video ``i`` is a
pure function of ``(seed, split, i)``: its generator is ``numpy.random.default_rng([seed, split, i])``.

:class:`FrameFolder`: ``<root>/frames/*.png|jpg…`` in name order is one video; optional
``<root>/masks/<same stem>.png`` (palette or grey, class indices, 255 = ignore) give labels. Frames of
different sizes are refused with an error naming two files that differ.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import IGNORE_INDEX, BenchDataset, DatasetError, check_choice, uint8_to_float
from .real import IMAGE_EXTENSIONS, _open_image

VIDEO_CLASSES = ("background", "disc", "square", "triangle")
SPLITS = {"train": 0, "test": 1, "val": 2}


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> torch.Tensor:
    grid = torch.from_numpy(rng.random((1, 1, cells + 1, cells + 1)).astype(np.float32))
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0, 0].clamp(0, 1)


def render_video(
    seed: int,
    split: str,
    index: int,
    size: int = 64,
    frames: int = 8,
    max_objects: int = 3,
    noise: float = 0.01,
    texture_contrast: float = 1.0,
) -> dict[str, torch.Tensor]:
    """One synthetic video: ``frames`` T×3×H×W float32, ``masks`` T×H×W int64. ``texture_contrast``
    scales the background texture around its mean colour (1: as drawn, 0: a flat colour); the random
    draws do not depend on it, so the same seed gives the same objects and motion at any contrast."""
    check_choice(split, tuple(SPLITS), "split", "synthetic_video")
    if not 0 <= texture_contrast <= 1:
        raise DatasetError(f"synthetic_video: texture_contrast must be in [0, 1], got {texture_contrast}")
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    s = size
    yy, xx = torch.meshgrid(
        torch.arange(s, dtype=torch.float32) + 0.5, torch.arange(s, dtype=torch.float32) + 0.5, indexing="ij"
    )
    # background: coloured value noise + stripes, static (a fixed camera)
    tex = 0.6 * _value_noise(rng, s, 4) + 0.4 * _value_noise(rng, s, 12)
    angle, freq = rng.uniform(0, math.pi), rng.uniform(0.1, 0.4)
    tex = 0.7 * tex + 0.3 * (0.5 + 0.5 * torch.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle))))
    c0, c1 = torch.from_numpy(rng.random(3).astype(np.float32)), torch.from_numpy(rng.random(3).astype(np.float32))
    if texture_contrast != 1:
        tex = tex.mean() + texture_contrast * (tex - tex.mean())
    background = c0[:, None, None] + (c1 - c0)[:, None, None] * tex
    n_obj = int(rng.integers(1, max_objects + 1))
    objs = []
    for _ in range(n_obj):
        objs.append(
            dict(
                kind=int(rng.integers(1, len(VIDEO_CLASSES))),
                r=rng.uniform(0.1, 0.2) * s,
                pos=rng.uniform(0.25, 0.75, 2) * s,
                vel=rng.uniform(-1, 1, 2) * s / 32,
                colour=torch.from_numpy(rng.random(3).astype(np.float32)),
                stripe=(rng.uniform(0, math.pi), rng.uniform(0.3, 0.8)),
                rot=rng.uniform(0, 2 * math.pi),
            )
        )
    out_frames, out_masks = [], []
    for _ in range(frames):
        image, mask = background.clone(), torch.zeros(s, s, dtype=torch.int64)
        for o in objs:
            dx, dy = xx - float(o["pos"][0]), yy - float(o["pos"][1])
            if o["kind"] == 1:
                inside = dx * dx + dy * dy <= o["r"] ** 2
            elif o["kind"] == 2:
                c, sn = math.cos(o["rot"]), math.sin(o["rot"])
                inside = ((dx * c + dy * sn).abs() <= o["r"]) & ((-dx * sn + dy * c).abs() <= o["r"])
            else:  # triangle: three half-planes
                inside = torch.ones_like(dx, dtype=torch.bool)
                for k in range(3):
                    a = o["rot"] + 2 * math.pi * k / 3
                    inside &= dx * math.cos(a) + dy * math.sin(a) <= 0.6 * o["r"]
            a, f = o["stripe"]
            stripes = 0.5 + 0.5 * torch.sin(f * (xx * math.cos(a) + yy * math.sin(a)))
            colour = o["colour"][:, None, None] * (0.75 + 0.25 * stripes)
            image = torch.where(inside, colour, image)
            mask[inside] = o["kind"]
            # move, bouncing off the borders
            o["pos"] = o["pos"] + o["vel"]
            for d in range(2):
                if not o["r"] * 0.5 <= o["pos"][d] <= s - o["r"] * 0.5:
                    o["vel"][d] = -o["vel"][d]
                    o["pos"][d] = min(max(o["pos"][d], o["r"] * 0.5), s - o["r"] * 0.5)
        image = image + noise * torch.from_numpy(rng.standard_normal((3, s, s)).astype(np.float32))
        out_frames.append(image.clamp(0, 1))
        out_masks.append(mask)
    return {"frames": torch.stack(out_frames), "masks": torch.stack(out_masks)}


class VideoDataset(BenchDataset):
    """A data set of videos (``{"frames", "masks"}``, see the module docstring). ``num_frames`` and
    ``frame`` here decode the whole video (keeping the last one, so reading a video's frames in
    order decodes it once); subclasses that can read a single frame override them."""

    task = "video"

    def __init__(self) -> None:
        super().__init__()
        self._cached: tuple[int, dict[str, torch.Tensor]] | None = None

    def _video(self, index: int) -> dict[str, torch.Tensor]:
        index = self._check_index(index)
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self[index])
        return self._cached[1]

    def num_frames(self, index: int) -> int:
        """Frames in video ``index``."""
        return int(self._video(index)["frames"].shape[0])

    def frame(self, index: int, t: int) -> dict[str, torch.Tensor]:
        """Frame ``t`` of video ``index`` as ``{"image": 3×H×W, "mask": H×W int64}``."""
        video = self._video(index)
        return {"image": video["frames"][t], "mask": video["masks"][t]}


class SyntheticVideo(VideoDataset):
    """``n`` synthetic videos of ``frames`` frames at ``size``² px (see the module docstring)."""

    name = "synthetic_video"
    class_names = VIDEO_CLASSES
    num_classes = len(VIDEO_CLASSES)
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        n: int,
        size: int = 64,
        frames: int = 8,
        seed: int = 0,
        split: str = "train",
        max_objects: int = 3,
        texture_contrast: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice(split, tuple(SPLITS), "split", self.name)
        if n < 1 or frames < 1 or size < 8:
            raise DatasetError(f"{self.name}: n ≥ 1, frames ≥ 1 and size ≥ 8, got n={n}, frames={frames}, size={size}")
        self.n, self.size, self.frames, self.seed, self.split = n, size, frames, seed, split
        self.max_objects, self.texture_contrast = max_objects, texture_contrast
        self._videos = [
            render_video(seed, split, i, size, frames, max_objects, texture_contrast=texture_contrast) for i in range(n)
        ]

    def __len__(self) -> int:
        return self.n

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        return self._videos[index]

    def num_frames(self, index: int) -> int:
        return self.frames

    def frame(self, index: int, t: int) -> dict[str, torch.Tensor]:
        video = self._videos[self._check_index(index)]
        return {"image": video["frames"][t], "mask": video["masks"][t]}

    def _details(self) -> str:
        return f"{self.frames} frames of {self.size}×{self.size} px, {self.num_classes} classes"


class FrameFolder(VideoDataset):
    """One video from ``<root>/frames`` (sorted by name), with ``<root>/masks`` if present.

    Construction reads each frame's header once (its size, to refuse frames of different sizes);
    each access decodes only what it returns: ``frame(0, t)`` one frame file (and its mask),
    ``self[0]`` every file once."""

    name = "frames"
    ignore_index = IGNORE_INDEX

    def __init__(
        self, root: str | os.PathLike[str], num_classes: int = len(VIDEO_CLASSES), max_frames: int | None = None
    ) -> None:
        from PIL import Image, UnidentifiedImageError

        super().__init__()
        layout = "<root>/frames/<name>.png|jpg (one video, in name order) and optional <root>/masks/<name>.png"
        base = Path(root)
        folder = base / "frames"
        if not folder.is_dir():
            raise DatasetError(f"{self.name}: no folder {folder}; expected {layout}")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if max_frames is not None:
            files = files[:max_frames]
        if not files:
            raise DatasetError(
                f"{self.name}: {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)}); expected {layout}"
            )
        sizes: dict[tuple[int, int], Path] = {}
        for path in files:
            try:
                with Image.open(path) as im:  # the header only: no pixels are decoded here
                    sizes.setdefault(im.size, path)
            except (OSError, UnidentifiedImageError) as err:
                raise DatasetError(f"{self.name}: cannot read image {path}: {err}") from None
            if len(sizes) > 1:
                (s0, p0), (s1, p1) = list(sizes.items())[:2]
                raise DatasetError(
                    f"{self.name}: frames of different sizes in {folder}: {p0.name} is {s0[1]}×{s0[0]} "
                    f"but {p1.name} is {s1[1]}×{s1[0]}; a video's frames must share one size"
                )
        mask_dir = base / "masks"
        self.masks = None
        if mask_dir.is_dir():
            self.masks = [mask_dir / (p.stem + ".png") for p in files]
            missing = [m for m in self.masks if not m.is_file()]
            if missing:
                raise DatasetError(
                    f"{self.name}: {len(missing)} frame(s) have no mask, e.g. {missing[0]}; expected {layout}"
                )
        self.files, self.num_classes = files, num_classes
        width, height = next(iter(sizes))
        self.frame_size = (height, width)

    @property
    def labelled(self) -> bool:
        return self.masks is not None

    def __len__(self) -> int:
        return 1

    def num_frames(self, index: int) -> int:
        self._check_index(index)
        return len(self.files)

    def frame(self, index: int, t: int) -> dict[str, torch.Tensor]:
        self._check_index(index)
        path = self.files[t]
        image = uint8_to_float(np.asarray(_open_image(path, self.name).convert("RGB")))
        if self.masks is None:
            mask = torch.full(self.frame_size, IGNORE_INDEX, dtype=torch.int64)
        else:
            mask_path = self.masks[t]
            labels = np.array(_open_image(mask_path, self.name), dtype=np.int64)
            if labels.shape != self.frame_size:
                raise DatasetError(
                    f"{self.name}: {mask_path} is {'×'.join(map(str, labels.shape))} but its frame {path.name} "
                    f"is {self.frame_size[0]}×{self.frame_size[1]}; a mask is one channel of class indices "
                    f"(palette or grey PNG) at its frame's size"
                )
            bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX)
            if bad.any():
                raise DatasetError(
                    f"{self.name}: {mask_path} holds labels {sorted(set(labels[bad].tolist()))[:5]} outside "
                    f"0..{self.num_classes - 1} and {IGNORE_INDEX}"
                )
            mask = torch.from_numpy(labels)
        return {"image": image, "mask": mask}

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        frames = [self.frame(index, t) for t in range(len(self.files))]
        return {
            "frames": torch.stack([f["image"] for f in frames]),
            "masks": torch.stack([f["mask"] for f in frames]),
        }

    def _details(self) -> str:
        return f"{len(self.files)} frames from {self.files[0].parent}{', labelled' if self.masks else ''}"


class VideoFrames(BenchDataset):
    """The frames of a video dataset as single samples ``{"image", "mask"}`` (to train the image
    network), each read on its own through :meth:`VideoDataset.frame` (one file per frame for a
    folder of frames, however the frames are shuffled)."""

    task = "segmentation"

    def __init__(self, videos: VideoDataset) -> None:
        super().__init__()
        if not isinstance(videos, VideoDataset):
            raise DatasetError(
                f"VideoFrames takes a video data set (adaptconv.data.video.VideoDataset), got {type(videos).__name__}"
            )
        self.videos, self.name = videos, f"{videos.name}-frames"
        self.num_classes = videos.num_classes
        self.index = [(v, t) for v in range(len(videos)) for t in range(videos.num_frames(v))]

    def __len__(self) -> int:
        return len(self.index)

    def _get(self, index: int) -> dict[str, torch.Tensor]:
        v, t = self.index[index]
        return self.videos.frame(v, t)


def synthetic_video(
    split: str = "train",
    n: int | None = None,
    size: int = 64,
    frames: int = 8,
    seed: int = 0,
    max_objects: int = 3,
    texture_contrast: float = 1.0,
) -> SyntheticVideo:
    """The registry's ``synthetic_video``: :class:`SyntheticVideo` with ``n`` defaulting to the
    spatial_video task's 48 training / 8 test videos."""
    n = (48 if split == "train" else 8) if n is None else n
    return SyntheticVideo(
        n, size, frames, seed=seed, split=split, max_objects=max_objects, texture_contrast=texture_contrast
    )
