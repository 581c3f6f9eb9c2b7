"""Image denoising (PSNR, SSIM) with a DnCNN-style network whose body convs are the operator.

Training: clean images (synthetic scenes by default) with fresh Gaussian noise of standard
deviation ``sigma``/255 each step. Test: scikit-image's real photographs (or a folder of clean images)
with noise drawn from a generator seeded by (seed, image index), so every operator sees the very same
noisy test images. PSNR and SSIM (scikit-image's implementation, data range 1) per image, averaged.

Baseline (:meth:`Denoising.baselines`): ``noisy_input``, the PSNR and SSIM of those very noisy test
images themselves — what a network that learned nothing (the identity) would score.
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
    metrics = ("psnr", "ssim")
    higher_is_better = {"psnr": True, "ssim": True}
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

    def test_pairs(self, test_set: Dataset):
        """(clean, noisy) 1×C×H×W pairs of the test set: the noise of image ``i`` comes from a generator
        seeded by (seed, i), so every operator and the baselines see the very same noisy images."""
        for i in range(len(test_set)):
            clean = test_set[i]["clean"].unsqueeze(0)
            gen = torch.Generator().manual_seed(self.config.seed * 100_003 + i)
            yield clean, clean + torch.randn(clean.shape, generator=gen) * (self.options.sigma / 255.0)

    @staticmethod
    def _scores(pairs) -> dict[str, float]:
        """Mean PSNR and SSIM over (prediction, clean) pairs."""
        scores = {"psnr": [], "ssim": []}
        for pred, clean in pairs:
            scores["psnr"].append(psnr(pred[0], clean[0]))
            scores["ssim"].append(ssim(pred[0], clean[0]))
        return {k: float(np.mean(v)) for k, v in scores.items()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        model.eval()
        return self._scores((model(noisy.to(self.device)).cpu(), clean) for clean, noisy in self.test_pairs(test_set))

    @torch.no_grad()
    def baselines(self, test_set: Dataset) -> dict[str, dict[str, float]]:
        """``noisy_input``: the noisy test images themselves (the identity), scored like a prediction."""
        return {"noisy_input": self._scores((noisy, clean) for clean, noisy in self.test_pairs(test_set))}

    def example_inputs(self, batch_size: int, resolution: int | None = None):
        size = resolution or self.options.size
        return (torch.rand(batch_size, self.channels, size, size, device=self.device),)
