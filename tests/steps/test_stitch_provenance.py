"""The stitch step's provenance names what the overlaps could not see, with its size from the data."""

import numpy as np

from imaxt_pipeline.algorithms.stitching import PairMatch, adjacent_pairs, solve_positions
from imaxt_pipeline.steps._stitch_record import _provenance


def _solve(amplitude):
    rng = np.random.default_rng(1)
    stage = np.array([(r, c) for r in range(2) for c in range(3)], float) * 180.0
    along = np.linspace(10, 190, 16)
    ms = []
    for a, b in adjacent_pairs(2, 3):
        shift = stage[b] - stage[a]
        o = 0 if shift[1] else 1
        pa = np.stack([along, np.full(16, 195.0)] if o == 0 else [np.full(16, 195.0), along], axis=1)
        err = np.zeros((16, 2))
        err[:, o] = amplitude * np.sqrt(2) * np.sin(2 * np.pi * along / 200.0) + rng.normal(0, 0.02, 16)
        ms.append(PairMatch(a, b, tuple(shift), tuple(shift), 0.9, True, pa, pa - shift - err, np.full(16, 2500.0)))
    return solve_positions(ms, stage, tile_shape=(200, 200), estimate_distortion=False)


def test_the_seam_bias_record_carries_the_variation_measured_along_the_seams():
    rec = _provenance(_solve(0.3), False, None)["seam_bias"]
    assert "residual variation" in rec["source"]
    assert 0.15 < rec["sigma_px"]["horizontal_y"] < 0.4 and 0.15 < rec["sigma_px"]["vertical_x"] < 0.4
    flat = _provenance(_solve(0.0), False, None)["seam_bias"]["sigma_px"]
    assert flat["horizontal_y"] < 0.02 and flat["vertical_x"] < 0.02
