"""Block reuse on video (BlockCopy): an image segmentation network trained on frames, then run on
test videos by :class:`~adaptconv.spatial.blockcopy.BlockCopy` with its policy trained online.

Data (registered data sets of the ``video`` sample format, :mod:`adaptconv.data.video`):
``synthetic_video`` (built in: seeded moving objects over a textured background, with labels) or
``frames`` (a folder ``<data_root>/frames`` of one video, optional ``<data_root>/masks``; without
masks the network cannot be trained here: give ``pretrained`` weights and ``steps: 0``; the
accuracy against the dense network is still measured, mIoU is not).

Training: the image network densely, on single frames with their labels (the model in train mode
runs every frame densely). Evaluation: every test video through BlockCopy (a fresh policy at each
evaluation, learning online over the test videos in order, from the network's own outputs) and
through the dense network. Metrics: ``miou`` (BlockCopy's output against the labels), ``dense_agreement``
(per frame, the fraction of pixels where BlockCopy's class equals the dense network's, averaged over
frames), ``dense_miou`` (the dense network's mIoU), ``block_fraction`` (blocks recomputed per frame,
the first frame of each video, always in full, included), ``gflops`` (convolution GFLOPs executed per
frame) and ``flops_ratio`` (to the dense network's).

Options beyond the block executor's: ``class_weights`` (``none`` | ``sqrt_inverse``, the segmentation
task's weights from the training frames), ``texture_contrast`` (synthetic video: the background
texture's contrast, 1 as drawn). Trivial baselines (mIoU on the test videos' labels): ``majority``
(the training frames' most frequent class everywhere) and ``chance``; none for an unlabelled folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import DatasetError, get_dataset
from ..data.video import SyntheticVideo, VideoFrames
from ..models.backbones import BUILTIN_BACKBONES
from ..schema import parse
from ..spatial import COPY_POLICIES, BlockCopy, BlockSegmenter
from .base import Task
from .segmentation import CLASS_WEIGHTS, IGNORE, class_counts, confusion_matrix, segmentation_scores
from .spatial_segmentation import build_feature_backbone, spatial_problems


@dataclass
class SpatialVideoOptions:
    size: int = 64  # synthetic video: frame side
    frames: int = 8  # synthetic video: frames per video
    n_train: int = 48  # synthetic videos for training the image network
    n_test: int = 8
    max_objects: int = 3
    texture_contrast: float = 1.0  # synthetic video: background texture contrast (0: flat, 1: as drawn)
    block_size: int = 16
    target: float = 0.5
    policy: str = "learned"
    penalty: float = 10.0
    policy_lr: float = 0.01
    width: int = 32
    class_weights: str = "none"  # "none" | "sqrt_inverse": cross-entropy weights from the training masks
    max_frames: int | None = None  # frames folder: use the first N


class VideoSegmenter(nn.Module):
    """Train mode: the image network on every frame (B×3×H×W or a clip B×T×3×H×W). Eval mode: a clip
    through BlockCopy (a frame alone goes through the dense network)."""

    def __init__(self, net: BlockSegmenter, **blockcopy_options) -> None:
        super().__init__()
        self.net = net
        self.blockcopy = BlockCopy(net, **blockcopy_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self.net(x)
        if self.training:
            return torch.stack([self.net(x[:, t]) for t in range(x.shape[1])], 1)
        return self.blockcopy(x)


class SpatialVideo(Task):
    name = "spatial_video"
    metrics = ("miou", "dense_agreement", "dense_miou", "block_fraction", "gflops", "flops_ratio")
    higher_is_better = {
        "miou": True,
        "dense_agreement": True,
        "dense_miou": True,
        "block_fraction": False,
        "gflops": False,
        "flops_ratio": False,
    }
    Options = SpatialVideoOptions
    datasets = ("synthetic_video", "frames")
    default_dataset = "synthetic_video"
    backbones = BUILTIN_BACKBONES
    accepts_timm = True
    default_steps = 300

    @classmethod
    def check_config(cls, config) -> list[str]:
        problems = super().check_config(config)
        if config.op != "conv":
            problems.append(
                f"op: the block-sparse network runs nn.Conv2d only; task {cls.name!r} takes op: conv, got {config.op!r}"
            )
        if not problems:
            o = parse(cls.Options, config.task_options)
            backbone = config.backbone or cls.backbones[0]
            problems += [f"task_options.{p}" for p in spatial_problems(o, backbone, False, COPY_POLICIES)]
            if not 0 <= o.texture_contrast <= 1:
                problems.append(f"task_options.texture_contrast: in [0, 1], got {o.texture_contrast}")
            if o.class_weights not in CLASS_WEIGHTS:
                problems.append(
                    f"task_options.class_weights: one of {', '.join(CLASS_WEIGHTS)}, got {o.class_weights!r}"
                )
        return problems

    def build_data(self) -> tuple[Dataset, Dataset]:
        o, cfg = self.options, self.config
        if cfg.dataset == "synthetic_video":
            scene = dict(size=o.size, frames=o.frames, max_objects=o.max_objects, texture_contrast=o.texture_contrast)
            train = get_dataset(cfg.dataset, "video", "train", n=o.n_train, seed=cfg.seed, **scene)
            test = get_dataset(cfg.dataset, "video", "test", n=o.n_test, seed=cfg.seed + 10_000, **scene)
        else:
            test = get_dataset(cfg.dataset, "video", "test", root=cfg.data_root, max_frames=o.max_frames)
            if not test.labelled and (cfg.steps or cfg.epochs):
                raise DatasetError(
                    f"dataset 'frames': {cfg.data_root}/masks is missing, so the network cannot be "
                    f"trained on this video; give pretrained weights and steps: 0"
                )
            train = test
        self.num_classes = train.num_classes
        train = VideoFrames(train)
        labelled = cfg.dataset == "synthetic_video" or test.labelled
        self._train_counts = class_counts(train, self.num_classes) if labelled else None
        self.class_weight = None
        if o.class_weights == "sqrt_inverse" and labelled:
            freq = self._train_counts.double() / self._train_counts.sum()
            # the segmentation task's weights: 1/√freq, normalised to a mean of 1 over the pixels
            weight = torch.where(freq > 0, freq.clamp(min=1e-12).rsqrt(), torch.zeros_like(freq))
            self.class_weight = (weight / (weight * freq).sum()).float().to(self.device)
        return train, test

    def build_network(self, train_set: Dataset) -> nn.Module:
        o = self.options
        backbone, channels = build_feature_backbone(self.config.backbone)
        net = BlockSegmenter(backbone, channels, self.num_classes, o.width)
        return VideoSegmenter(
            net, block_size=o.block_size, target=o.target, policy=o.policy, penalty=o.penalty, lr=o.policy_lr
        )

    def build_model(self, train_set: Dataset):
        from ..models.backbones import load_pretrained

        model = self.build_network(train_set)
        summary = {"layers": 0, "params_before": 0, "params_after": 0, "names": [], "guide": "none"}
        if self.config.pretrained:
            summary["pretrained"] = load_pretrained(model.net, self.config.pretrained)
        return model.to(self.device), summary

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return F.cross_entropy(model(batch["image"]), batch["mask"], weight=self.class_weight, ignore_index=IGNORE)

    @torch.no_grad()
    def baselines(self, test_set: Dataset) -> dict[str, dict[str, float]]:
        """``majority``: the training frames' most frequent class at every pixel; ``chance``: each pixel's
        class drawn from the training frames' class frequencies (the expected confusion matrix). Scored
        on the test videos' labels (mIoU); none without labels on either side."""
        if self._train_counts is None:
            return {}
        test = class_counts(VideoFrames(test_set), self.num_classes).double()
        train = self._train_counts.double()
        majority = torch.zeros(self.num_classes, self.num_classes, dtype=torch.double)
        majority[:, int(train.argmax())] = test
        chance = test[:, None] * (train / train.sum())[None, :]
        return {
            name: {"miou": segmentation_scores(conf)["miou"]}
            for name, conf in (("majority", majority), ("chance", chance))
        }

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        model.eval()
        o = self.options
        # a fresh BlockCopy (fresh online policy) per evaluation, on the trained image network; it stays
        # in the model, so the measurements after the final evaluation use the policy learned online
        torch.manual_seed(self.config.seed)
        bc = model.blockcopy = BlockCopy(
            model.net, block_size=o.block_size, target=o.target, policy=o.policy, penalty=o.penalty, lr=o.policy_lr
        ).to(self.device)
        k = self.num_classes
        conf = torch.zeros(k, k, dtype=torch.long, device=self.device)
        conf_dense = torch.zeros_like(conf)
        agree, fractions, flops, dense_flops = [], [], [], None
        for video in DataLoader(test_set, batch_size=1, shuffle=False):
            frames, masks = video["frames"].to(self.device), video["masks"].to(self.device)
            bc.reset()
            for t in range(frames.shape[1]):
                pred = bc.step(frames[:, t]).argmax(1)
                fractions.append(bc.last_fraction)
                flops.append(bc.last_flops)
                if t == 0:
                    dense_flops = bc.last_flops  # the first frame runs every block
                dense = model.net(frames[:, t]).argmax(1)
                agree.append(float((pred == dense).float().mean()))
                conf += confusion_matrix(pred, masks[:, t], k)
                conf_dense += confusion_matrix(dense, masks[:, t], k)
        labelled = int(conf.sum()) > 0
        nan = float("nan")
        return {
            "miou": segmentation_scores(conf)["miou"] if labelled else nan,
            "dense_agreement": 100.0 * sum(agree) / len(agree),
            "dense_miou": segmentation_scores(conf_dense)["miou"] if labelled else nan,
            "block_fraction": sum(fractions) / len(fractions),
            "gflops": sum(flops) / len(flops) / 1e9,
            "flops_ratio": sum(flops) / len(flops) / dense_flops,
        }

    def example_inputs(self, batch_size: int, resolution: int | None = None):
        """A clip of the task's own synthetic video (real motion, so the policy's choices are typical),
        ``batch_size`` videos of ``frames`` frames, at ``resolution`` if given."""
        o = self.options
        size = resolution or o.size
        videos = SyntheticVideo(
            batch_size,
            size,
            o.frames,
            seed=self.config.seed + 20_000,
            split="val",
            max_objects=o.max_objects,
            texture_contrast=o.texture_contrast,
        )
        return (torch.stack([videos[i]["frames"] for i in range(batch_size)]).to(self.device),)
