"""Blocks: split/merge/gather/scatter, BlockPad at block borders, the errors for bad block sizes and
fractions."""

import math

import pytest
import torch
from torch import nn

from adaptconv.spatial import (
    BlockSizeError,
    Grid,
    SegBlocks,
    check_block_size,
    check_fraction,
    gather_blocks,
    merge_blocks,
    scatter_blocks,
    split_blocks,
)
from adaptconv.spatial.blocks import BlockContext, run_blockwise


def test_split_merge_gather_scatter_round_trip():
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    blocks = split_blocks(x, 4)
    assert blocks.shape == (2 * 2 * 3, 3, 4, 4)
    # block n = (b, i, j) in flat grid order
    assert torch.equal(blocks[1 * 6 + 1 * 3 + 2], x[1, :, 4:8, 8:12])
    assert torch.equal(merge_blocks(blocks, Grid(2, 2, 3)), x)
    index = torch.tensor([0, 5, 7])
    assert torch.equal(gather_blocks(x, index, 4), blocks[index])
    y = torch.zeros_like(x)
    scatter_blocks(y, blocks[index], index)
    assert torch.equal(split_blocks(y, 4)[index], blocks[index])
    others = torch.ones(12, dtype=torch.bool)
    others[index] = False
    assert not split_blocks(y, 4)[others].any()  # nothing written outside the blocks scattered


class _ZeroPadContext(BlockContext):
    """Each block padded with zeros, no neighbours: what BlockPad replaces (the grid shows)."""

    def __init__(self, grid):
        self.grid = grid

    def pad(self, name, feats, pad, fill):
        return {g: torch.nn.functional.pad(t, (pad,) * 4, value=fill) for g, t in feats.items()}

    def assemble(self, name, feats):
        return merge_blocks(feats["high"], self.grid)


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()


def test_blockpad_hides_the_block_grid_at_both_resolutions():
    """A constant image through a conv net: the dense output is constant away from the image border.
    With BlockPad it stays constant across every block border, even where a high-resolution block
    meets a low-resolution one; padding each block with zeros makes the grid show."""
    net = _conv_net()
    image = torch.full((1, 3, 32, 32), 0.7)
    with torch.no_grad():
        dense = net(image)
        centre = dense[0, :, 16, 16]
        high = torch.zeros(1, 4, 4, dtype=torch.bool)
        high[0, 1, 1] = high[0, 2, 3] = high[0, 0, 2] = True
        blockwise = SegBlocks(net, block_size=8, policy="all").eval()(image, high=high)[0]
        inner = blockwise[0, :, 4:-4, 4:-4]  # away from the image border (low blocks: 2 px per pixel)
        assert torch.allclose(inner, centre[:, None, None].expand_as(inner), atol=1e-6)
        grid = Grid(1, 4, 4)
        naive = run_blockwise(net, {"high": split_blocks(image, 8)}, _ZeroPadContext(grid))
        seams = _ZeroPadContext(grid).assemble("", naive[0][1])[0, :, 4:-4, 4:-4]
        assert (seams - centre[:, None, None]).abs().max() > 1e-2


def test_check_fraction_refuses_outside_0_1():
    assert check_fraction(1, "t") == 1.0 and check_fraction(0.25, "t") == 0.25
    for bad in (0, -0.1, 1.01, math.nan, "half"):
        with pytest.raises(ValueError, match=r"target.*\(0, 1\]"):
            check_fraction(bad, "target")
    net = _conv_net()
    with pytest.raises(ValueError, match="target"):
        SegBlocks(net, block_size=8, target=0.0)


def test_block_size_that_does_not_divide_a_stage_is_refused():
    with pytest.raises(BlockSizeError, match=r"block_size 96 px.*stride 32.*multiple of 64"):
        check_block_size(96, 32, dual_resolution=True)
    check_block_size(96, 32)  # single resolution: 96 / 32 = 3 px at the deepest stage
    with pytest.raises(BlockSizeError, match=r"block_size 64 px does not divide the input of 96×128"):
        check_block_size(64, 32, (96, 128))
    # a backbone that does not declare its strides: refused where the stride meets the block
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1))
    with pytest.raises(BlockSizeError, match=r"^1: stride 2 does not divide the low-resolution blocks of 3×3"):
        SegBlocks(net, block_size=12, policy="all")(torch.rand(1, 3, 24, 24), high=torch.zeros(1, 2, 2, dtype=bool))


def test_unknown_module_is_refused_with_its_path():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Upsample(scale_factor=2))
    with pytest.raises(TypeError, match=r"^1: block-wise execution does not know module Upsample"):
        SegBlocks(net, block_size=8, policy="all")(torch.rand(1, 3, 16, 16))


def test_vectorised_and_per_block_copies_agree(monkeypatch):
    """Canvases copy up to LOOP_BLOCKS blocks one slice each, more with one indexed gather/scatter:
    both give the dense network."""
    import adaptconv.spatial.blocks as blocks

    net = _conv_net()
    image = torch.rand(2, 3, 32, 32)
    high = torch.rand(2, 4, 4) < 0.5
    with torch.no_grad():
        dense = net(image)
        outs = []
        for limit in (0, 1000):
            monkeypatch.setattr(blocks, "LOOP_BLOCKS", limit)
            outs.append(SegBlocks(net, block_size=8, policy="all").eval()(image, high=high)[0])
            torch.testing.assert_close(SegBlocks(net, block_size=8, policy="all").eval()(image)[0], dense)
    torch.testing.assert_close(outs[0], outs[1])
