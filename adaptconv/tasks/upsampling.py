"""Guided depth upsampling ×4/×8/×16 (RMSE and MAE), following the PAC paper's protocol.

- Low-resolution input: centre-pixel decimation of the high-resolution depth by the scale factor
  (the pixel at offset ⌊s/2⌋ of each s×s cell), after cropping to a multiple of the scale. Invalid
  low-resolution pixels are filled from their valid neighbours (normalised box filtering, repeated)
  and the network never sees a hole.
- Metrics per image on valid pixels, excluding a border of ``border`` pixels (6 in the paper), in the
  dataset's depth unit; the reported value is the mean over test images.
- Baselines (:meth:`Upsampling.baselines`, non-learned, same test data and metrics): ``bilinear``,
  ``guided_filter`` (He et al., on the bilinear upsampling, guided by the RGB) and ``jbu`` (Kopf et
  al.'s joint bilateral upsampling), with the fixed hyperparameters of :data:`CLASSICAL`.
- The network (:class:`~adaptconv.models.networks.JointUpsamplingNet`) sees depth standardised by
  the training set's mean and standard deviation; its output (a convex combination of the input
  samples) is mapped back, and metrics are in the original unit.
- Training: the loss is taken on each crop's interior only (``loss_border``, default ⌊s/2⌋ pixels):
  the pixels outside the outermost low-resolution samples of a crop are extrapolations from samples
  the crop does not hold, noise that the whole-image evaluation (border excluded) never meets. ``l2`` (default)
  is the squared error that RMSE measures. On Middlebury, a fraction ``edge_crops`` of the training
  crops is drawn in proportion to the depth edges they hold: RMSE is made almost entirely at depth
  edges (98% of bilinear's squared error comes from the 10% of pixels off by more than 2 px), which
  uniform crops of a mostly flat scene rarely show.
- ``upsampler``: the network's base upsampling of the depth: ``bilinear`` (default) or any registered
  operator of kind upsampler, e.g. ``carafe`` (learned content-aware kernels, :mod:`adaptconv.ops.carafe`,
  initialised to bilinear's); a plugin's is taken by name alike (see
  :class:`~adaptconv.models.networks.JointUpsamplingNet` for how one that predicts no kernels is used).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import get_dataset
from ..models.networks import BILINEAR, JointUpsamplingNet, upsampler_choices
from ..schema import did_you_mean
from .base import Task
from .classical import guided_filter, joint_bilateral_upsample

#: Fixed hyperparameters of the classical baselines, chosen once by a grid search on the Middlebury
#: *training* columns at ×8 (never on the test columns) and kept for every dataset and scale:
#: guided filter radius ∈ {2, 4, 8, 16} × eps ∈ {1e-4, 1e-3, 1e-2, 1e-1} (RGB in [0, 1]; radius in
#: high-resolution pixels, for ×8) → r = 4, eps = 1e-4 (train RMSE 2.72 vs bilinear 2.84);
#: JBU radius ∈ {1, 2} × σ_spatial ∈ {0.5, 1} (low-resolution pixels) × σ_range ∈ {0.03, 0.1, 0.3}
#: → 1, 0.5, 0.3 (train RMSE 2.61). The guided filter's radius scales with the factor (r = s/2).
CLASSICAL = {
    "guided_filter": {"radius_per_scale": 0.5, "eps": 1e-4},
    "jbu": {"radius": 1, "sigma_spatial": 0.5, "sigma_range": 0.3},
}


@dataclass
class UpsamplingOptions:
    scale: int = 8
    patch: int = 64  # training crops (high resolution)
    crops: int = 512  # training crops per epoch (Middlebury)
    width: int = 32
    layers: int = 4
    border: int = 6
    loss: str = "l2"
    loss_border: int | None = None  # pixels of each training crop left out of the loss (None: scale // 2)
    edge_crops: float = 0.5  # Middlebury: fraction of training crops drawn in proportion to their depth edges
    embed: int = 4  # the network's per-pixel embedding
    n_train: int = 512  # synthetic scenes only
    n_test: int = 64
    size: int = 64
    extra_test: list[str] = field(default_factory=list)  # also evaluate on these datasets' test split
    upsampler: str = BILINEAR  # "bilinear" | an upsampler operator ("carafe", plugins): the depth upsampling

    def validate(self) -> list[str]:
        problems = []
        upsamplers = upsampler_choices()
        if self.upsampler not in upsamplers:
            problems.append(
                f"upsampler: one of {', '.join(upsamplers)}, got {self.upsampler!r}"
                f"{did_you_mean(self.upsampler, upsamplers)}"
            )
        if self.scale < 2:
            problems.append(f"scale: must be >= 2, got {self.scale}")
        if self.patch % self.scale or self.patch < 2 * self.scale:
            problems.append(f"patch: must be a multiple of scale={self.scale} and at least 2×scale, got {self.patch}")
        if self.loss not in ("l1", "l2"):
            problems.append(f"loss: 'l1' or 'l2', got {self.loss!r}")
        if self.loss_border is not None and not 0 <= 2 * self.loss_border < self.patch:
            problems.append(
                f"loss_border: must be >= 0 and leave part of the {self.patch}-pixel patch, got {self.loss_border}"
            )
        if not 0 <= self.edge_crops <= 1:
            problems.append(f"edge_crops: a fraction in [0, 1], got {self.edge_crops}")
        if self.embed < 1:
            problems.append(f"embed: must be >= 1, got {self.embed}")
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
    metrics = ("rmse", "mae")
    higher_is_better = {"rmse": False, "mae": False}
    Options = UpsamplingOptions
    datasets = ("middlebury", "synthetic", "nyu_depth_v2")
    default_dataset = "middlebury"
    backbones = ("jointnet",)
    default_swap = {"pattern": "target.layers.*"}
    default_guide = "image"
    default_steps = 300

    late_options = {"upsampler": BILINEAR}  # see Task.late_options

    def _dataset(self, name: str, split: str) -> Dataset:
        o, cfg = self.options, self.config
        if name == "synthetic":
            n = o.n_train if split == "train" else o.n_test
            seed = cfg.seed if split == "train" else cfg.seed + 10_000
            return get_dataset(name, "upsampling", split, n=n, size=o.size, seed=seed)
        if name == "middlebury":
            kwargs = (
                dict(patch=o.patch, crops=o.crops, seed=cfg.seed, edge_fraction=o.edge_crops)
                if split == "train"
                else {}
            )
            return get_dataset(name, "upsampling", split, **kwargs)
        return get_dataset(name, "upsampling", split, root=cfg.data_root)

    def build_data(self) -> tuple[Dataset, Dataset]:
        train = self._dataset(self.config.dataset, "train")
        test = self._dataset(self.config.dataset, "test")
        self.depth_stats = _depth_stats(train)
        self.extra_tests = {name: self._dataset(name, "test") for name in self.options.extra_test}
        return train, test

    def build_network(self, train_set: Dataset) -> nn.Module:
        o = self.options
        return JointUpsamplingNet(o.width, o.layers, upsampler=o.upsampler, scale=o.scale, embed=o.embed)

    def _inputs(self, batch, stats: tuple[float, float] | None = None):
        """(rgb, standardised low-resolution depth, depth, valid, (mean, std)) of a batch."""
        s = self.options.scale
        rgb = crop_to_multiple(batch["rgb"], s)
        depth = crop_to_multiple(batch["depth"], s)
        valid = crop_to_multiple(batch["valid"], s)
        mean, std = stats or self.depth_stats
        lr, lr_valid = decimate((depth - mean) / std, valid, s)
        return rgb, fill_invalid(lr, lr_valid), depth, valid, (mean, std)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        rgb, lr, depth, valid, (mean, std) = self._inputs(batch)
        pred = model(rgb, lr)
        b = self.options.scale // 2 if self.options.loss_border is None else self.options.loss_border
        target = (depth - mean) / std
        if b:
            pred, target, valid = (t[..., b:-b, b:-b] for t in (pred, target, valid))
        diff = (pred - target)[valid]
        if diff.numel() == 0:  # a crop with no valid pixel inside: contributes nothing
            return pred.sum() * 0
        return diff.abs().mean() if self.options.loss == "l1" else diff.square().mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        model.eval()
        predict = lambda rgb, lr, stats: model(rgb, lr) * stats[1] + stats[0]  # noqa: E731
        return self._score_all(predict, test_set)

    @torch.no_grad()
    def baselines(self, test_set: Dataset) -> dict[str, dict[str, float]]:
        """``bilinear``, ``guided_filter`` and ``jbu`` (see :data:`CLASSICAL`) on the test set (and on
        each ``extra_test`` dataset, as ``name/metric`` like :meth:`evaluate`)."""
        s = self.options.scale
        gf, jbu = CLASSICAL["guided_filter"], CLASSICAL["jbu"]

        def bilinear(rgb, lr, stats):
            return F.interpolate(lr, size=rgb.shape[-2:], mode="bilinear", align_corners=False) * stats[1] + stats[0]

        def guided(rgb, lr, stats):
            radius = max(1, round(gf["radius_per_scale"] * s))
            return guided_filter(rgb, bilinear(rgb, lr, stats), radius, gf["eps"])

        def joint_bilateral(rgb, lr, stats):
            # float64: the range weights of far colours underflow float32
            out = joint_bilateral_upsample(
                rgb.double(),
                lr.double(),
                s,
                radius=jbu["radius"],
                sigma_spatial=jbu["sigma_spatial"],
                sigma_range=jbu["sigma_range"],
            )
            return out.to(lr.dtype) * stats[1] + stats[0]

        return {
            name: self._score_all(fn, test_set)
            for name, fn in (("bilinear", bilinear), ("guided_filter", guided), ("jbu", joint_bilateral))
        }

    def _score_all(self, predict, test_set: Dataset) -> dict[str, float]:
        out = self._score(predict, test_set, self.depth_stats)
        for name, ds in self.extra_tests.items():
            # a model trained on other data meets this dataset in its own units
            out.update({f"{name}/{k}": v for k, v in self._score(predict, ds, _depth_stats(ds)).items()})
        return out

    def _score(self, predict, test_set: Dataset, stats: tuple[float, float]) -> dict[str, float]:
        """Mean over the test images of RMSE and MAE of ``predict(rgb, lr, stats)`` (in depth units)."""
        rmse, mae = [], []
        for i in range(len(test_set)):
            batch = self.to_device({k: v.unsqueeze(0) for k, v in test_set[i].items()})
            rgb, lr, depth, valid, stats = self._inputs(batch, stats)
            r, a = depth_errors(predict(rgb, lr, stats), depth, valid, self.options.border)
            rmse.append(r)
            mae.append(a)
        mean = lambda xs: float(torch.tensor(xs).nanmean())  # noqa: E731
        return {"rmse": mean(rmse), "mae": mean(mae)}

    def example_inputs(self, batch_size: int, resolution: int | None = None):
        size = resolution or self.options.patch
        size -= size % self.options.scale
        rgb = torch.rand(batch_size, 3, size, size, device=self.device)
        lr = torch.rand(batch_size, 1, size // self.options.scale, size // self.options.scale, device=self.device)
        return rgb, lr


def _depth_stats(dataset: Dataset) -> tuple[float, float]:
    """(mean, standard deviation) of the valid depths of a dataset (from up to 64 samples), to
    standardise the network's input."""
    own = getattr(dataset, "depth_stats", None)
    if callable(own):
        return own()
    values = []
    for i in range(min(len(dataset), 64)):
        s = dataset[i]
        values.append(s["depth"][s["valid"]].double().flatten())
    v = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    if v.numel() < 2:
        return 0.0, 1.0
    std = float(v.std())
    return float(v.mean()), std if std > 0 else 1.0
