"""Dask layout of registration: blockwise bead finding over a plane, and slice alignment of a stack.

:func:`find_beads` maps the bead kernel of :mod:`imaxt_pipeline.algorithms.registration` over
overlapping blocks of a plane (one lazy table; :func:`find_plane_beads` has each task read its window
of a mosaic plane), :func:`channel_scores` and :func:`threshold_levels` are the bead step's per-plane
statistics; :func:`aligned_plane` moves a plane onto the registered canvas, one task per block (the
compiled order-1 shift of :mod:`imaxt_pipeline.algorithms.registration`, scipy for other orders), and
:func:`write_blocks` writes it block by block.
"""

from ._beads import channel_scores, find_beads, find_plane_beads, threshold_levels
from ._cube import aligned_plane, write_blocks

__all__ = ["aligned_plane", "channel_scores", "find_beads", "find_plane_beads", "threshold_levels", "write_blocks"]
