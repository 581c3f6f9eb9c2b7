"""Blocks of a feature map, and a block-wise executor for conv backbones.

A B×C×H×W map is cut into a gh×gw grid of square blocks; block ``n`` of the flat grid is
``(b, i, j) = (n // (gh·gw), (n // gw) % gh, n % gw)``. The selected blocks are gathered into a batch
(N×C×s×s), run through the backbone's layers with the backbone's own weights, and scattered back.

**BlockPad.** A conv of padding p on a block needs p pixels beyond its border. Zero padding there
makes the block grid show in the output; BlockPad takes them from the neighbouring blocks instead
(resampled to the block's resolution when the neighbour is processed at another one), and pads
with the op's own value (0 for a conv, −∞ for a max-pool) only at the image border. The padded
blocks then go through the op with padding 0, so a block's output pixels are exactly the dense
network's wherever its neighbours hold the dense features: with every block selected, the
block-wise network *is* the dense one (to float round-off).

Where the neighbours come from is the job of a :class:`BlockContext`:
:class:`~adaptconv.spatial.segblocks.DualResContext` (SegBlocks: the other blocks of the same
frame, at high or low resolution) and :class:`~adaptconv.spatial.blockcopy.CacheContext`
(BlockCopy: the feature cache of the previous frame, updated with this frame's recomputed blocks).

:func:`run_blockwise` walks a backbone made of the usual parts (``nn.Sequential``, ``Conv2d``,
``BatchNorm2d``, activations, ``MaxPool2d``, timm's ``BasicBlock``/``Bottleneck``, the built-in
``SimpleCNN``, timm's ``FeatureListNet``) and applies each to every resolution group of blocks;
anything else is refused with its module path, never silently run densely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Groups = dict[str, torch.Tensor]  # resolution group ("high"/"low", or "all") -> N_g×C×s_g×s_g blocks


class BlockSizeError(ValueError):
    """A block size that does not divide the image or a stage's feature map."""


def check_fraction(value: float, what: str) -> float:
    """A fraction of blocks in (0, 1]; anything else is refused naming ``what``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: a fraction of blocks in (0, 1], got {value!r}") from None
    if not (0.0 < f <= 1.0) or math.isnan(f):
        raise ValueError(f"{what}: a fraction of blocks in (0, 1], got {value!r}")
    return f


def max_reduction(backbone: nn.Module) -> int:
    """The output stride of the backbone's deepest feature map (timm ``feature_info`` or the built-in
    list of dicts); 1 when the backbone does not say."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        return 1
    if hasattr(info, "reduction"):
        return int(max(info.reduction()))
    return int(max(f["reduction"] for f in info))


def check_block_size(
    block_size: int, reduction: int, image_hw: tuple[int, int] | None = None, dual_resolution: bool = False
) -> None:
    """Refuse a block size that does not divide every stage's feature map.

    A block of ``block_size`` input pixels is ``block_size / stride`` pixels at a stage of that
    stride, and half that when processed at low resolution: both must be whole numbers down to the
    deepest stage (``reduction``). ``image_hw``, if given, must be a whole number of blocks."""
    if int(block_size) != block_size or block_size < 1:
        raise BlockSizeError(f"block_size: a positive number of input pixels, got {block_size!r}")
    need = reduction * (2 if dual_resolution else 1)
    if block_size % need:
        where = "at low resolution (half size) " if dual_resolution else ""
        raise BlockSizeError(
            f"block_size {block_size} px does not divide the feature map at the deepest stage (stride "
            f"{reduction}) {where}— a block there would be {block_size / need:g} px; use a multiple of {need}"
        )
    if image_hw is not None:
        h, w = image_hw
        if h % block_size or w % block_size:
            raise BlockSizeError(
                f"block_size {block_size} px does not divide the input of {h}×{w} px into whole "
                f"blocks; use a size that divides both sides"
            )


@dataclass
class Grid:
    """The block grid of a batch: ``batch`` images of ``gh``×``gw`` blocks."""

    batch: int
    gh: int
    gw: int

    @property
    def n(self) -> int:
        return self.batch * self.gh * self.gw

    def coords(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(b, i, j) of flat block ids."""
        per = self.gh * self.gw
        return index // per, (index // self.gw) % self.gh, index % self.gw


def split_blocks(x: torch.Tensor, side: int) -> torch.Tensor:
    """B×C×H×W → (B·gh·gw)×C×side×side, blocks in flat grid order."""
    b, c, h, w = x.shape
    if h % side or w % side:
        raise BlockSizeError(f"split_blocks: block side {side} does not divide the map of {h}×{w}")
    gh, gw = h // side, w // side
    return x.reshape(b, c, gh, side, gw, side).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c, side, side)


def merge_blocks(blocks: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B·gh·gw)×C×s×s in flat grid order → B×C×(gh·s)×(gw·s) (inverse of :func:`split_blocks`)."""
    n, c, s, t = blocks.shape
    if n != grid.n:
        raise ValueError(f"merge_blocks: {n} blocks for a grid of {grid.batch}×{grid.gh}×{grid.gw}")
    return (
        blocks.reshape(grid.batch, grid.gh, grid.gw, c, s, t)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(grid.batch, c, grid.gh * s, grid.gw * t)
    )


def gather_blocks(x: torch.Tensor, index: torch.Tensor, side: int) -> torch.Tensor:
    """The blocks ``index`` (flat grid ids) of map ``x``: N×C×side×side (a copy)."""
    b, c, h, w = x.shape
    grid = Grid(b, h // side, w // side)
    bi, ii, jj = grid.coords(index)
    view = x.unflatten(2, (grid.gh, side)).unflatten(4, (grid.gw, side)).permute(0, 2, 4, 1, 3, 5)
    return view[bi, ii, jj]


def scatter_blocks(x: torch.Tensor, blocks: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Write ``blocks`` (N×C×s×s) at flat grid ids ``index`` of map ``x`` in place; returns ``x``."""
    b, c, h, w = x.shape
    side = blocks.shape[-1]
    grid = Grid(b, h // side, w // side)
    bi, ii, jj = grid.coords(index)
    view = x.unflatten(2, (grid.gh, side)).unflatten(4, (grid.gw, side)).permute(0, 2, 4, 1, 3, 5)
    view[bi, ii, jj] = blocks.to(x.dtype)
    return x


#: up to this many blocks a canvas copies them one slice each (fast for a few large blocks, the
#: measured case at 512 px); beyond, one vectorised gather/scatter (Python overhead per block would
#: dominate with many small blocks, e.g. a training batch of 32-px images)
LOOP_BLOCKS = 64


class Canvas:
    """A B×C×(gh·s+2p)×(gw·s+2p) map with a border of ``pad`` pixels of ``fill`` (the image border of
    the op), into which blocks are written and from which padded blocks are read.

    Up to ``LOOP_BLOCKS`` blocks are copied one slice each: on the CPU that is several times faster
    than one advanced-indexing gather over a 6-d strided view (measured at 512 px). The interior is left uninitialised: only blocks written are ever read."""

    def __init__(self, grid: Grid, channels: int, side: int, pad: int, fill: float, like: torch.Tensor) -> None:
        self.grid, self.side, self.pad = grid, side, pad
        h, w = grid.gh * side + 2 * pad, grid.gw * side + 2 * pad
        self.data = like.new_empty((grid.batch, channels, h, w))
        if pad:
            for region in (
                self.data[:, :, :pad],
                self.data[:, :, h - pad :],
                self.data[:, :, :, :pad],
                self.data[:, :, :, w - pad :],
            ):
                region.fill_(fill)

    def _coords(self, index: torch.Tensor) -> list[tuple[int, int, int]]:
        b, i, j = self.grid.coords(index)
        return list(zip(b.tolist(), i.tolist(), j.tolist()))

    def write(self, blocks: torch.Tensor, index: torch.Tensor) -> None:
        s, p = self.side, self.pad
        if index.numel() > LOOP_BLOCKS:  # many small blocks: one vectorised index_put
            g = self.grid
            inner = self.data[:, :, p : p + g.gh * s, p : p + g.gw * s]
            view = inner.unflatten(2, (g.gh, s)).unflatten(4, (g.gw, s)).permute(0, 2, 4, 1, 3, 5)
            view[g.coords(index)] = blocks
            return
        for k, (b, i, j) in enumerate(self._coords(index)):
            self.data[b, :, p + i * s : p + (i + 1) * s, p + j * s : p + (j + 1) * s].copy_(blocks[k])

    def read_padded(self, index: torch.Tensor) -> torch.Tensor:
        """Blocks ``index`` with ``pad`` pixels of their neighbours around them: N×C×(s+2p)×(s+2p)."""
        s, e = self.side, self.side + 2 * self.pad
        if index.numel() > LOOP_BLOCKS:
            windows = self.data.unfold(2, e, s).unfold(3, e, s)  # B×C×gh×gw×e×e
            return windows.permute(0, 2, 3, 1, 4, 5)[self.grid.coords(index)]
        coords = self._coords(index)
        if not coords:
            return self.data.new_empty(0, self.data.shape[1], e, e)
        return torch.stack([self.data[b, :, i * s : i * s + e, j * s : j * s + e] for b, i, j in coords])

    def interior(self) -> torch.Tensor:
        g, s, p = self.grid, self.side, self.pad
        return self.data[:, :, p : p + g.gh * s, p : p + g.gw * s]


class BlockContext:
    """Where BlockPad finds the neighbours of the blocks being run, and how the executor's leaf ops
    run on a context's features. The default ops work on :data:`Groups` (a dict of N×C×s×s block
    tensors per resolution group): subclasses implement :meth:`pad` (padded blocks of every group)
    and :meth:`assemble` (a stage's full feature map). A context may keep its features in another
    form (SegBlocks keeps one pixel per row): it then overrides the ops below as well."""

    grid: Grid
    #: multiply-adds ×2 of the convolutions run since the last reset (what was executed)
    conv_flops: int = 0

    def count(self, out: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        kh, kw = _pair(conv.kernel_size)
        self.conv_flops += 2 * out.numel() * (conv.in_channels // conv.groups) * kh * kw
        return out

    def pad(self, name: str, feats: Groups, pad: int, fill: float) -> Groups:
        raise NotImplementedError

    def assemble(self, name: str, feats: Groups) -> torch.Tensor:
        raise NotImplementedError

    # ---- the executor's leaf ops on Groups ------------------------------------------------------
    def conv(self, name: str, conv: nn.Conv2d, feats: Groups) -> Groups:
        """``conv`` on every group, BlockPad at block borders (the conv itself runs with padding 0)."""
        (kh, kw), (sh, _), (ph, _) = check_conv(name, conv)
        _check_stride(name, feats, sh)
        padded = feats if ph == 0 and kh == 1 and kw == 1 else self.pad(name, feats, ph, 0.0)
        return {
            g: self.count(F.conv2d(t, conv.weight, conv.bias, sh, 0, conv.dilation, conv.groups), conv)
            for g, t in padded.items()
        }

    def maxpool(self, name: str, pool: nn.MaxPool2d, feats: Groups) -> Groups:
        k, s, p = check_maxpool(name, pool)
        _check_stride(name, feats, s)
        padded = self.pad(name, feats, p, float("-inf")) if p else feats
        return {g: F.max_pool2d(t, k, s, 0, pool.dilation) for g, t in padded.items()}

    def pointwise(self, name: str, fn, feats: Groups) -> Groups:
        """A per-pixel module or function (BatchNorm, activation) on every group."""
        return {g: fn(t) for g, t in feats.items()}

    def add(self, a: Groups, b: Groups) -> Groups:
        return {g: a[g] + b[g] for g in a}

    def resize(self, feats: Groups, like: Groups) -> Groups:
        """Nearest upsampling of each group's blocks to the block size of ``like``'s (block-local)."""
        return {g: _up_nearest(t, like[g].shape[-1]) for g, t in feats.items()}


def _up_nearest(t: torch.Tensor, side: int) -> torch.Tensor:
    if t.shape[-1] == side:
        return t
    if not t.shape[0]:
        return t.new_empty(0, t.shape[1], side, side)
    return F.interpolate(t, scale_factor=side // t.shape[-1], mode="nearest")


# ------------------------------------------------------------------------------------------------
# The executor
# ------------------------------------------------------------------------------------------------

_POINTWISE = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Identity,
    nn.Dropout,
)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _check_stride(name: str, feats: Groups, stride: int) -> None:
    for group, t in feats.items():
        check_side(name, group, t.shape[-1], stride)


def check_side(name: str, group: str, side: int, stride: int) -> None:
    """Refuse a stride that does not divide the blocks of ``group`` (``side`` px) at layer ``name``."""
    if side % stride:
        raise BlockSizeError(
            f"{name}: stride {stride} does not divide the {group}-resolution blocks of "
            f"{side}×{side} px here; choose a block size that is a multiple of the "
            f"network's total stride (×2 for dual resolution)"
        )


def check_conv(name: str, conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, padding) of a conv the block-wise executor can run: square zero padding and
    stride; anything else is refused naming the layer."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding)
    if isinstance(conv.padding, str) or ph != pw or sh != sw or conv.padding_mode != "zeros":
        raise TypeError(
            f"{name}: block-wise execution needs square zero padding and stride, got "
            f"padding={conv.padding!r}, stride={conv.stride}, padding_mode={conv.padding_mode!r}"
        )
    return (kh, kw), (sh, sw), (ph, pw)


def check_maxpool(name: str, pool: nn.MaxPool2d) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a max-pool the block-wise executor can run."""
    k, s, p = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
    if pool.ceil_mode or p[0] != p[1] or s[0] != s[1] or k[0] != k[1]:
        raise TypeError(f"{name}: block-wise max-pool needs ceil_mode=False and square kernel/padding/stride")
    return k[0], s[0], p[0]


def _timm_block(name: str, block: nn.Module, feats: Groups, ctx: BlockContext) -> Groups:
    """timm's BasicBlock / Bottleneck: the layers of its forward, each on the blocks."""
    if getattr(block, "se", None) is not None and not isinstance(block.se, nn.Identity):
        raise TypeError(f"{name}: squeeze-excitation pools over the whole image and cannot run block-wise")
    kind = type(block).__name__
    shortcut = feats
    x = run_module(f"{name}.conv1", block.conv1, feats, ctx)
    x = run_module(f"{name}.bn1", block.bn1, x, ctx)
    if kind == "BasicBlock":
        for part in ("drop_block", "act1", "aa", "conv2", "bn2"):
            x = run_module(f"{name}.{part}", getattr(block, part), x, ctx)
    else:  # Bottleneck
        for part in ("act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3"):
            x = run_module(f"{name}.{part}", getattr(block, part), x, ctx)
    if getattr(block, "drop_path", None) is not None:
        x = run_module(f"{name}.drop_path", block.drop_path, x, ctx)
    if block.downsample is not None:
        shortcut = run_module(f"{name}.downsample", block.downsample, shortcut, ctx)
    x = ctx.add(x, shortcut)
    last = "act2" if kind == "BasicBlock" else "act3"
    return run_module(f"{name}.{last}", getattr(block, last), x, ctx)


def _simple_block(name: str, block: nn.Module, feats: Groups, ctx: BlockContext) -> Groups:
    """adaptconv.models.networks.BasicBlock."""
    y = run_module(f"{name}.conv1", block.conv1, feats, ctx)
    y = ctx.pointwise(f"{name}.relu1", F.relu, run_module(f"{name}.bn1", block.bn1, y, ctx))
    y = run_module(f"{name}.bn2", block.bn2, run_module(f"{name}.conv2", block.conv2, y, ctx), ctx)
    y = ctx.add(y, run_module(f"{name}.shortcut", block.shortcut, feats, ctx))
    return ctx.pointwise(f"{name}.relu2", F.relu, y)


def run_module(name: str, module: nn.Module, feats: Groups, ctx: BlockContext) -> Groups:
    """Apply ``module`` to every group of blocks (the dense module's function, block by block)."""
    kind = type(module).__name__
    if isinstance(module, nn.Conv2d) and type(module) is nn.Conv2d:
        return ctx.conv(name, module, feats)
    if isinstance(module, nn.MaxPool2d):
        return ctx.maxpool(name, module, feats)
    if isinstance(module, _POINTWISE):
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            raise TypeError(f"{name}: dropout in training mode is not supported block-wise")
        return ctx.pointwise(name, module, feats)
    if isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            feats = run_module(f"{name}.{child_name}" if name else child_name, child, feats, ctx)
        return feats
    if kind in ("BasicBlock", "Bottleneck") and hasattr(module, "downsample"):
        return _timm_block(name, module, feats, ctx)
    if kind == "BasicBlock" and hasattr(module, "shortcut"):
        return _simple_block(name, module, feats, ctx)
    raise TypeError(
        f"{name or 'backbone'}: block-wise execution does not know module {kind}; supported: "
        f"Conv2d, BatchNorm2d, activations, MaxPool2d, Sequential, timm BasicBlock/Bottleneck, "
        f"SimpleCNN"
    )


def backbone_parts(backbone: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, returns a feature map) in execution order, for the backbones the executor knows:
    timm's ``FeatureListNet`` (``features_only=True``), the built-in ``SimpleCNN(features_only=True)``,
    or an ``nn.Sequential`` (whose last output is the one feature map)."""
    kind = type(backbone).__name__
    if kind == "FeatureListNet":
        outputs = set(backbone.return_layers)
        return [(n, m, n in outputs) for n, m in backbone.items()]
    if kind == "SimpleCNN":
        if not backbone.features_only:
            raise TypeError("SimpleCNN: build it with features_only=True to run it block-wise")
        return [("stem", backbone.stem, False)] + [(f"stages.{i}", s, True) for i, s in enumerate(backbone.stages)]
    if isinstance(backbone, nn.Sequential):
        parts = list(backbone.named_children())
        return [(n, m, i == len(parts) - 1) for i, (n, m) in enumerate(parts)]
    raise TypeError(
        f"block-wise execution: unknown backbone {kind}; use a timm model with features_only=True, "
        f"the built-in SimpleCNN (features_only) or an nn.Sequential"
    )


def run_blockwise(backbone: nn.Module, feats: Groups, ctx: BlockContext) -> list[tuple[str, Groups]]:
    """Run the backbone on the blocks of ``feats``; the (name, blocks) of each feature map it returns
    (still as blocks: ``ctx.assemble(name, blocks)`` makes a full map of one)."""
    outputs = []
    for name, module, is_output in backbone_parts(backbone):
        feats = run_module(name, module, feats, ctx)
        if is_output:
            outputs.append((name, feats))
    return outputs
