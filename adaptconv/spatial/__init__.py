"""Spatially adaptive execution at the network level: where a network computes, block by block.

- :mod:`~adaptconv.spatial.blocks` — split / gather / scatter blocks, BlockPad, the block-wise executor;
- :mod:`~adaptconv.spatial.segblocks` — dual-resolution blocks for dense prediction (SegBlocks);
- :mod:`~adaptconv.spatial.blockcopy` — block-sparse feature propagation on video (BlockCopy);
- :mod:`~adaptconv.spatial.network` — a segmentation network whose head runs block-wise too.
"""

from .blockcopy import COPY_POLICIES, BlockCopy, CacheContext
from .blocks import (
    BlockSizeError,
    Grid,
    check_block_size,
    check_fraction,
    gather_blocks,
    merge_blocks,
    run_blockwise,
    scatter_blocks,
    split_blocks,
)
from .network import BlockSegmenter, DualResSegmenter
from .segblocks import SEG_POLICIES, BlockPolicy, DualResContext, SegBlocks

__all__ = [
    "BlockCopy",
    "BlockPolicy",
    "BlockSegmenter",
    "BlockSizeError",
    "CacheContext",
    "COPY_POLICIES",
    "DualResContext",
    "DualResSegmenter",
    "Grid",
    "SEG_POLICIES",
    "SegBlocks",
    "check_block_size",
    "check_fraction",
    "gather_blocks",
    "merge_blocks",
    "run_blockwise",
    "scatter_blocks",
    "split_blocks",
]
