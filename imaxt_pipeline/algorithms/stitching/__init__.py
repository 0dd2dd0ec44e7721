"""Stitching: where each tile of a slice lies, and the shared distortion, from the overlaps of its neighbours.

Pairwise registration of neighbouring tiles with point correspondences along the seam (:func:`match_pair`,
:class:`PairMatch`, :func:`adjacent_pairs`) and one weighted sparse least-squares solve for the positions
and the distortion (:func:`solve_positions`, :class:`PositionSolution`). The distortion model itself is
:class:`..optics.DistortionModel`.
"""

from ._overlap import PairMatch, adjacent_pairs, match_pair
from ._positions import PositionSolution, solve_positions

__all__ = ["PairMatch", "PositionSolution", "adjacent_pairs", "match_pair", "solve_positions"]
