"""Classical bead detection + fit (numpy kernel and blockwise Dask) against rendered truth."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy.spatial import cKDTree

from imaxt_pipeline.algorithms.bead_fit import disc_model
from imaxt_pipeline.algorithms.beads import detect_beads, pick_bead_channel, split_beads
from imaxt_pipeline.parallel.beads import find_beads, find_beads_numpy


def bead_scene(seed=0, shape=(640, 640), n=30, amp=25.0, bg=20.0):
    """Poisson image with beads (some touching) on agarose plus a tissue-like textured region."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape, dtype=float)
    img = np.full(shape, bg)
    tissue = np.hypot(yy - shape[0] * 0.5, xx - shape[1] * 0.5) < shape[0] * 0.18
    spots = np.zeros(shape)
    for cy, cx in rng.uniform(0.3, 0.7, (150, 2)) * shape:
        spots += disc_model([cy, cx, 4.0, 1.0, 15.0, 0.0], yy, xx)
    img += tissue * (10.0 + spots)
    truth = []
    for _ in range(n):
        r = rng.uniform(3, 45)
        c = rng.uniform(r, np.array(shape) - r)
        if np.hypot(*(c - np.array(shape) / 2)) < shape[0] * 0.18 + r + 5:
            continue
        if any(np.hypot(*(c - t[:2])) < r + t[2] - 2 for t in truth):  # may touch, not overlap much
            continue
        truth.append(np.array([c[0], c[1], r]))
        img += disc_model([c[0], c[1], r, 1.5, amp, 0.0], yy, xx)
    return rng.poisson(img).astype(np.float32), np.array(truth)


def score(df, truth, *, min_radius=5.0, gate=3.0):
    """Recall/precision for beads with radius >= min_radius and the median centre error."""
    found = df[df["good"]] if "good" in df else df
    yx = found[["y_px", "x_px"]].to_numpy()
    tree = cKDTree(truth[:, :2])
    dist, idx = tree.query(yx, distance_upper_bound=gate)
    hit = np.isfinite(dist)
    big = truth[:, 2] >= min_radius
    recall = np.isin(np.flatnonzero(big), idx[hit]).mean()
    relevant = ~hit | big[np.minimum(idx, len(truth) - 1)]  # a find of a tiny truth bead is not a false positive
    precision = hit[relevant].mean() if relevant.any() else 1.0
    return recall, precision, float(np.median(dist[hit]))


def test_classical_detect_and_fit_meets_accuracy_targets():
    img, truth = bead_scene(0)
    df = find_beads_numpy(img, detector="classical")
    df["good"] = df["fit_ok"] & (df["snr"] > 3)
    recall, precision, err = score(df, truth)
    assert recall >= 0.9 and precision >= 0.95
    assert err <= 0.3


def test_touching_beads_are_split():
    yy, xx = np.indices((120, 160), dtype=float)
    img = disc_model([60, 50, 25, 1.0, 50, 5], yy, xx) + disc_model([60, 98, 25, 1.0, 50, 0], yy, xx)
    cands = detect_beads(np.random.default_rng(0).poisson(img).astype(float))
    assert len(cands) == 2
    np.testing.assert_allclose(np.sort(cands.centres[:, 1]), [50, 98], atol=2.0)
    assert set(np.unique(cands.labels)) == {0, 1, 2}
    assert split_beads(np.zeros((10, 10), bool)).max() == 0


def test_blockwise_equals_whole_image(dask_client):
    img, truth = bead_scene(1, shape=(600, 520), n=20)
    whole = find_beads_numpy(img)
    lazy = find_beads(da.from_array(img, chunks=(173, 211)), block=256, max_radius=50.0)
    blocks = dask_client.compute(lazy).result()
    w = whole[whole["fit_ok"]][["y_px", "x_px"]].to_numpy()
    b = blocks[blocks["fit_ok"]][["y_px", "x_px"]].to_numpy()
    assert len(b) == len(w) >= 10
    dist, _ = cKDTree(w).query(b)
    assert dist.max() < 0.05  # same beads, each reported once


def test_bad_inputs_and_channel_pick():
    with pytest.raises(ValueError, match="2-D"):
        detect_beads(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="detector"):
        find_beads_numpy(np.zeros((32, 32)), detector="magic")
    with pytest.raises(ValueError, match="2-D"):
        find_beads(da.zeros((2, 8, 8)))
    assert pick_bead_channel(np.array([1.0, 7.0, 3.0])) == 1
    assert len(find_beads_numpy(np.zeros((64, 64)))) == 0


def test_on_synth_truth_planes():
    """Seeded synthetic sample (imaxt_pipeline.synth): clean truth planes + Poisson noise."""
    import tempfile

    from imaxt_pipeline.synth import SynthParams, synthesize

    truth = synthesize(tempfile.mkdtemp(), SynthParams(slices=2, rows=2, cols=2, seed=0, tile_shape=(256, 256)))
    rng = np.random.default_rng(0)
    errs, recalls, precisions = [], [], []
    for s in range(truth.clean.shape[0]):
        img = rng.poisson(np.clip(truth.clean[s, 1], 0, None)).astype(np.float32)
        df = find_beads_numpy(img)
        df["good"] = df["fit_ok"] & (df["snr"] > 3)
        det = truth.bead_detections[truth.bead_detections["slice"] == s]
        recall, precision, err = score(df, det[["y_px", "x_px", "radius_px"]].to_numpy())
        errs.append(err)
        recalls.append(recall)
        precisions.append(precision)
    assert min(recalls) >= 0.9 and min(precisions) >= 0.95
    assert np.median(errs) <= 0.3
