"""Global positions + distortion from pairwise matches, against synthetic truth."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.distortion import DistortionModel
from imaxt_pipeline.algorithms.overlap import PairMatch, adjacent_pairs, match_pair
from imaxt_pipeline.algorithms.positions import solve_positions

from .test_overlap import grid_tiles

MODEL = DistortionModel(k_y=0.006, k_x=0.006)  # ~1.9 px at the corners of a 192 px tile


def _errors(pos, true):
    err = pos - true
    err -= err.mean(axis=0)  # the slice's common translation is free
    return np.hypot(err[:, 0], err[:, 1])


def _matches(tiles, stage, rows, cols):
    return [match_pair(tiles[a], tiles[b], stage[b] - stage[a], reference=a, moving=b)
            for a, b in adjacent_pairs(rows, cols)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_distortion_fit_beats_stage_and_rigid_solve(seed):
    tiles, true, stage = grid_tiles(seed, rows=3, cols=3, model=MODEL)
    matches = _matches(tiles, stage, 3, 3)
    sol = solve_positions(matches, stage, tile_shape=(192, 192), fit_magnification=False)
    err = _errors(sol.positions, true)
    rigid = _errors(solve_positions(matches, stage, tile_shape=(192, 192), estimate_distortion=False).positions, true)
    assert np.median(err) <= 0.2 and err.max() <= 0.5, err
    assert np.median(rigid) > 3 * np.median(err)  # uncorrected distortion shrinks the grid
    assert np.median(_errors(stage, true)) > 1.0
    assert sol.distortion.k_x == pytest.approx(MODEL.k_x, abs=0.001)
    assert sol.distortion.k_y == pytest.approx(MODEL.k_y, abs=0.001)
    stats = sol.residual_stats()
    assert stats["n_used"] == 12 and stats["median_px"] < 0.1


def test_empty_agarose_pairs_fall_back_to_stage():
    tiles, true, stage = grid_tiles(3, rows=3, cols=3, model=MODEL, empty_cols=1)
    matches = _matches(tiles, stage, 3, 3)
    ok = [m for m in matches if m.ok]
    assert 0 < len(ok) < len(matches)  # the pairs inside the empty column carry no information
    sol = solve_positions(matches, stage, tile_shape=(192, 192), fit_magnification=False)
    informative = sorted({i for m in ok for i in (m.reference, m.moving)})
    err = _errors(sol.positions[informative], true[informative])
    assert np.median(err) <= 0.3
    assert not sol.pairs.loc[~sol.pairs["ok"], "used"].any()


def test_outlier_pair_is_rejected():
    tiles, true, stage = grid_tiles(4, rows=3, cols=3, model=MODEL)
    matches = _matches(tiles, stage, 3, 3)
    bad = matches[5]
    matches[5] = PairMatch(bad.reference, bad.moving, bad.expected, bad.shift, bad.ncc, True, bad.points_ref,
                           bad.points_mov - np.array([0.0, 6.0]), bad.point_weights)
    sol = solve_positions(matches, stage, tile_shape=(192, 192), fit_magnification=False)
    assert sol.rejected >= 1
    assert not sol.pairs.loc[5, "used"]
    assert np.median(_errors(sol.positions, true)) <= 0.2


def test_fixed_distortion_is_kept_and_bad_index_raises():
    tiles, true, stage = grid_tiles(0, rows=2, cols=2, model=MODEL)
    matches = _matches(tiles, stage, 2, 2)
    sol = solve_positions(matches, stage, tile_shape=(192, 192), estimate_distortion=False, distortion=MODEL)
    assert sol.distortion == MODEL
    assert np.median(_errors(sol.positions, true)) <= 0.2
    with pytest.raises(ValueError, match="outside"):
        solve_positions(matches, stage[:2], tile_shape=(192, 192))
