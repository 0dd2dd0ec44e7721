"""Consecutive pairs in one task share their tiles' reads and channel levels, and match as pairs alone do."""

from __future__ import annotations

import numpy as np

from imaxt_pipeline.algorithms.calibration import estimate_calibration
from imaxt_pipeline.algorithms.stitching import adjacent_pairs
from imaxt_pipeline.parallel.stitching import match_tiles
from imaxt_pipeline.steps.stitch import _match_batch, batch_pairs
from imaxt_pipeline.testing import one_slice_grid


def test_a_batch_reads_each_tile_once_and_matches_as_single_pairs(tmp_path):
    p, _, tiles, stage, _ = one_slice_grid(tmp_path, seed=3)
    cal = estimate_calibration(tiles, max_trim_px=int(p.overlap * p.tile_shape[1] / 4))
    reads: list[int] = []

    def read(i):
        reads.append(i)
        return tiles[:, i]

    pairs = np.array(adjacent_pairs(3, 3))
    expected = stage[pairs[:, 1]] - stage[pairs[:, 0]]
    got = _match_batch(read, pairs[:4], expected[:4], cal, cache=3, index_offset=9)
    # (0, 1), (0, 3), (1, 2), (1, 4): five tiles, each read once (a task per pair reads eight)
    assert sorted(reads) == [0, 1, 2, 3, 4]
    for m, (a, b), e in zip(got, pairs[:4], expected[:4], strict=True):
        alone = match_tiles(lambda i: tiles[:, i], int(a), int(b), tuple(e), cal, index_offset=9)
        assert (m.reference, m.moving) == (a + 9, b + 9) and m.ok == alone.ok
        np.testing.assert_array_equal(m.points_ref, alone.points_ref)
        np.testing.assert_array_equal(m.points_mov, alone.points_mov)
        np.testing.assert_array_equal(m.point_weights, alone.point_weights)


def test_large_tiles_are_batched_by_consecutive_pairs():
    tile = 4 * 2 * 2048 * 2048  # 4 channels of 2048 px
    assert batch_pairs(24, tile) == 2  # 4 x 4 tiles: 12 tasks per section
    assert batch_pairs(180, tile) == 8  # 10 x 10 tiles: at most 8 pairs (three tiles held) per task
    assert batch_pairs(12, tile) == 1
