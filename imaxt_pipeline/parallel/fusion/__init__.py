"""Dask layer of fusion: lazy tasks over the output blocks of a mosaic plane.

Public API: :func:`fuse_blocks` (lazy tasks for every block of a plane), :func:`fuse_block_chain` (the kernel
each task runs: fuse a row's consecutive blocks in turn, reading shared tiles once, and write their pyramid
levels), :func:`fuse_block` (one block), :func:`block_regions` (the block grid) and :func:`block_chains`
(blocks grouped into tasks).
"""

from ._blocks import MAX_CHAIN, block_chains, block_regions, fuse_block, fuse_block_chain, fuse_blocks

__all__ = ["MAX_CHAIN", "block_chains", "block_regions", "fuse_block", "fuse_block_chain", "fuse_blocks"]
