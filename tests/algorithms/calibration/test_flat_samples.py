"""The flat refined from seam samples the pair tasks take (:func:`seam_samples`, :func:`refine_flat_from_samples`).

The pair tasks keep only block means of both tiles over each matched seam; the client fits the flat
to them. Checked here: the samples see a known gain exactly where it is (sub-pixel shift, both
tiles); on simulated 3 x 3 grids (two sections of one instrument, each with its own scene) the
samples' flat is as good as :func:`refine_flat`'s from whole resampled overlaps; and the step's
joint refinement gives the same flat whether the sections come one run at a time (the first under
an earlier calibration) or in one run.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.calibration import (
    SEAM_SAMPLE_COLUMNS,
    estimate_calibration,
    refine_flat,
    refine_flat_from_samples,
    seam_samples,
)
from imaxt_pipeline.algorithms.optics import tile_coordinates
from imaxt_pipeline.algorithms.stitching import adjacent_pairs, solve_positions
from imaxt_pipeline.io import results
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.parallel.stitching import match_tiles
from imaxt_pipeline.steps.stitch import _refine_flat
from imaxt_pipeline.testing import band_error, one_slice_grid

PAIRS = adjacent_pairs(3, 3)


def test_seam_samples_see_a_known_gain():
    """Tile b shows the scene ``s`` px (sub-pixel) further on; both carry a gain: A / B = G(p) / G(p - s)."""
    rng = np.random.default_rng(0)
    scene = 400 + 40 * ndi.gaussian_filter(rng.normal(size=(160, 400)), 6) / 0.05  # 200-600
    h, w, shift = 128, 160, np.array([3.4, 118.7])  # b's pixel q sees what a's pixel q + shift sees
    v, u = tile_coordinates(np.arange(h), np.arange(w), (h, w))
    gain = np.exp(0.05 * v[:, None] + 0.08 * u[None, :] - 0.04 * u[None, :] ** 2)
    yy, xx = np.indices((h, w), dtype=float)
    a = gain * ndi.map_coordinates(scene, [yy + 10, xx + 10], order=3)
    b = gain * ndi.map_coordinates(scene, [yy + 10 + shift[0], xx + 10 + shift[1]], order=3)
    pa = np.array([[y, x] for y in (30.0, 60.0, 90.0) for x in (125.0, 140.0, 150.0)])
    out = seam_samples(
        a[None], b[None], (0, 0), (0, 0), np.ones((h, w)), np.ones((h, w)), pa, pa - shift, np.ones(len(pa)), block=8
    )
    assert out.shape[1] == len(SEAM_SAMPLE_COLUMNS) and len(out) > 30
    col = {c: out[:, k] for k, c in enumerate(SEAM_SAMPLE_COLUMNS)}
    np.testing.assert_allclose(col["y_ref"] - col["y_mov"], shift[0], atol=1e-9)
    np.testing.assert_allclose(col["x_ref"] - col["x_mov"], shift[1], atol=1e-9)

    def g_at(y, x):
        return ndi.map_coordinates(gain, [y, x], order=1)

    want = np.log(g_at(col["y_ref"], col["x_ref"]) / g_at(col["y_mov"], col["x_mov"]))
    got = np.log(col["value_ref"] / col["value_mov"])
    assert np.abs(got - want).max() < 0.004, np.abs(got - want).max()  # the gain varies ~1 % across a block
    assert np.abs(want).max() > 0.05  # the test has a gain difference to see


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    """Two sections of one simulated instrument (different scenes), calibrated and matched as the step does."""
    out = []
    for seed in (0, 1):
        p, truth, tiles, stage, _ = one_slice_grid(tmp_path_factory.mktemp(f"s{seed}"), seed=seed)
        out.append((p, truth, tiles, stage))
    p, truth = out[0][:2]
    both = np.concatenate([s[2] for s in out], axis=1)
    trim = int(p.overlap * p.tile_shape[1] / 4)
    cal_all = estimate_calibration(both, max_trim_px=trim)  # what calibrate gives once both have landed
    cal_first = estimate_calibration(out[0][2], max_trim_px=trim)  # ... and after the first alone
    matched = []
    for _, _, tiles, stage in out:
        ms = [
            match_tiles(lambda i, t=tiles: t[:, i], a, b, tuple(stage[b] - stage[a]), cal_all, flat_samples=True)
            for a, b in PAIRS
        ]
        matched.append((ms, solve_positions(ms, stage, tile_shape=p.tile_shape, fit_magnification=False)))
    return p, truth, [s[2] for s in out], cal_all, cal_first, matched


def test_samples_give_the_flat_whole_overlaps_give(sections):
    p, truth, tiles, cal, _, matched = sections
    conf = cal.confidence(p.tile_shape)
    for k, (ms, sol) in enumerate(matched):
        samples = np.concatenate([m.flat_samples for m in ms if m.flat_samples is not None])
        from_samples = refine_flat_from_samples(samples, cal, p.tile_shape)
        whole = refine_flat(cal.apply(tiles[k]), sol.positions, PAIRS, distortion=sol.distortion, confidence=conf)
        err0, err_whole, err_samples = (band_error(cal.flat[0] * g, truth.flat, p) for g in (1.0, whole, from_samples))
        print(
            f"\nsection {k}: flat error in the seam bands {err0:.4f} -> {err_whole:.4f} (whole overlaps), "
            f"{err_samples:.4f} (seam samples, {len(samples)} rows)"
        )
        assert err_samples < 0.5 * err0
        assert err_samples <= err_whole + 0.002
        assert band_error(from_samples, whole, p) < 0.005  # the two gains agree where the seams are


def _ctx(store, p):
    acq = SimpleNamespace(n_tiles=9, tile_shape=p.tile_shape)
    return SimpleNamespace(output=store, raw=SimpleNamespace(acquisition=acq), log=logging.getLogger("test"))


def _offset(ms, k):
    """Matches of a second section in a two-section run: tile indices offset by one section."""
    return [replace(m, reference=m.reference + 9 * k, moving=m.moving + 9 * k) for m in ms]


def test_sections_one_run_at_a_time_give_the_flat_of_one_run(sections, tmp_path):
    p, truth, _, cal_all, cal_first, matched = sections
    (m0, s0), (m1, s1) = matched
    # One run on sections [0, 1].
    joint = OutputStore(str(tmp_path / "joint.zarr"))
    sol = SimpleNamespace(pairs=pd.DataFrame({"used": np.concatenate([s0.pairs["used"], s1.pairs["used"]])}))
    flat_joint, _ = _refine_flat(_ctx(joint, p), cal_all, sol, m0 + _offset(m1, 1), [0, 1], 32)
    # Section 0 first (under the calibration of section 0 alone), then section 1 (calibration of both).
    live = OutputStore(str(tmp_path / "live.zarr"))
    first, written = _refine_flat(_ctx(live, p), cal_first, s0, m0, [0], 32)
    assert results.STITCH_FLAT_SAMPLES in written
    flat_live, _ = _refine_flat(_ctx(live, p), cal_all, s1, m1, [1], 32)
    assert sorted(live.read_table(results.STITCH_FLAT_SAMPLES)["slice"].unique()) == [0, 1]
    np.testing.assert_allclose(flat_live.flat, flat_joint.flat, rtol=1e-5)
    # ... and section 0's stored seams did count: section 1 alone gives another flat.
    alone, _ = _refine_flat(_ctx(OutputStore(str(tmp_path / "alone.zarr")), p), cal_all, s1, m1, [1], 32)
    assert np.abs(alone.flat / flat_joint.flat - 1).max() > 1e-4
    for before, after in ((cal_all, flat_joint), (cal_first, first)):
        assert after.source["flat"] == "estimated+overlaps"
        assert band_error(after.flat[0], truth.flat, p) < 0.5 * band_error(before.flat[0], truth.flat, p)
