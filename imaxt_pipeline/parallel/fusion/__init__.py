"""TODO docstring."""

from ._blocks import block_regions, fuse_block, fuse_blocks

__all__ = ["block_regions", "fuse_block", "fuse_blocks"]
