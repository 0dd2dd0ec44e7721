"""Classical bead detection + fit (numpy kernel and blockwise Dask) against rendered truth."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy.spatial import cKDTree

from imaxt_pipeline.algorithms.registration import (
    BeadSpec,
    bead_channel_scores,
    bead_threshold,
    detect_beads,
    disc_model,
    find_beads_numpy,
    good_beads,
    pick_bead_channel,
)
from imaxt_pipeline.algorithms.registration._beads import split_beads
from imaxt_pipeline.parallel.registration import find_beads
from imaxt_pipeline.testing import bead_scene, synth_planes, synth_score
from imaxt_pipeline.testing._beads import bead_truth_score


def test_classical_detect_and_fit_meets_accuracy_targets():
    # One channel whose tissue holds nuclei-sized spots as bright as the beads: only the noise threshold
    # (rel=0) is used, so the tissue is one region that the size/shape rules must reject.
    img, truth = bead_scene(0)
    spec = BeadSpec(pixel_size_um=1.0, diameter_um=90.0)  # cuts of 13.5-54 px searched
    df = find_beads_numpy(img, spec, detector="classical", rel=0.0)
    df["good"] = good_beads(df, spec)
    truth = np.column_stack([truth, np.full(len(truth), np.nan)])
    n, found, false, n_det, errors = bead_truth_score(
        df, truth, img.shape, min_radius=spec.min_radius_px, edge=spec.factor + 2
    )
    assert n >= 10 and found == n and false == 0
    assert np.median(errors[:, 0]) <= 0.3


def test_touching_beads_are_split():
    yy, xx = np.indices((120, 160), dtype=float)
    img = disc_model([60, 50, 25, 1.0, 50, 5], yy, xx) + disc_model([60, 98, 25, 1.0, 50, 0], yy, xx)
    cands = detect_beads(
        np.random.default_rng(0).poisson(img).astype(float), BeadSpec(pixel_size_um=1.0, diameter_um=50)
    )
    assert len(cands) == 2
    np.testing.assert_allclose(np.sort(cands.centres[:, 1]), [50, 98], atol=2.0)
    assert set(np.unique(cands.labels)) == {0, 1, 2}
    assert split_beads(np.zeros((10, 10), bool)).max() == 0


def test_blockwise_equals_whole_image(dask_client):
    img, truth = bead_scene(1, shape=(600, 520), n=20)
    thr = bead_threshold(img)  # one threshold for the whole plane, as the beads step does
    spec = BeadSpec(pixel_size_um=1.0, diameter_um=90.0)
    whole = find_beads_numpy(img, spec, threshold=thr)
    lazy = find_beads(da.from_array(img, chunks=(173, 211)), spec, block=256, threshold=thr)
    blocks = dask_client.compute(lazy).result()
    w = whole[whole["fit_ok"]][["y_px", "x_px"]].to_numpy()
    b = blocks[blocks["fit_ok"]][["y_px", "x_px"]].to_numpy()
    assert len(b) == len(w) >= 8  # the cuts of 13.5 px and more
    dist, _ = cKDTree(w).query(b)
    assert len(np.unique(_, return_counts=True)[1]) == len(b)  # same beads, each reported once
    # identical fits except where a neighbour cut by the block margin masks a slightly different rim
    assert np.median(dist) < 0.01 and np.mean(dist < 0.2) >= 0.9 and dist.max() < 2.0


def test_bad_inputs_and_channel_pick():
    spec = BeadSpec(pixel_size_um=1.0)
    with pytest.raises(ValueError, match="2-D"):
        detect_beads(np.zeros((2, 8, 8)), spec)
    with pytest.raises(ValueError, match="detector"):
        find_beads_numpy(np.zeros((32, 32)), spec, detector="magic")
    with pytest.raises(ValueError, match="2-D"):
        find_beads(da.zeros((2, 8, 8)), spec)
    with pytest.raises(ValueError, match="pixel_size_um"):
        BeadSpec(pixel_size_um=0.0)
    with pytest.raises(ValueError, match="min_cut_fraction"):
        BeadSpec(pixel_size_um=1.0, min_cut_fraction=1.0)
    assert pick_bead_channel(np.array([1.0, 7.0, 3.0])) == 1
    with pytest.raises(ValueError, match="non-empty"):
        pick_bead_channel(np.zeros(0))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        bead_channel_scores(np.zeros((8, 8)))
    assert len(find_beads_numpy(np.zeros((64, 64)), spec)) == 0


_SPEC = BeadSpec(pixel_size_um=1.0)  # synth's default sample: 1 µm px, beads of 80-100 µm


def _classical(plane):
    df = find_beads_numpy(plane, _SPEC, detector="classical")
    df["good"] = good_beads(df, _SPEC)
    return df


def test_on_synth_truth_planes():
    recall, precision, err = synth_score(_classical, min_radius=_SPEC.min_radius_px)
    assert recall >= 0.9 and precision >= 0.95
    assert err <= 0.3


def test_fits_cut_by_the_data_edge_are_marked():
    """The synthetic planes' beads the plane's edge (or a no-data region) cuts have ``rim_valid`` < 1, the
    whole ones 1; ``min_rim_valid`` = 1 takes the cut ones (only those) out of the good fits."""
    planes, _truth = synth_planes()
    n_cut = n_whole = 0
    for s in range(planes.shape[0]):
        h, w = planes.shape[2:]
        for plane in (planes[s, 1], np.where(np.arange(w) < w // 2, planes[s, 1], 0)):
            df = _classical(plane)  # the right half blanked: beads there are gone or cut by the zeros
            ok = df[df["good"]]
            r = ok["radius_px"] + np.maximum(2 * ok["width_px"], 2.0) + 3.0  # the rim's reach, 2 px by no data, 1
            x_end = w if plane is planes[s, 1] else w // 2
            inside = (ok["y_px"] - r >= 0) & (ok["y_px"] + r < h) & (ok["x_px"] - r >= 0) & (ok["x_px"] + r < x_end)
            cut = ok["rim_valid"] < 1.0
            assert not (inside & cut).any()  # a disc whose rim is well inside the data is never marked cut
            strict = good_beads(df, _SPEC, min_rim_valid=1.0)
            assert not (strict & (df["rim_valid"] < 1.0)).any() and not (strict & ~df["good"]).any()
            n_cut, n_whole = n_cut + int(cut.sum()), n_whole + int((~cut).sum())
    assert n_cut >= 3 and n_whole >= 1


def test_channel_pick_prefers_beads_over_nuclei():
    """Both channels show the beads; the nuclear channel's brightest objects are mostly nuclei."""
    planes, _ = synth_planes()
    h, w = (planes.shape[2] // 2) * 2, (planes.shape[3] // 2) * 2
    binned = planes[0][:, :h, :w].reshape(2, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    scores = bead_channel_scores(binned, scale=2.0)
    assert pick_bead_channel(scores) == 1 and scores[1] > 3 * scores[0]
    # Found by size in µm, even the nuclear channel's candidates are the beads, not its nuclei (5 µm).
    nuclear = detect_beads(planes[0, 0], _SPEC)
    beads = detect_beads(planes[0, 1], _SPEC)
    assert len(beads) >= 3 and np.median(beads.radii) > 15
    assert len(nuclear) <= len(beads) + 1 and (len(nuclear) == 0 or np.min(nuclear.radii) > 0.7 * _SPEC.min_radius_px)
    assert bead_threshold(planes[0, 1]) > np.percentile(planes[0, 1], 90)
