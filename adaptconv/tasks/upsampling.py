"""Guided depth upsampling ×4/×8/×16 (RMSE and MAE), following the PAC paper's protocol.

- Low-resolution input: centre-pixel decimation of the high-resolution depth by the scale factor
  (the pixel at offset ⌊s/2⌋ of each s×s cell), after cropping to a multiple of the scale. Invalid
  low-resolution pixels are filled from their valid neighbours (normalised box filtering, repeated)
  and the network never sees a hole.
- Metrics per image on valid pixels, excluding a border of ``border`` pixels (6 in the paper), in the
  dataset's depth unit; the reported value is the mean over test images.
- The network (:class:`~adaptconv.models.networks.JointUpsamplingNet`) works on depth divided by a
  per-dataset scale (the largest valid training depth); metrics are in the original unit.
- ``upsampler``: how the network upsamples the depth before refining it: ``bilinear`` (default) or
  ``carafe`` (learned content-aware upsampling, :mod:`adaptconv.ops.carafe`). ``bilinear_rmse``
  stays the plain bilinear baseline either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import get_dataset
from ..models.networks import UPSAMPLERS, JointUpsamplingNet
from .base import Task


@dataclass
class UpsamplingOptions:
    scale: int = 8
    patch: int = 64  # training crops (high resolution)
    crops: int = 512  # training crops per epoch (Middlebury)
    width: int = 32
    layers: int = 4
    border: int = 6
    loss: str = "l1"
    n_train: int = 512  # synthetic scenes only
    n_test: int = 64
    size: int = 64
    extra_test: list[str] = field(default_factory=list)  # also evaluate on these datasets' test split
    upsampler: str = "bilinear"  # "bilinear" | "carafe": the network's depth upsampling

    def validate(self) -> list[str]:
        problems = []
        if self.upsampler not in UPSAMPLERS:
            problems.append(f"upsampler: one of {', '.join(UPSAMPLERS)}, got {self.upsampler!r}")
        if self.scale < 2:
            problems.append(f"scale: must be >= 2, got {self.scale}")
        if self.patch % self.scale or self.patch < 2 * self.scale:
            problems.append(f"patch: must be a multiple of scale={self.scale} and at least 2×scale, got {self.patch}")
        if self.loss not in ("l1", "l2"):
            problems.append(f"loss: 'l1' or 'l2', got {self.loss!r}")
        return problems


def decimate(depth: torch.Tensor, valid: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre-pixel decimation of B×1×H×W depth (H, W multiples of ``scale``)."""
    o = scale // 2
    return depth[..., o::scale, o::scale], valid[..., o::scale, o::scale]


def fill_invalid(depth: torch.Tensor, valid: torch.Tensor, max_iters: int = 64) -> torch.Tensor:
    """Fill invalid pixels with the mean of their valid 3×3 neighbours, growing until none is left."""
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    known = valid.to(depth.dtype)
    ones = torch.ones(1, 1, 3, 3, device=depth.device, dtype=depth.dtype)
    for _ in range(max_iters):
        if bool(known.all()):
            break
        total = F.conv2d(depth * known, ones, padding=1)
        count = F.conv2d(known, ones, padding=1)
        grow = (known == 0) & (count > 0)
        depth = torch.where(grow, total / count.clamp(min=1), depth)
        known = torch.maximum(known, grow.to(depth.dtype))
    return depth


def crop_to_multiple(t: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    return t[..., : h - h % scale, : w - w % scale]


def depth_errors(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, border: int) -> tuple[float, float]:
    """(RMSE, MAE) of one image on valid pixels away from the border."""
    if border:
        pred, target, valid = (t[..., border:-border, border:-border] for t in (pred, target, valid))
    diff = (pred - target)[valid]
    if diff.numel() == 0:
        return float("nan"), float("nan")
    return diff.square().mean().sqrt().item(), diff.abs().mean().item()


class Upsampling(Task):
    name = "upsampling"
    metrics = ("rmse", "mae", "bilinear_rmse")
    higher_is_better = {"rmse": False, "mae": False, "bilinear_rmse": False}
    Options = UpsamplingOptions
    datasets = ("middlebury", "synthetic", "nyu_depth_v2")
    default_dataset = "middlebury"
    backbones = ("jointnet",)
    default_swap = {"pattern": "target.layers.*"}
    default_guide = "image"
    default_steps = 300

    late_options = {"upsampler": "bilinear"}  # see Task.late_options

    def _dataset(self, name: str, split: str) -> Dataset:
        o, cfg = self.options, self.config
        if name == "synthetic":
            n = o.n_train if split == "train" else o.n_test
            seed = cfg.seed if split == "train" else cfg.seed + 10_000
            return get_dataset(name, "upsampling", split, n=n, size=o.size, seed=seed)
        if name == "middlebury":
            kwargs = dict(patch=o.patch, crops=o.crops, seed=cfg.seed) if split == "train" else {}
            return get_dataset(name, "upsampling", split, **kwargs)
        return get_dataset(name, "upsampling", split, root=cfg.data_root)

    def build_data(self) -> tuple[Dataset, Dataset]:
        train = self._dataset(self.config.dataset, "train")
        test = self._dataset(self.config.dataset, "test")
        self.depth_scale = _depth_scale(train)
        self.extra_tests = {name: self._dataset(name, "test") for name in self.options.extra_test}
        return train, test

    def build_network(self, train_set: Dataset) -> nn.Module:
        o = self.options
        return JointUpsamplingNet(o.width, o.layers, upsampler=o.upsampler, scale=o.scale)

    def _inputs(self, batch, scale_override: float | None = None):
        s = self.options.scale
        rgb = crop_to_multiple(batch["rgb"], s)
        depth = crop_to_multiple(batch["depth"], s)
        valid = crop_to_multiple(batch["valid"], s)
        scale = scale_override or self.depth_scale
        lr, lr_valid = decimate(depth / scale, valid, s)
        return rgb, fill_invalid(lr, lr_valid), depth, valid, scale

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        rgb, lr, depth, valid, scale = self._inputs(batch)
        pred = model(rgb, lr)
        diff = (pred - depth / scale)[valid]
        return diff.abs().mean() if self.options.loss == "l1" else diff.square().mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        out = self._evaluate(model, test_set, self.depth_scale)
        for name, ds in self.extra_tests.items():
            # a model trained on other data meets this dataset in its own units
            out.update({f"{name}/{k}": v for k, v in self._evaluate(model, ds, _depth_scale(ds)).items()})
        return out

    def _evaluate(self, model, test_set, scale) -> dict[str, float]:
        model.eval()
        rmse, mae, bil = [], [], []
        for i in range(len(test_set)):
            batch = self.to_device({k: v.unsqueeze(0) for k, v in test_set[i].items()})
            rgb, lr, depth, valid, scale = self._inputs(batch, scale)
            pred = model(rgb, lr) * scale
            up = F.interpolate(lr, size=rgb.shape[-2:], mode="bilinear", align_corners=False) * scale
            r, a = depth_errors(pred, depth, valid, self.options.border)
            rmse.append(r)
            mae.append(a)
            bil.append(depth_errors(up, depth, valid, self.options.border)[0])
        mean = lambda xs: float(torch.tensor(xs).nanmean())  # noqa: E731
        return {"rmse": mean(rmse), "mae": mean(mae), "bilinear_rmse": mean(bil)}

    def example_inputs(self, batch_size: int, resolution: int | None = None):
        size = resolution or self.options.patch
        size -= size % self.options.scale
        rgb = torch.rand(batch_size, 3, size, size, device=self.device)
        lr = torch.rand(batch_size, 1, size // self.options.scale, size // self.options.scale, device=self.device)
        return rgb, lr


def _depth_scale(dataset: Dataset) -> float:
    """The largest valid depth of a dataset (from up to 64 samples), to normalise depths to ~[0, 1]."""
    attr = getattr(dataset, "depth_max", None)
    if attr:
        return float(attr)
    top = 0.0
    for i in range(min(len(dataset), 64)):
        s = dataset[i]
        if s["valid"].any():
            top = max(top, float(s["depth"][s["valid"]].max()))
    return top or 1.0
