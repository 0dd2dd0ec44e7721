"""Dask layout of registration: blockwise bead finding over a plane, and slice alignment of a stack.

:func:`find_beads` maps the bead kernel of :mod:`imaxt_pipeline.algorithms.registration` over
overlapping blocks of a plane (one lazy table); :func:`align_plane` and :func:`align_stack` shift
planes onto the registered canvas chunk by chunk.
"""

from ._beads import find_beads
from ._cube import align_plane, align_stack

__all__ = ["align_plane", "align_stack", "find_beads"]
