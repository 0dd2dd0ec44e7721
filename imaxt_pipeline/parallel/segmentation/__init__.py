"""Dask layout of segmentation: a plane cut into overlapping blocks, segmented, labels merged.

:func:`segment_blockwise` runs any :class:`~imaxt_pipeline.algorithms.segmentation.Segmenter` on the
extended windows of a :func:`block_grid` (:class:`BlockGrid`) and returns globally numbered nucleus and
cell labels as one lazy array.
"""

from ._blockwise import BlockGrid, block_grid, segment_blockwise

__all__ = ["BlockGrid", "block_grid", "segment_blockwise"]
