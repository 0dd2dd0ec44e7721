"""Dask layout of registration: blockwise bead finding over a plane, and slice alignment of a stack.

:func:`find_beads` maps the bead kernel of :mod:`imaxt_pipeline.algorithms.registration` over
overlapping blocks of a plane (one lazy table); :func:`shift_block` writes one block of a plane
shifted onto the registered canvas.
"""

from ._beads import find_beads
from ._cube import shift_block

__all__ = ["find_beads", "shift_block"]
