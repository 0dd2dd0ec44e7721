"""TODO docstring."""

from ._beads import BEAD_COLUMNS, find_beads, find_beads_numpy
from ._cube import align_plane, align_stack

__all__ = ["BEAD_COLUMNS", "align_plane", "align_stack", "find_beads", "find_beads_numpy"]
