"""How far a re-solve moves an earlier section, and which sections a landing rewrites."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.algorithms.stitching import rewrite_plan, section_move


def test_a_changed_magnification_moves_the_corners_by_its_lever_arm():
    shape = (1001, 1001)  # centre 500 px: a 1e-3 magnification moves the corners 0.5 px per axis
    pos = np.array([[0.0, 0.0], [0.0, 900.0], [900.0, 0.0], [900.0, 900.0]])
    move = section_move(pos, pos, DistortionModel(), DistortionModel(mag_y=1e-3, mag_x=1e-3), shape)
    assert move == pytest.approx(np.hypot(0.5, 0.5), rel=1e-9)
    # the same change with every tile shifted together: the shift is not a move
    assert section_move(pos, pos + [3.0, -2.0], DistortionModel(), DistortionModel(mag_y=1e-3, mag_x=1e-3), shape) == (
        pytest.approx(move, rel=1e-9)
    )
    # one tile of four displaced against its neighbours: the common (median) move is theirs, 0
    moved = pos.copy()
    moved[3] += [0.0, 0.4]
    assert section_move(pos, moved, DistortionModel(), DistortionModel(), shape) == pytest.approx(0.4)


def test_the_rewrite_plan_is_bounded_largest_move_first():
    moves = {s: 0.01 * s for s in range(10)}
    now, pending = rewrite_plan(moves, tolerance=0.035, limit=3)
    assert now == [7, 8, 9] and pending == [4, 5, 6]
    assert rewrite_plan(moves, tolerance=1.0, limit=3) == ([], [])


def test_mismatched_sections_are_refused():
    with pytest.raises(ValueError, match="2 written tile positions against 1"):
        section_move(np.zeros((2, 2)), np.zeros((1, 2)), DistortionModel(), DistortionModel(), (10, 10))
