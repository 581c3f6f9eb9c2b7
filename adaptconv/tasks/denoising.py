"""Image denoising (PSNR, SSIM) with a DnCNN-style network whose body convs are the operator.

Training: clean images (synthetic scenes by default) with fresh Gaussian noise of standard
deviation ``sigma``/255 each step. Test: scikit-image's real photographs (or a folder of clean images)
with noise drawn from a generator seeded by (seed, image index), so every operator sees the very same
noisy test images. PSNR and SSIM (scikit-image's implementation, data range 1) per image, averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import get_dataset
from ..models.networks import DnCNN
from .base import Task


@dataclass
class DenoisingOptions:
    sigma: float = 25.0  # noise standard deviation on the 0–255 scale
    width: int = 32
    depth: int = 8
    gray: bool = True
    n_train: int = 512  # synthetic scenes: number and side of the training images
    size: int = 48
    test_dataset: str = "photos"  # photos (scikit-image) | synthetic | image_folder_denoise
    test_crop: int | None = 128  # centre crop of each test image (None: full size)

    def validate(self) -> list[str]:
        problems = []
        if not 0 < self.sigma <= 255:
            problems.append(f"sigma: noise level on the 0-255 scale in (0, 255], got {self.sigma}")
        if self.depth < 3:
            problems.append(f"depth: at least 3 layers, got {self.depth}")
        return problems


def psnr(pred: torch.Tensor, clean: torch.Tensor) -> float:
    mse = F.mse_loss(pred.clamp(0, 1), clean).item()
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(pred: torch.Tensor, clean: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    p = pred.clamp(0, 1).detach().cpu().double().numpy()
    c = clean.detach().cpu().double().numpy()
    return float(structural_similarity(c, p, data_range=1.0, channel_axis=0))


class Denoising(Task):
    name = "denoising"
    metrics = ("psnr", "ssim", "noisy_psnr")
    higher_is_better = {"psnr": True, "ssim": True, "noisy_psnr": True}
    Options = DenoisingOptions
    datasets = ("synthetic", "photos", "image_folder_denoise")
    default_dataset = "synthetic"
    backbones = ("dncnn",)
    default_swap = {"pattern": "body.*"}
    default_guide = "self"
    default_steps = 300

    @property
    def channels(self) -> int:
        return 1 if self.options.gray else 3

    def _dataset(self, name: str, split: str) -> Dataset:
        o, cfg = self.options, self.config
        if name == "synthetic":
            n, seed = (o.n_train, cfg.seed) if split == "train" else (16, cfg.seed + 10_000)
            return get_dataset(name, "denoising", split, n=n, size=o.size, seed=seed, gray=o.gray)
        if name == "photos":
            return get_dataset(name, "denoising", split, gray=o.gray, crop=o.test_crop if split == "test" else o.size)
        return get_dataset(name, "denoising", split, root=cfg.data_root, gray=o.gray)

    def build_data(self) -> tuple[Dataset, Dataset]:
        return self._dataset(self.config.dataset, "train"), self._dataset(self.options.test_dataset, "test")

    def image_channels(self, train_set) -> int:
        return self.channels

    def build_network(self, train_set: Dataset) -> nn.Module:
        return DnCNN(self.channels, self.options.width, self.options.depth)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        clean = batch["clean"]
        noisy = clean + torch.randn_like(clean) * (self.options.sigma / 255.0)
        return F.mse_loss(model(noisy), clean)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        model.eval()
        scores = {"psnr": [], "ssim": [], "noisy_psnr": []}
        for i in range(len(test_set)):
            clean = test_set[i]["clean"].unsqueeze(0)
            gen = torch.Generator().manual_seed(self.config.seed * 100_003 + i)
            noisy = clean + torch.randn(clean.shape, generator=gen) * (self.options.sigma / 255.0)
            pred = model(noisy.to(self.device)).cpu()
            scores["psnr"].append(psnr(pred[0], clean[0]))
            scores["ssim"].append(ssim(pred[0], clean[0]))
            scores["noisy_psnr"].append(psnr(noisy[0], clean[0]))
        return {k: float(np.mean(v)) for k, v in scores.items()}

    def example_inputs(self, batch_size: int, resolution: int | None = None):
        size = resolution or self.options.size
        return (torch.rand(batch_size, self.channels, size, size, device=self.device),)
