"""Dask layout of segmentation: a plane cut into overlapping blocks, segmented, labels merged.

:func:`segment_blockwise` runs any :class:`~imaxt_pipeline.algorithms.segmentation.Segmenter` on the
extended windows of a :func:`block_grid` (:class:`BlockGrid`) and returns globally numbered nucleus and
cell labels as one lazy array; :func:`segment_plane_labels` writes the same labels straight into the
label images block by block (chunks from :func:`label_chunk`, blocks checked by :func:`aligned_block`).
:func:`global_labels` maps a plane's labels into the sample-wide id space (``plane << 32 | local``,
uint64) written to the label images; :func:`local_labels` and :func:`label_planes` take ids apart.
"""

from ._blockwise import BlockGrid, block_grid, block_overlap, segment_blockwise
from ._ids import LABEL_BITS, LABEL_DTYPE, global_labels, label_planes, local_labels
from ._labels import aligned_block, label_chunk, segment_plane_labels, written_levels

__all__ = [
    "LABEL_BITS",
    "LABEL_DTYPE",
    "BlockGrid",
    "aligned_block",
    "block_grid",
    "block_overlap",
    "global_labels",
    "label_chunk",
    "label_planes",
    "local_labels",
    "segment_blockwise",
    "segment_plane_labels",
    "written_levels",
]
