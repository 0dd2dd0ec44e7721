"""Stitching: where each tile of a slice lies, and the shared distortion, from the overlaps of its neighbours.

Pairwise registration of neighbouring tiles with point correspondences along the seam (:func:`match_pair`,
:class:`PairMatch`, :func:`adjacent_pairs`) and one weighted sparse least-squares solve for the positions
and the distortion (:func:`solve_positions`, :class:`PositionSolution`), with each tile's position
uncertainty and the tiles it could not place from the overlaps, in plain words (:func:`describe_flags`,
:class:`TileFlag`; a stage-placed tile's sigma, honest with few solved tiles: :func:`stage_sigma`), and
the magnification the overlaps cannot see, from the stage statistics with its sigma
(:func:`stage_magnification`, :class:`MagnificationEstimate`), and the bias an optics field outside the
model puts on every seam of a direction alike, which no loop sees: its size from the residual along the
seams in each tile's sigma, and its calibrated value taken out (:func:`correct_seam_bias`), measured as a
profile along the seam on a seam acquisition (:func:`measure_seam_bias`, :func:`correct_seam_profile`). The
distortion model itself is :class:`..optics.DistortionModel`.
"""

from ._magnification import MagnificationEstimate, stage_magnification
from ._overlap import PairMatch, adjacent_pairs, match_pair
from ._positions import PositionSolution, solve_positions
from ._seam_bias import correct_seam_bias
from ._seam_calibration import SeamCalibration, correct_seam_profile, measure_seam_bias, overlap_px
from ._section_moves import rewrite_plan, section_move
from ._subpixel import window_crop
from ._uncertainty import TileFlag, describe_flags, rematch_plan, search_radius, stage_sigma

__all__ = [
    "MagnificationEstimate",
    "PairMatch",
    "PositionSolution",
    "SeamCalibration",
    "TileFlag",
    "adjacent_pairs",
    "correct_seam_bias",
    "correct_seam_profile",
    "describe_flags",
    "match_pair",
    "measure_seam_bias",
    "overlap_px",
    "rematch_plan",
    "rewrite_plan",
    "search_radius",
    "section_move",
    "solve_positions",
    "stage_magnification",
    "stage_sigma",
    "window_crop",
]
