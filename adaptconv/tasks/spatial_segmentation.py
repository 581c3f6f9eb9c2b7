"""Dual-resolution segmentation (SegBlocks): the segmentation task's data (built-in ``synthetic``
scenes, ``voc2012`` or ``cityscapes`` from disk, crops of ``size`` px), a
:class:`~adaptconv.spatial.network.BlockSegmenter` run by :class:`~adaptconv.spatial.segblocks.SegBlocks`.

Task options besides the segmentation ones: ``block_size`` (input px), ``target`` (fraction of
high-resolution blocks, in (0, 1]), ``policy`` (learned | random | heuristic | all), ``penalty``
(weight of the complexity penalty), ``width`` (head width). The policy's REINFORCE loss is the
network's ``auxiliary_loss`` (the runner adds it), and the executed fraction of high-resolution
blocks is recorded as ``active_fraction`` by the runner. Metrics: mIoU, pixel accuracy, the fraction
of high-resolution blocks, the convolution GFLOPs executed per image and their ratio to the dense
network's. The network runs only ``nn.Conv2d`` block-wise, so ``op`` must be ``conv``.

At evaluation the learned policy runs the ``round(target · blocks)`` blocks it scores highest at high
resolution (a fixed budget, so ``high_fraction`` is the target); ``random`` and ``heuristic`` pick the
same number. With ``policy: all`` the network trains densely (the same function, faster) and is
evaluated block-wise. Trivial baselines (the segmentation task's): ``majority`` (the training masks'
most frequent class everywhere) and ``chance``, scored with mIoU and pixel accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..spatial import SEG_POLICIES, BlockSegmenter, DualResSegmenter, check_block_size, check_fraction
from .segmentation import IGNORE, Segmentation, SegmentationOptions, confusion_matrix, segmentation_scores


def build_feature_backbone(name: str) -> tuple[nn.Module, list[int]]:
    """A features-only backbone whose maps start at stride 4 for timm models (the stride-2 map of a
    ResNet would make the head cost as much as the backbone), all stages of the built-in SimpleCNN."""
    from ..models.backbones import build_backbone

    if name in ("simplecnn", "simplecnn-s"):
        return build_backbone(name, 3, features_only=True)
    import timm

    model = timm.create_model(name, features_only=True, pretrained=False)
    n = len(model.feature_info.channels())
    if n > 4:
        model = timm.create_model(name, features_only=True, pretrained=False, out_indices=tuple(range(n - 4, n)))
    return model, list(model.feature_info.channels())


def backbone_reduction(name: str) -> int:
    """The deepest stride of the backbone: 4 for the built-in SimpleCNN, else timm's (without
    building the model when timm can say it from its default config)."""
    if name in ("simplecnn", "simplecnn-s"):
        return 4
    model, _ = build_feature_backbone(name)
    return int(max(model.feature_info.reduction()))


def spatial_problems(o, backbone: str | None, dual_resolution: bool, policies) -> list[str]:
    problems = []
    if o.policy not in policies:
        problems.append(f"policy: one of {', '.join(policies)}, got {o.policy!r}")
    try:
        check_fraction(o.target, "target")
    except ValueError as exc:
        problems.append(str(exc))
    if backbone is not None:
        try:
            check_block_size(o.block_size, backbone_reduction(backbone), (o.size, o.size), dual_resolution)
        except ValueError as exc:
            problems.append(f"block_size: {exc}")
    if o.penalty < 0:
        problems.append(f"penalty: must be >= 0, got {o.penalty}")
    return problems


@dataclass
class SpatialSegmentationOptions(SegmentationOptions):
    block_size: int = 16
    target: float = 0.5
    policy: str = "learned"
    penalty: float = 10.0
    width: int = 32


class SpatialSegmentation(Segmentation):
    name = "spatial_segmentation"
    metrics = ("miou", "pixel_acc", "high_fraction", "gflops", "flops_ratio")
    higher_is_better = {"miou": True, "pixel_acc": True, "high_fraction": False, "gflops": False, "flops_ratio": False}
    Options = SpatialSegmentationOptions
    default_swap: dict = {}
    late_options: dict = {}

    @classmethod
    def check_config(cls, config) -> list[str]:
        problems = super().check_config(config)
        if config.op != "conv":
            problems.append(
                f"op: the block-wise network runs nn.Conv2d only; task {cls.name!r} takes op: conv, got {config.op!r}"
            )
        if not problems:
            from ..schema import parse

            o = parse(cls.Options, config.task_options)
            if o.upsampler != "bilinear" or o.crf != "none":
                problems.append("task_options: the block-wise head has no upsampler/crf options")
            backbone = config.backbone or cls.backbones[0]
            problems += [f"task_options.{p}" for p in spatial_problems(o, backbone, True, SEG_POLICIES)]
        return problems

    def build_network(self, train_set: Dataset) -> nn.Module:
        o = self.options
        backbone, channels = build_feature_backbone(self.config.backbone)
        net = BlockSegmenter(backbone, channels, self.num_classes, o.width)
        return DualResSegmenter(net, block_size=o.block_size, target=o.target, policy=o.policy, penalty=o.penalty)

    def build_model(self, train_set: Dataset):
        """No operator is swapped in: the block-wise executor runs the network's own convolutions."""
        from ..models.backbones import load_pretrained

        model = self.build_network(train_set)
        summary = {"layers": 0, "params_before": 0, "params_after": 0, "names": [], "guide": "none"}
        if self.config.pretrained:
            summary["pretrained"] = load_pretrained(model.net, self.config.pretrained)
        return model.to(self.device), summary

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        logits = model(batch["image"])
        per_pixel = F.cross_entropy(
            logits, batch["mask"], weight=self.class_weight, ignore_index=IGNORE, reduction="none"
        )
        valid = (batch["mask"] != IGNORE).float()
        sb = model.segblocks
        grid = (logits.shape[-2] // sb.block_size, logits.shape[-1] // sb.block_size)
        block_loss = F.adaptive_avg_pool2d(per_pixel[:, None], grid)[:, 0] / F.adaptive_avg_pool2d(
            valid[:, None], grid
        )[:, 0].clamp(min=1e-6)
        sb.reinforce(block_loss)  # the policy's REINFORCE loss, added by the runner (auxiliary_loss)
        return per_pixel.sum() / valid.sum().clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test_set: Dataset) -> dict[str, float]:
        model.eval()
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)
        batch_size = self.config.eval_batch_size or (64 if self.config.dataset == "synthetic" else 1)
        flops = dense = high = images = 0
        for batch in DataLoader(test_set, batch_size=batch_size, shuffle=False):
            batch = self.to_device(batch)
            image = batch["image"]
            pred = model(image).argmax(1)
            ctx = model.segblocks.context
            flops += ctx.conv_flops
            high += float(ctx.index["high"].numel())
            images += image.shape[0]
            conf += confusion_matrix(pred, batch["mask"], self.num_classes)
            if not dense:  # the dense network's convolution FLOPs per image (same for every image); not
                # through __call__, so the runner's active-fraction hook does not count this forward
                every = torch.ones(1, ctx.grid.gh, ctx.grid.gw, dtype=torch.bool, device=image.device)
                dense_ctx, outs = model.segblocks.forward_blocks(image[:1], every)
                model.net.head_blocks(outs, dense_ctx)
                dense = dense_ctx.conv_flops
            grid = ctx.grid
        n_blocks = images * grid.gh * grid.gw
        return {
            **segmentation_scores(conf),
            "high_fraction": high / n_blocks,
            "gflops": flops / images / 1e9,
            "flops_ratio": flops / images / dense,
        }
