"""Calibration + stitching accuracy on the project's simulator (:mod:`imaxt_pipeline.synth`).

No calibration is given: dark, flat, stray light and trim are estimated from
the tiles, then pairs are matched and positions + distortion solved. Errors
are measured against ``truth.tile_positions_px`` after removing the slice's
common translation, over the tiles that an informative pair constrains
(tiles of pure empty agarose carry no information and are flagged instead).

The overlaps cannot tell a global magnification from the tile spacing (both
scale the whole mosaic), so the simulated ``mag_y, mag_x`` (about 0.15 %)
leave a scale error of about 0.35 px per tile step; without a calibration the
solver keeps the nominal pixel size (magnification 0). The error after
removing translation and per-axis scale is checked separately: that is what
the overlaps determine. With a distortion calibration (from a calibration
acquisition) the scale is fixed too: ``tests/test_distortion_calibration.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import estimate_calibration
from imaxt_pipeline.algorithms.stitching import adjacent_pairs, solve_positions
from imaxt_pipeline.parallel.stitching import match_tiles
from imaxt_pipeline.testing import one_slice_grid as _sample
from imaxt_pipeline.testing import position_errors as _errors

CASES = {"seed0": dict(seed=0), "seed1": dict(seed=1), "seed2": dict(seed=2), "empty": dict(seed=3, empty_fraction=0.4)}


@pytest.fixture(scope="module", params=list(CASES))
def stitched(request, tmp_path_factory):
    p, truth, tiles, stage, true = _sample(tmp_path_factory.mktemp(request.param), **CASES[request.param])
    cal = estimate_calibration(tiles, max_trim_px=int(p.overlap * p.tile_shape[1] / 4))
    ms = [match_tiles(lambda i: tiles[:, i], a, b, tuple(stage[b] - stage[a]), cal) for a, b in adjacent_pairs(3, 3)]
    sol = solve_positions(ms, stage, tile_shape=p.tile_shape, fit_magnification=False)
    return request.param, p, truth, tiles, stage, true, cal, sol


def test_positions_match_truth(stitched):
    name, p, truth, tiles, stage, true, cal, sol = stitched
    keep = sol.constrained
    assert keep.sum() >= 6  # the empty case loses one column of tiles at most
    err = _errors(sol.positions, true, keep)
    before = _errors(stage, true, keep)
    assert np.max(err) <= 2.0, (name, err)
    assert np.median(err) <= 0.5, (name, err)
    assert np.median(err) < 0.2 * np.median(before)
    # What the overlaps determine (all but the scale) reaches the 0.1 px target.
    err_s = _errors(sol.positions, true, keep, scale=True)
    assert np.median(err_s) <= 0.1 and np.max(err_s) <= 0.3, (name, err_s)


def test_unconstrained_tiles_are_empty(stitched):
    name, p, truth, tiles, stage, true, cal, sol = stitched
    if p.empty_fraction == 0:
        assert sol.constrained.all()
    else:  # tiles left unconstrained lie wholly in the empty agarose on the right
        mosaic_w = truth.mosaic_shape[1]
        for t in np.flatnonzero(~sol.constrained):
            assert true[t, 1] > (1 - p.empty_fraction) * mosaic_w - 30


def test_distortion_recovered(stitched):
    name, p, truth, tiles, stage, true, cal, sol = stitched
    # Every tile shares one model, so the seams of the constrained tiles alone pin it,
    # including the case with an empty agarose column.
    td = truth.distortion
    assert sol.distortion.k_y == pytest.approx(td.k_y, abs=0.002)
    assert sol.distortion.k_x == pytest.approx(td.k_x, abs=0.002)


def test_calibration_terms(stitched):
    name, p, truth, tiles, stage, true, cal, sol = stitched
    cap = int(p.overlap * p.tile_shape[1] / 4)
    assert max(cal.trim.as_dict().values()) <= cap
    assert cal.trim.left >= 3  # the stray-light columns at x = 0
    # additive stray light recovered at the x = 0 edge (beyond the trim)
    x = cal.trim.left
    assert np.median(cal.stray[:, :, x]) == pytest.approx(truth.stray[0, x], rel=0.35)
    assert np.all(np.abs(cal.dark - truth.dark) < 40)
    # the flat shape: corners darker than the centre by about the simulated vignetting
    ratio = cal.flat[:, 8, 8] / cal.flat[:, 128, 128]
    assert np.all(np.abs(ratio - truth.flat[8, 8] / truth.flat[128, 128]) < 0.1)


def test_magnification_from_the_stage_lies_within_its_sigma(stitched):
    """The scale the overlaps cannot see, from the stage: within its sigma of the simulated one, and the
    translation-only error of the nominal scale within what that sigma predicts (not significant on 9 tiles)."""
    name, p, truth, tiles, stage, true, cal, sol = stitched
    m, td = sol.magnification, truth.distortion
    z = (np.array(m.mag) - [td.mag_y, td.mag_x]) / np.array(m.mag_sigma)
    assert np.all(np.abs(z) < 4), (name, m)
    assert m.applied == (False, False) and sol.distortion.mag_y == sol.distortion.mag_x == 0.0
    keep = sol.constrained & ~sol.flagged
    assert m.n_tiles == keep.sum()
    err = _errors(sol.positions, true, keep)
    assert np.median(err) < 3 * m.predicted_px, (name, err, m.predicted_px)
