"""Dask layout of registration: blockwise bead finding over a plane, and slice alignment of a stack.

:func:`find_beads` maps the bead kernel of :mod:`imaxt_pipeline.algorithms.registration` over
overlapping blocks of a plane (one lazy table); :func:`aligned_plane` moves a plane onto the
registered canvas (dask-image's ``affine_transform``) and :func:`write_blocks` writes it block by block.
"""

from ._beads import find_beads
from ._cube import aligned_plane, write_blocks

__all__ = ["aligned_plane", "find_beads", "write_blocks"]
