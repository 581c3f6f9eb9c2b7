"""Image classification (top-1 / top-5 accuracy) with the operator swapped into a backbone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import get_dataset
from ..models.backbones import BUILTIN_BACKBONES, build_backbone
from ..models.norm import warm_start_batchnorm
from .base import Task


@dataclass
class ClassificationOptions:
    image_size: int | None = None  # resize inputs (e.g. digits' 8×8 → 16×16); default: native size
    n_train: int = 2000  # synthetic scenes only: training set size
    n_test: int = 500
    size: int = 32  # synthetic scenes only: image side
    label_smoothing: float = 0.0


class Classification(Task):
    name = "classification"
    metrics = ("top1", "top5", "loss")
    higher_is_better = {"top1": True, "top5": True, "loss": False}
    Options = ClassificationOptions
    datasets = ("digits", "synthetic", "cifar10", "cifar100", "imagefolder")
    default_dataset = "digits"
    backbones = BUILTIN_BACKBONES
    accepts_timm = True
    default_swap = {"pattern": "*stages.*"}  # the residual stages, not the stem
    default_guide = "self"
    default_steps = 300

    def build_data(self) -> tuple[Dataset, Dataset]:
        o, cfg = self.options, self.config
        extra = dict(n=o.n_train, size=o.size, seed=cfg.seed) if cfg.dataset == "synthetic" else {}
        train = get_dataset(cfg.dataset, "classification", "train", root=cfg.data_root, **extra)
        if cfg.dataset == "synthetic":
            extra = dict(n=o.n_test, size=o.size, seed=cfg.seed + 10_000)
        test = get_dataset(cfg.dataset, "classification", "test", root=cfg.data_root, **extra)
        self.num_classes = train.num_classes
        self.in_channels = train.in_channels
        # what the majority baseline predicts is learned from the training labels only
        self.train_class_counts = torch.bincount(class_labels(train), minlength=self.num_classes)
        self.native_size = tuple(train[0]["image"].shape[-2:])
        return train, test

    def image_channels(self, train_set) -> int:
        return self.in_channels

    def build_network(self, train_set: Dataset) -> nn.Module:
        model, _ = build_backbone(self.config.backbone, self.in_channels, self.num_classes)
        return _Resized(model, self.options.image_size)

    def build_model(self, train_set: Dataset):
        model, summary = super().build_model(train_set)
        # after the swap, so operator-internal BatchNorms are included: at short budgets the default
        # running statistics still remember their (0, 1) start and the eval-mode network is not the trained one
        warm_start_batchnorm(model)
        return model, summary

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return F.cross_entropy(model(batch["image"]), batch["label"], label_smoothing=self.options.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        model.eval()
        loader = DataLoader(test_set, batch_size=self.config.eval_batch_size or 256, shuffle=False)
        correct1 = correct5 = total = 0
        loss_sum = 0.0
        for batch in loader:
            batch = self.to_device(batch)
            logits = model(batch["image"])
            labels = batch["label"]
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(1).sum().item()
            total += labels.numel()
        return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "loss": loss_sum / total}

    @torch.no_grad()
    def baselines(self, test_set: Dataset) -> dict[str, dict[str, float]]:
        """``majority``: the constant prediction of the training set's class frequencies — top-1 is
        its most frequent class, top-5 its five most frequent (ties: lower class index first), loss the
        cross-entropy of those frequencies (add-one smoothed, so a class absent from training costs a
        finite loss). ``chance``: a uniformly random guess — top-1 100/C, top-5 100·min(5, C)/C,
        loss ln C."""
        c = self.num_classes
        labels = class_labels(test_set)
        counts = self.train_class_counts.double()
        order = torch.sort(counts, descending=True, stable=True).indices
        k = min(5, c)
        prior = (counts + 1) / (counts.sum() + c)
        majority = {
            "top1": 100.0 * (labels == order[0]).double().mean().item(),
            "top5": 100.0 * torch.isin(labels, order[:k]).double().mean().item(),
            "loss": -prior.log()[labels].mean().item(),
        }
        chance = {"top1": 100.0 / c, "top5": 100.0 * k / c, "loss": math.log(c)}
        return {"majority": majority, "chance": chance}

    def example_inputs(self, batch_size: int, resolution: int | None = None):
        size = (resolution, resolution) if resolution else self.native_size
        return (torch.rand(batch_size, self.in_channels, *size, device=self.device),)


def class_labels(dataset: Dataset) -> torch.Tensor:
    """All labels of a classification data set as an int64 tensor, read from what it keeps in memory
    (``labels``: digits, CIFAR; ``samples``: image folders) or else sample by sample."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.ndim == 1 and len(labels) == len(dataset):
        return labels.long()
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and len(samples) == len(dataset):
        return torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)
    loader = DataLoader(dataset, batch_size=256, shuffle=False)
    out = [batch["label"].long().reshape(-1) for batch in loader]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


class _Resized(nn.Module):
    """Resizes the input before the backbone (small images into ImageNet-shaped networks)."""

    def __init__(self, model: nn.Module, size: int | None) -> None:
        super().__init__()
        self.model = model
        self.size = size
        # expose timm's stage table so swap selection by stage sees the backbone's stages
        if hasattr(model, "feature_info"):
            self.feature_info = model.feature_info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x)
