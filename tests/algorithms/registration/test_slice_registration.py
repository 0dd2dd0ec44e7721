"""Sparse least-squares slice offsets from bead tracks, against simulated truth."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.registration import apply_offset, canvas_padding, solve_slice_offsets
from imaxt_pipeline.algorithms.registration._slice_offsets import track_pairs
from imaxt_pipeline.errors import NotEnoughOverlapError


def _tracks(rng, n_slices=10, n_beads=80, sigma=0.2):
    drift = np.cumsum(rng.normal(0, 3, (n_slices, 2)), axis=0)
    drift -= drift[0]
    rows = []
    for b in range(n_beads):
        pos = rng.uniform(0, 3000, 2)
        s0, length = rng.integers(-2, n_slices), rng.integers(2, 7)
        for s in range(max(s0, 0), min(s0 + length, n_slices)):
            sig = sigma * rng.uniform(0.5, 2.0)
            rows.append((s, *(pos + drift[s] + rng.normal(0, sig, 2)), b, sig))
    a = np.array(rows)
    return a[:, 0].astype(int), a[:, 1:3], a[:, 3].astype(int), a[:, 4], drift


def test_track_pairs():
    i, j = track_pairs(np.array([0, 1, 0, -1, 0, 1, 2]))
    pairs = {tuple(sorted(p)) for p in zip(i, j, strict=True)}
    assert pairs == {(0, 2), (0, 4), (2, 4), (1, 5)}


def test_offsets_match_truth_and_errors_are_calibrated():
    rng = np.random.default_rng(0)
    errs, pulls = [], []
    for _ in range(5):
        slices, yx, bead, sig, drift = _tracks(rng)
        sol = solve_slice_offsets(slices, yx, bead, sigma=sig)
        assert np.all(sol.constrained)
        np.testing.assert_allclose(sol.offsets[0], 0.0)
        d = sol.offsets - drift
        errs.append(np.abs(d).max())
        pulls.append((d[1:] / sol.errors[1:]).ravel())
        assert np.all(0.5 < sol.chi2) and np.all(sol.chi2 < 1.6)
    assert max(errs) < 0.5
    assert 0.6 < np.std(np.concatenate(pulls)) < 1.5


def test_equals_full_model_with_bead_positions():
    """Pair weights w_i w_j / W marginalise the bead positions exactly."""
    rng = np.random.default_rng(1)
    slices, yx, bead, sig, _ = _tracks(rng, n_slices=6, n_beads=25)
    keep = np.bincount(bead)[bead] >= 2
    slices, yx, bead, sig = slices[keep], yx[keep], np.unique(bead[keep], return_inverse=True)[1], sig[keep]
    sol = solve_slice_offsets(slices, yx, bead, sigma=sig, clip=1e9)
    n_s, n_b = slices.max() + 1, bead.max() + 1
    a = np.zeros((len(slices), n_s - 1 + n_b))
    for k, (s, b) in enumerate(zip(slices, bead, strict=True)):
        if s > 0:
            a[k, s - 1] = 1.0
        a[k, n_s - 1 + b] = 1.0
    w = 1.0 / sig
    for ax in range(2):
        x = np.linalg.lstsq(a * w[:, None], yx[:, ax] * w, rcond=None)[0]
        np.testing.assert_allclose(sol.offsets[1:, ax], x[: n_s - 1], atol=1e-6)


def test_outliers_are_rejected():
    rng = np.random.default_rng(2)
    slices, yx, bead, sig, drift = _tracks(rng)
    bad = rng.choice(len(slices), 8, replace=False)
    yx[bad] += 15.0
    sol = solve_slice_offsets(slices, yx, bead, sigma=sig)
    assert not sol.inlier[bad].any()
    assert np.abs(sol.offsets - drift).max() < 0.5
    assert sol.iterations > 1


def test_unconnected_slice_is_nan_and_no_tracks_raise():
    slices = np.array([0, 1, 0, 1, 2, 3, 2, 3])
    yx = np.arange(16, dtype=float).reshape(8, 2)
    bead = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    sol = solve_slice_offsets(slices, yx, bead)
    assert sol.constrained.tolist() == [True, True, False, False]
    with pytest.raises(NotEnoughOverlapError):
        solve_slice_offsets(np.array([0, 1]), np.zeros((2, 2)), np.array([-1, -1]))
    with pytest.raises(ValueError, match="same length"):
        solve_slice_offsets(np.array([0, 1]), np.zeros((3, 2)), np.array([0, 0]))


def test_apply_offset_places_content_and_canvas_padding():
    img = np.zeros((1, 40, 50), np.float32)
    img[0, 20, 30] = 1.0
    offsets = np.array([[0.0, 0.0], [3.0, -4.0]])
    before, after = canvas_padding(offsets)
    assert before.tolist() == [3, 0] and after.tolist() == [0, 4]
    out = apply_offset(img, offsets[1], pad_before=before, out_shape=(43, 54))
    # pixel (y, x) of the slice goes to (y - dy, x - dx) + pad_before
    assert np.unravel_index(np.argmax(out[0]), out.shape[1:]) == (20 - 3 + 3, 30 + 4 + 0)
    half = apply_offset(img, [0.5, 0.0], pad_before=np.array([1, 0]), out_shape=(41, 50))
    np.testing.assert_allclose(half[0, 20:22, 30], [0.5, 0.5], atol=1e-6)


def test_unconnected_reference_solves_the_tied_slices_without_warning():
    """Slice 0 holds detections but no track (the sweep's 2 x 2 x 3 draw 0): slices 1 and 2, tied to each other,
    are solved relative to slice 1 (the largest group's first slice), slice 0 is NaN; no empty-median warning."""
    import warnings

    rng = np.random.default_rng(0)
    beads = rng.uniform(50, 450, (5, 2))
    shift = np.array([1.5, -2.25])
    yx = np.concatenate([rng.uniform(50, 450, (3, 2)), beads, beads + shift])
    slices = np.repeat([0, 1, 2], [3, 5, 5])
    ids = np.r_[-1, -1, -1, np.arange(5), np.arange(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = solve_slice_offsets(slices, yx, ids, sigma=0.1)
    assert sol.reference == 1 and np.isnan(sol.offsets[0]).all() and sol.constrained.tolist() == [False, True, True]
    np.testing.assert_allclose(sol.offsets[1:], [[0.0, 0.0], shift], atol=1e-9)
    assert not sol.inlier[:3].any() and sol.inlier[3:].all()
    # slices 1-3 tied by one group of tracks, slice 0 by none: the reference moves to slice 1
    slices2 = np.r_[slices, np.repeat(3, 5)]
    sol2 = solve_slice_offsets(slices2, np.r_[yx, beads + 2 * shift], np.r_[ids, np.arange(5)], sigma=0.1, reference=0)
    assert sol2.reference == 1 and np.isnan(sol2.offsets[0]).all()
    np.testing.assert_allclose(sol2.offsets[3], 2 * shift, atol=1e-9)
    # a connected reference stays the reference
    assert solve_slice_offsets(slices[3:], yx[3:], ids[3:], sigma=0.1).reference == 1
