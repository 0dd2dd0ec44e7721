"""TODO docstring."""

from ._overlap import PairMatch, adjacent_pairs, masked_ncc_shift, match_pair
from ._positions import PositionSolution, distortion_design, solve_positions
from ._subpixel import MovingSpline, ShiftEstimate, refine_shift, window_crop

__all__ = ["MovingSpline", "PairMatch", "PositionSolution", "ShiftEstimate", "adjacent_pairs", "distortion_design", "masked_ncc_shift", "match_pair", "refine_shift", "solve_positions", "window_crop"]
