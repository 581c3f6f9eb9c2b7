"""The task networks, built of plain ``nn.Conv2d`` so any operator can be hot-swapped into them.

- :class:`SimpleCNN` — a small VGG/ResNet-style classifier (and feature extractor) that trains in
  seconds on a CPU; timm backbones are the alternative for real runs. Its ``feature_info`` follows
  timm's convention so stage selection works the same way.
- :class:`FCNSegmenter` — any feature backbone + a light FCN decoder (its feature upsampling
  bilinear or CARAFE; optionally a PAC-CRF refinement head on the logits, guided by the image).
- :class:`JointUpsamplingNet` — guided depth upsampling: a guidance branch on the RGB image and a
  target branch on the upsampled depth (bilinear, or CARAFE), whose 3×3 convs (``target.layers.*``)
  are the operator under test; the output is a residual on that upsampling.
- :class:`DnCNN` — residual denoiser (Zhang et al. 2017): conv-ReLU, (depth−2)×(conv-BN-ReLU), conv;
  its body convs (``body.*``) are the operator under test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLERS = ("bilinear", "carafe")


def _check_upsampler(upsampler: str) -> None:
    if upsampler not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")


def _fit(t: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize to ``size`` if needed (a CARAFE by an integer factor can miss odd sizes by a pixel)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (1×1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class SimpleCNN(nn.Module):
    """stem (3×3) → stages of BasicBlocks (stride 2 from the second stage) → GAP → linear.

    ``features_only=True`` returns the list of stage outputs instead (for segmentation).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 10, widths=(32, 64, 128), blocks: int = 1,
                 features_only: bool = False) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_chans, widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.features_only = features_only
        self.feature_info = [dict(num_chs=w, reduction=2 ** i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self.head = None if features_only else nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        if self.features_only:
            return feats
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class FCNSegmenter(nn.Module):
    """Backbone features → 1×1 projections → upsample to the finest map → sum → 3×3 conv → classes
    → bilinear to the image size → (optional) refinement head.

    ``upsampler="carafe"`` upsamples each projected feature map to the finest one with a CARAFE of
    factor ``reductions[i] // reductions[0]`` (``reductions``: the backbone's output strides, needed
    then); the logits still go to the image size bilinearly. ``refiner``: a module called as
    ``refiner(logits, image)`` (e.g. :class:`adaptconv.ops.paccrf.PacCRF`).
    """

    def __init__(self, backbone: nn.Module, channels: list[int], num_classes: int, width: int = 64, *,
                 upsampler: str = "bilinear", reductions: list[int] | None = None,
                 refiner: nn.Module | None = None) -> None:
        super().__init__()
        _check_upsampler(upsampler)
        self.backbone = backbone
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = conv_bn_relu(width, width)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.upsampler = upsampler
        if upsampler == "carafe":
            from ..ops.carafe import Carafe

            if reductions is None or len(reductions) != len(channels):
                raise ValueError("FCNSegmenter: upsampler='carafe' needs the backbone's reductions, one per feature map")
            if any(r % reductions[0] for r in reductions):
                raise ValueError(f"FCNSegmenter: reductions {reductions} are not multiples of the finest one")
            self.upsamplers = nn.ModuleList(
                Carafe(width, r // reductions[0], compressed_channels=width) if r > reductions[0] else nn.Identity()
                for r in reductions)
        self.refiner = refiner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        if self.upsampler == "carafe":
            y = sum(_fit(up(lat(f)), size) for lat, up, f in zip(self.lateral, self.upsamplers, feats))
        else:
            y = sum(F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                    else lat(f) for lat, f in zip(self.lateral, feats))
        y = self.classifier(self.fuse(y))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y if self.refiner is None else self.refiner(y, x)


class JointUpsamplingNet(nn.Module):
    """forward(rgb at high resolution, depth at low resolution) → depth at high resolution."""

    def __init__(self, width: int = 32, layers: int = 4, guide_channels: int = 3, *, upsampler: str = "bilinear",
                 scale: int | None = None) -> None:
        super().__init__()
        _check_upsampler(upsampler)
        # CARAFE upsamples the depth by ``scale`` (sizes are multiples of it); kept outside ``target``
        # so the task's default swap selection leaves it alone.
        self.upsample = None
        if upsampler == "carafe":
            from ..ops.carafe import Carafe

            if not scale or scale < 2:
                raise ValueError(f"JointUpsamplingNet: upsampler='carafe' needs the integer scale (>= 2), got {scale}")
            self.upsample = Carafe(1, scale, compressed_channels=width)
        self.guidance = nn.Sequential(nn.Conv2d(guide_channels, width, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.target = nn.Module()
        self.target.head = nn.Conv2d(1, width, 3, padding=1)
        # Each layer sees the depth features and the guidance features side by side, so a plain conv
        # can use the guidance too; adaptive operators can additionally adapt to their guide.
        self.target.layers = nn.ModuleList(nn.Conv2d(2 * width, width, 3, padding=1) for _ in range(layers))
        self.target.tail = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.target.tail.weight)  # start as plain bilinear upsampling
        nn.init.zeros_(self.target.tail.bias)

    def forward(self, rgb: torch.Tensor, depth_lr: torch.Tensor) -> torch.Tensor:
        if self.upsample is None:
            up = F.interpolate(depth_lr, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        else:
            up = _fit(self.upsample(depth_lr), rgb.shape[-2:])
        g = self.guidance(rgb)
        t = F.relu(self.target.head(up), inplace=True)
        for layer in self.target.layers:
            t = F.relu(layer(torch.cat([t, g], 1)), inplace=True)
        return up + self.target.tail(t)


class DnCNN(nn.Module):
    """Predicts the noise and subtracts it (residual learning)."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 8) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN depth must be >= 3, got {depth}")
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
                                    for _ in range(depth - 2)])
        self.tail = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return noisy - self.tail(self.body(F.relu(self.head(noisy), inplace=True)))
