"""A segmentation network whose head runs block-wise as well as its backbone.

:class:`BlockSegmenter`: a feature backbone, then per feature map a 1×1 projection, nearest
upsampling by the integer factor to the finest map (block-local, unlike bilinear, so a block's head
output depends on its own features and BlockPad halo only), their sum, a 3×3 conv-BN-ReLU, a 1×1
classifier, and bilinear upsampling of the logits to the image. ``forward(image)`` runs it densely;
:meth:`head_blocks` runs the head on blocks (equal to the dense head when every block is run), so
the SegBlocks and BlockCopy executors compute only the blocks they select, head included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.networks import conv_bn_relu
from .blocks import BlockContext, Groups, run_module


class BlockSegmenter(nn.Module):
    def __init__(self, backbone: nn.Module, channels: list[int], num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_info = getattr(backbone, "feature_info", None)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = conv_bn_relu(width, width)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.num_classes = num_classes

    def head(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-1]
        if any(f.shape[-1] and size % f.shape[-1] for f in feats):
            raise ValueError(
                f"BlockSegmenter: feature sizes {[f.shape[-1] for f in feats]} are not integer fractions of the finest"
            )
        y = sum(
            F.interpolate(lat(f), scale_factor=size // f.shape[-1], mode="nearest") if f.shape[-1] != size else lat(f)
            for lat, f in zip(self.lateral, feats)
        )
        return self.classifier(self.fuse(y))

    def head_blocks(self, outs: list[tuple[str, Groups]], ctx: BlockContext) -> Groups:
        """The head on blocks: ``outs`` as returned by :func:`~adaptconv.spatial.blocks.run_blockwise`."""
        finest = outs[0][1]
        y: Groups | None = None
        for i, (lat, (_, feats)) in enumerate(zip(self.lateral, outs)):
            z = ctx.resize(run_module(f"lateral.{i}", lat, feats, ctx), finest)
            y = z if y is None else ctx.add(y, z)
        y = run_module("fuse", self.fuse, y, ctx)
        return run_module("classifier", self.classifier, y, ctx)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(image))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


class DualResSegmenter(nn.Module):
    """:class:`BlockSegmenter` run by SegBlocks: ``forward(image, high=None)`` → logits at image size."""

    def __init__(self, net: BlockSegmenter, **segblocks_options) -> None:
        super().__init__()
        from .segblocks import SegBlocks

        self.net = net
        self.segblocks = SegBlocks(net.backbone, **segblocks_options)

    def forward(self, image: torch.Tensor, high: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and high is None and self.segblocks.policy_name == "all":
            # every block high is the dense network (tested equal): train it densely, which is faster
            self.segblocks._fraction = 1.0
            return self.net(image)
        ctx, outs = self.segblocks(image, high, as_blocks=True)
        logits = ctx.assemble("logits", self.net.head_blocks(outs, ctx))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
