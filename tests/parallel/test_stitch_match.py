"""The pair task calibrates only the strips a match can reach: the same match as whole calibrated tiles."""

from __future__ import annotations

import numpy as np

from imaxt_pipeline.algorithms.calibration import SEAM_SAMPLE_COLUMNS, estimate_calibration
from imaxt_pipeline.algorithms.stitching import adjacent_pairs, match_pair
from imaxt_pipeline.parallel.stitching import match_tiles
from imaxt_pipeline.testing import one_slice_grid


def test_strips_match_as_whole_tiles_do(tmp_path):
    p, _, tiles, stage, _ = one_slice_grid(tmp_path, seed=2)
    cal = estimate_calibration(tiles, max_trim_px=int(p.overlap * p.tile_shape[1] / 4))
    conf = cal.confidence(p.tile_shape)
    for a, b in adjacent_pairs(3, 3)[:6]:
        expected = tuple(stage[b] - stage[a])
        got = match_tiles(lambda i: tiles[:, i], a, b, expected, cal, flat_samples=True)
        whole = []
        for i in (a, b):
            c = cal.apply(tiles[:, i])
            scale = np.maximum(np.median(c[:, ::4, ::4].reshape(c.shape[0], -1), axis=1), 1e-3)
            whole.append(np.sum(c / scale[:, None, None], axis=0))
        want = match_pair(
            whole[0], whole[1], expected, reference_weights=conf, moving_weights=conf, reference=a, moving=b
        )
        assert got.ok == want.ok and got.expected == want.expected
        np.testing.assert_allclose(got.shift, want.shift, atol=1e-9)
        np.testing.assert_allclose(got.points_ref, want.points_ref, atol=1e-9)
        np.testing.assert_allclose(got.points_mov, want.points_mov, atol=1e-9)
        np.testing.assert_array_equal(got.point_weights, want.point_weights)
        assert got.information == want.information
        if got.ok:  # the seam samples lie in both tiles, inside the overlap the match found
            s = got.flat_samples
            assert s is not None and s.shape[1] == len(SEAM_SAMPLE_COLUMNS) and len(s) > 0
            h, w = p.tile_shape
            assert np.all(s[:, 1:5] >= 0) and np.all(s[:, [1, 3]] <= h - 1) and np.all(s[:, [2, 4]] <= w - 1)
            np.testing.assert_allclose(np.median(s[:, 1:3] - s[:, 3:5], axis=0), got.shift, atol=1.0)
    assert match_tiles(lambda i: tiles[:, i], 0, 1, tuple(stage[1] - stage[0]), cal).flat_samples is None
