"""Dask layer of fusion: one lazy task per output block of a mosaic plane.

Public API: :func:`fuse_blocks` (lazy tasks for every block of a plane), :func:`fuse_block` (the kernel each
task runs: fuse one block and write its pyramid levels) and :func:`block_regions` (the block grid).
"""

from ._blocks import block_regions, fuse_block, fuse_blocks

__all__ = ["block_regions", "fuse_block", "fuse_blocks"]
