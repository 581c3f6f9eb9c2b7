"""Image classification (top-1 / top-5 accuracy) with the operator swapped into a backbone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import get_dataset
from ..models.backbones import BUILTIN_BACKBONES, build_backbone
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
        self.native_size = tuple(train[0]["image"].shape[-2:])
        return train, test

    def image_channels(self, train_set) -> int:
        return self.in_channels

    def build_network(self, train_set: Dataset) -> nn.Module:
        model, _ = build_backbone(self.config.backbone, self.in_channels, self.num_classes)
        return _Resized(model, self.options.image_size)

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

    def example_inputs(self, batch_size: int, resolution: int | None = None):
        size = (resolution, resolution) if resolution else self.native_size
        return (torch.rand(batch_size, self.in_channels, *size, device=self.device),)


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
