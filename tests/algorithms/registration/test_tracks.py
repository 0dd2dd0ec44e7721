"""Bead matching and track building against simulated detections with drift."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.registration import build_tracks
from imaxt_pipeline.algorithms.registration._tracks import match_points


def _simulate(rng, n_slices=12, n_beads=60, drift_step=4.0, miss=0.0, noise=0.2):
    drift = np.cumsum(rng.normal(0, drift_step, (n_slices, 2)), axis=0)
    drift -= drift[0]
    slices, yx, true = [], [], []
    for b in range(n_beads):
        pos = rng.uniform(0, 2000, 2)
        s0, length = rng.integers(0, n_slices), rng.integers(2, 7)
        for s in range(s0, min(s0 + length, n_slices)):
            if rng.random() < miss:
                continue
            slices.append(s)
            yx.append(pos + drift[s] + rng.normal(0, noise, 2))
            true.append(b)
    return np.array(slices), np.array(yx), np.array(true), drift


def test_match_points_recovers_shift():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1000, (50, 2))
    mov = ref + [7.5, -12.0] + rng.normal(0, 0.1, ref.shape)
    perm = rng.permutation(50)
    m = match_points(ref, mov[perm], radius=20)
    assert len(m) == 50
    assert np.all(perm[m.moving_index] == m.reference_index)
    np.testing.assert_allclose(m.shift, [7.5, -12.0], atol=0.1)
    assert len(match_points(ref, np.zeros((0, 2)), radius=5)) == 0
    with pytest.raises(ValueError, match="radius"):
        match_points(ref, mov, radius=0)


@pytest.mark.parametrize("miss", [0.0, 0.15])
def test_tracks_are_pure_and_complete(miss):
    rng = np.random.default_rng(1)
    slices, yx, true, _ = _simulate(rng, miss=miss)
    ids = build_tracks(slices, yx, radius=20, max_gap=1)
    for t in np.unique(ids[ids >= 0]):
        assert len(np.unique(true[ids == t])) == 1  # a track holds one bead only
        assert (ids == t).sum() >= 2
    # Detections whose bead has >= 2 detections are (almost) all tracked.
    counts = np.bincount(true)
    should = counts[true] >= 2
    assert (ids[should] >= 0).mean() > 0.95
    assert np.all(ids[~should] == -1)


def test_min_length_and_length_mismatch():
    rng = np.random.default_rng(2)
    slices, yx, true, _ = _simulate(rng)
    ids = build_tracks(slices, yx, radius=20, min_length=4)
    assert all((ids == t).sum() >= 4 for t in np.unique(ids[ids >= 0]))
    with pytest.raises(ValueError, match="same|entries"):
        build_tracks(slices[:-1], yx)
    assert build_tracks(np.zeros(0, int), np.zeros((0, 2))).size == 0
