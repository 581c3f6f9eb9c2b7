"""Semantic segmentation (mIoU, pixel accuracy): a feature backbone with swapped layers + an FCN decoder.

Task options for the decoder: ``upsampler`` (``bilinear`` default, or any registered operator of kind
upsampler, e.g. ``carafe``: the decoder's feature upsampling) and ``crf`` (``none`` default, or any
registered operator of kind refiner, e.g. ``paccrf``: a refinement head on the logits, guided by the
input image, with ``crf_iters`` mean-field iterations for a refiner that takes ``num_iters``).
Plugins' upsamplers and refiners (``adaptconv.ops`` entry points) are taken by name alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import DatasetError, SceneConfig, get_dataset
from ..models.backbones import BUILTIN_BACKBONES, build_backbone
from ..models.networks import (
    BILINEAR,
    NO_REFINER,
    FCNSegmenter,
    build_refiner,
    offered_settings,
    refiner_choices,
    upsampler_choices,
)
from ..schema import did_you_mean
from .base import Task

IGNORE = 255
CLASS_WEIGHTS = ("none", "sqrt_inverse")
CRF_ITERS = 5  # crf_iters' default
#: what ``task_options.scene`` may set of the synthetic scenes (:class:`~adaptconv.data.synthetic.SceneConfig`)
SCENE_OPTIONS = ("max_distractors", "real_textures", "supersample", "main_area", "distractor_area", "texture_contrast")


@dataclass
class SegmentationOptions:
    decoder_width: int = 64
    n_train: int = 1000  # synthetic scenes only
    n_test: int = 200
    size: int = 64  # synthetic scenes: image side; VOC, Cityscapes: crop side (shorter side resized to it)
    aux_weight: float = 0.0  # reserved for deep supervision; 0 = off
    upsampler: str = BILINEAR  # "bilinear" | an upsampler operator ("carafe", plugins): the feature upsampling
    crf: str = NO_REFINER  # "none" | a refiner operator ("paccrf", plugins): a head on the logits, guided by the image
    crf_iters: int = CRF_ITERS  # mean-field iterations of the CRF head (a refiner's num_iters)
    class_weights: str = "none"  # "none" | "sqrt_inverse": cross-entropy weights from the training masks
    # synthetic scenes only: options of the scene generator (SCENE_OPTIONS), e.g. {texture_contrast: 0.25}
    scene: dict = field(default_factory=dict)

    def validate(self) -> list[str]:
        problems = []
        upsamplers, refiners = upsampler_choices(), refiner_choices()
        if self.upsampler not in upsamplers:
            problems.append(
                f"upsampler: one of {', '.join(upsamplers)}, got {self.upsampler!r}"
                f"{did_you_mean(self.upsampler, upsamplers)}"
            )
        if self.crf not in refiners:
            problems.append(f"crf: one of {', '.join(refiners)}, got {self.crf!r}{did_you_mean(self.crf, refiners)}")
        if self.crf_iters < 0:
            problems.append(f"crf_iters: must be >= 0, got {self.crf_iters}")
        elif self.crf in refiners and self.crf != NO_REFINER and self.crf_iters != CRF_ITERS:
            from ..ops import get_op

            if "num_iters" not in offered_settings(get_op(self.crf), {"num_iters": self.crf_iters}):
                problems.append(
                    f"crf_iters: refiner {self.crf!r} takes no num_iters; leave crf_iters at "
                    f"{CRF_ITERS}, got {self.crf_iters}"
                )
        if self.class_weights not in CLASS_WEIGHTS:
            problems.append(f"class_weights: one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weights!r}")
        if not isinstance(self.scene, dict):
            problems.append(
                f"scene: a mapping of scene-generator options ({', '.join(SCENE_OPTIONS)}), got {self.scene!r}"
            )
        else:
            unknown = sorted(set(self.scene) - set(SCENE_OPTIONS))
            if unknown:
                problems.append(
                    f"scene: unknown option(s) {', '.join(map(str, unknown))}"
                    f"{did_you_mean(str(unknown[0]), SCENE_OPTIONS)}; choices: {', '.join(SCENE_OPTIONS)}"
                )
            else:
                try:
                    SceneConfig(**self.scene)
                except (DatasetError, TypeError) as exc:
                    problems.append(f"scene: {exc}")
        return problems


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    keep = target != IGNORE
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(conf: torch.Tensor) -> dict[str, float]:
    """mIoU over classes present in the ground truth or the prediction; pixel accuracy."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = tp[present] / union[present]
    return {"miou": 100.0 * iou.mean().item(), "pixel_acc": 100.0 * (tp.sum() / conf.sum().clamp(min=1)).item()}


def class_counts(dataset: Dataset, num_classes: int, batch_size: int = 256) -> torch.Tensor:
    """Pixels of each class over the masks of ``dataset`` (ignored pixels left out): int64, num_classes."""
    counts = torch.zeros(num_classes, dtype=torch.long)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        mask = batch["mask"]
        mask = mask[mask != IGNORE]
        if mask.numel() and int(mask.max()) >= num_classes:
            raise ValueError(
                f"segmentation: a training mask holds class {int(mask.max())}, but the data set "
                f"has {num_classes} classes (0..{num_classes - 1}, {IGNORE} = ignore)"
            )
        counts += torch.bincount(mask, minlength=num_classes)
    return counts


class Segmentation(Task):
    name = "segmentation"
    metrics = ("miou", "pixel_acc")
    higher_is_better = {"miou": True, "pixel_acc": True}
    Options = SegmentationOptions
    datasets = ("synthetic", "voc2012", "cityscapes")
    default_dataset = "synthetic"
    backbones = BUILTIN_BACKBONES
    accepts_timm = True
    default_swap = {"pattern": "backbone.*", "exclude": "backbone.stem.*"}
    default_guide = "self"
    default_steps = 300

    # see Task.late_options
    late_options = {
        "upsampler": BILINEAR,
        "crf": NO_REFINER,
        "crf_iters": CRF_ITERS,
        "class_weights": "none",
        "scene": {},
    }

    def _dataset(self, split: str) -> Dataset:
        o, cfg = self.options, self.config
        if cfg.dataset == "synthetic":
            n, seed = (o.n_train, cfg.seed) if split == "train" else (o.n_test, cfg.seed + 10_000)
            return get_dataset("synthetic", "segmentation", split, n=n, size=o.size, seed=seed, **o.scene)
        if o.scene:
            raise ValueError(f"segmentation: task_options.scene sets the synthetic scenes, not {cfg.dataset!r}")
        return get_dataset(cfg.dataset, "segmentation", split, root=cfg.data_root, size=o.size)

    def build_data(self) -> tuple[Dataset, Dataset]:
        train, test = self._dataset("train"), self._dataset("test" if self.config.dataset == "synthetic" else "val")
        self.num_classes = train.num_classes
        self._train_set = train
        self._train_counts: torch.Tensor | None = None
        self.class_weight = None
        if self.options.class_weights == "sqrt_inverse":
            freq = self.train_class_counts().double()
            freq = freq / freq.sum()
            # classes absent from the training masks get no weight (they contribute no loss anyway)
            weight = torch.where(freq > 0, freq.clamp(min=1e-12).rsqrt(), torch.zeros_like(freq))
            self.class_weight = (weight / (weight * freq).sum()).float().to(self.device)
        return train, test

    def train_class_counts(self) -> torch.Tensor:
        """Pixels of each class in the training masks (counted once, on first use)."""
        if self._train_counts is None:
            self._train_counts = class_counts(self._train_set, self.num_classes)
            if int(self._train_counts.sum()) == 0:
                raise ValueError("segmentation: the training masks hold no labelled pixel")
        return self._train_counts

    def build_network(self, train_set: Dataset) -> nn.Module:
        o = self.options
        backbone, channels = build_backbone(self.config.backbone, 3, features_only=True)
        # the refiner first, as before upsamplers were looked up by name (the same random draws)
        refiner = None if o.crf == NO_REFINER else build_refiner(o.crf, self.num_classes, 3, num_iters=o.crf_iters)
        return FCNSegmenter(
            backbone,
            channels,
            self.num_classes,
            o.decoder_width,
            upsampler=o.upsampler,
            reductions=_reductions(backbone) if o.upsampler != BILINEAR else None,
            refiner=refiner,
        )

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return F.cross_entropy(model(batch["image"]), batch["mask"], weight=self.class_weight, ignore_index=IGNORE)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        model.eval()
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)
        batch_size = self.config.eval_batch_size or (64 if self.config.dataset == "synthetic" else 1)
        for batch in DataLoader(test_set, batch_size=batch_size, shuffle=False):
            batch = self.to_device(batch)
            pred = model(batch["image"]).argmax(1)
            conf += confusion_matrix(pred, batch["mask"], self.num_classes)
        return segmentation_scores(conf)

    @torch.no_grad()
    def baselines(self, test_set: Dataset) -> dict[str, dict[str, float]]:
        """``majority``: the training masks' most frequent class at every pixel; ``chance``: each pixel's
        class drawn from the training masks' class frequencies (the expected confusion matrix, so no
        random draw is involved). Both scored on ``test_set`` with the task's metrics."""
        train = self.train_class_counts().double()
        prior = train / train.sum()
        test = class_counts(test_set, self.num_classes).double()  # ground-truth pixels per class
        majority = torch.zeros(self.num_classes, self.num_classes, dtype=torch.double)
        majority[:, int(train.argmax())] = test
        chance = test[:, None] * prior[None, :]  # E[conf[t, p]] = n_t · P(p)
        return {"majority": segmentation_scores(majority), "chance": segmentation_scores(chance)}

    def example_inputs(self, batch_size: int, resolution: int | None = None):
        size = resolution or self.options.size
        return (torch.rand(batch_size, 3, size, size, device=self.device),)


def _reductions(backbone: nn.Module) -> list[int]:
    """Output stride of each feature map (timm's ``feature_info`` or the built-in list of dicts)."""
    info = backbone.feature_info
    if hasattr(info, "reduction"):
        return [int(r) for r in info.reduction()]
    return [int(f["reduction"]) for f in info]
