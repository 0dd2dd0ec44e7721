"""TODO docstring."""

from ._blockwise import BlockGrid, block_grid, segment_blockwise

__all__ = ["BlockGrid", "block_grid", "segment_blockwise"]
