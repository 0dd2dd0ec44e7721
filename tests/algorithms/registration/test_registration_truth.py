"""Slice registration against the simulator's own drift, with no stitching in between.

The mosaics are the simulator's noise-free slice planes (which carry the true
drift) plus Poisson and read noise, so the recovered offsets can be compared
directly with ``truth.slice_offsets_px``: detection, profile fit, tracks and
the sparse least-squares solve are the only things under test.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from imaxt_pipeline.algorithms.registration import BeadSpec, build_tracks, find_beads_numpy, solve_slice_offsets
from imaxt_pipeline.synth import SynthParams, synthesize


@pytest.fixture(scope="module")
def registered():
    truth = synthesize(
        tempfile.mkdtemp(), SynthParams(slices=6, rows=2, cols=2, tile_shape=(256, 256), tissue_fraction=0.35, seed=5)
    )
    rng = np.random.default_rng(5)
    planes = rng.poisson(np.clip(truth.clean[:, 1], 0, None)) + rng.normal(0, 5.0, truth.clean[:, 1].shape)
    tables = []
    for s, plane in enumerate(planes.astype(np.float32)):
        df = find_beads_numpy(plane, BeadSpec(pixel_size_um=truth.params.pixel_size_um), detector="classical")
        df = df[df["fit_ok"]].assign(slice=s)
        tables.append(df)
    import pandas as pd

    beads = pd.concat(tables, ignore_index=True)
    yx = beads[["y_px", "x_px"]].to_numpy()
    sl = beads["slice"].to_numpy()
    bead_id = build_tracks(sl, yx, radius=20.0)
    sigma = beads[["y_err", "x_err"]].to_numpy()
    return truth, solve_slice_offsets(sl, yx, bead_id, sigma=sigma)


def test_offsets_match_true_drift(registered):
    truth, sol = registered
    expected = np.asarray(truth.slice_offsets_px)
    assert sol.constrained.all()
    err = np.hypot(*(sol.offsets - expected).T)
    assert (err <= 0.5).sum() >= 5, err
    assert np.median(err) <= 0.2, err


def test_reported_errors_are_honest(registered):
    truth, sol = registered
    expected = np.asarray(truth.slice_offsets_px)
    normalised = (sol.offsets[1:] - expected[1:]) / np.maximum(sol.errors[1:], 1e-6)
    # within 4 sigma on every slice and axis: the errors are neither tiny nor wildly optimistic
    assert np.all(np.abs(normalised) < 4), normalised
