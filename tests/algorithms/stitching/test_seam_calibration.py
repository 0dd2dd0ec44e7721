"""The seams' common bias measured on a seam acquisition (``measure_seam_bias``), taken out (``correct_seam_profile``).

Synthetic matches: a grid of tiles through a known distortion, a precise stage (0.1 px), correspondences along
each seam carrying an injected bias profile (different per direction, varying along the seam) and matching
noise; random over seeds, tile shapes and overlaps.
"""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.algorithms.stitching import (
    PairMatch,
    SeamCalibration,
    adjacent_pairs,
    correct_seam_bias,
    correct_seam_profile,
    measure_seam_bias,
    overlap_px,
    solve_positions,
)

STAGE_SIGMA = 0.1


def seam_matches(
    rng, rows, cols, shape, overlap, model, bias, *, stage_sigma=STAGE_SIGMA, noise=0.05, block=16, jitter=2.0
):
    """(matches, stage, true positions): ``bias(o, along)`` (K, 2) is the offset bias at points ``along`` the seam."""
    h, w = shape
    step = (h * (1 - overlap), w * (1 - overlap))
    true = np.array([(r * step[0], c * step[1]) for r in range(rows) for c in range(cols)])
    true += rng.normal(0, jitter, true.shape)  # where the stage meant to go is not where it went: the record is precise
    stage = true + rng.normal(0, stage_sigma, true.shape)
    out = []
    for a, b in adjacent_pairs(rows, cols):
        o = 0 if abs(true[b, 1] - true[a, 1]) > abs(true[b, 0] - true[a, 0]) else 1
        ov = int(round(overlap * (w, h)[o]))
        along = np.arange(block / 2, (h, w)[o] - block / 2, block)
        across = np.arange((w, h)[o] - ov + block / 2, (w, h)[o] - block / 2, block)
        aa, cc = np.meshgrid(along, across, indexing="ij")
        pref = np.stack([aa.ravel(), cc.ravel()], 1) if o == 0 else np.stack([cc.ravel(), aa.ravel()], 1)
        dy, dx = model.displacement(pref[:, 0], pref[:, 1], shape)
        world = true[a] + pref + np.stack([dy, dx], 1)
        pmov = world - true[b]
        for _ in range(6):  # invert x + D(x) = world - P_b
            my, mx = model.displacement(pmov[:, 0], pmov[:, 1], shape)
            pmov = world - true[b] - np.stack([my, mx], 1)
        pmov = pmov - bias(o, pref[:, o]) + rng.normal(0, noise, pmov.shape)
        shift = tuple(float(v) for v in np.mean(pref - pmov, axis=0))
        out.append(
            PairMatch(
                a, b, tuple(float(v) for v in stage[b] - stage[a]), shift, 0.9, True, pref, pmov, np.ones(len(pref))
            )
        )
    return out, stage, true


def random_case(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.choice([256, 320, 384])),) * 2
    overlap = float(rng.uniform(0.08, 0.2))
    model = DistortionModel(mag_y=rng.normal(0, 1e-3), mag_x=rng.normal(0, 1e-3), k_y=rng.normal(0, 2e-3))
    amp = rng.uniform(0.1, 0.6, (2, 2))
    phase = rng.uniform(0, 2 * np.pi, (2, 2))
    length = shape[0]

    def bias(o, along):
        t = along / length
        return np.stack([amp[o, k] * np.cos(2 * np.pi * 0.5 * t + phase[o, k]) for k in range(2)], 1)

    return rng, shape, overlap, model, bias


@pytest.mark.parametrize("seed", range(5))
def test_the_profile_is_recovered_within_its_sigma(seed):
    rng, shape, overlap, model, bias = random_case(seed)
    ms, stage, _ = seam_matches(rng, 4, 4, shape, overlap, model, bias)
    cal = measure_seam_bias(ms, stage, model, tile_shape=shape)
    assert cal.profile.shape == cal.sigma.shape == (2, 8, 2) and cal.n_pairs == (12, 12)
    centres = (np.arange(8) + 0.5) * shape[0] / 8
    # the truth: the injected profile averaged over each bin (approximated by the centre; the bias is smooth)
    truth = np.stack([bias(o, centres) for o in range(2)])
    z = np.abs(cal.profile - truth) / cal.sigma
    assert z.max() < 5.0, (z.max(), cal.sigma.max())
    assert np.all(cal.sigma > 0) and cal.sigma.max() < 0.2  # a 0.1 px stage over 12 pairs
    np.testing.assert_allclose(cal.overlap_px, [round(overlap * shape[1])] * 2, atol=3.0)


@pytest.mark.parametrize("seed", range(5, 9))
def test_taking_it_out_leaves_no_bias_and_the_solve_no_shear(seed):
    rng, shape, overlap, model, bias = random_case(seed)
    cal = measure_seam_bias(*seam_matches(rng, 4, 4, shape, overlap, model, bias)[:2], model, tile_shape=shape)
    # production: the same optics and overlap, a coarse stage (3 px)
    ms, stage, true = seam_matches(rng, 4, 5, shape, overlap, model, bias, stage_sigma=3.0)
    ok, line = cal.applies(overlap_px(ms, shape), shape)
    assert ok and "applied" in line and "not applied" not in line
    fixed = correct_seam_profile(ms, cal)
    exact = measure_seam_bias(fixed, true, model, tile_shape=shape)  # against the true positions
    assert np.abs(exact.profile).max() < 5 * cal.sigma.max() + 0.03

    def err(matches, **kw):
        sol = solve_positions(
            matches, stage, tile_shape=shape, estimate_distortion=False, distortion=model, prior_sigma_px=3.0, **kw
        )
        d = sol.positions - true
        d -= d.mean(axis=0)
        return float(np.median(np.hypot(*d.T))), sol

    before, _ = err(ms)
    after, sol = err(fixed, seam_sigma=cal.seam_sigma())
    assert after < 0.1 and after < before, (before, after)
    assert np.all(np.isfinite(sol.position_sigma))


def test_one_bin_is_the_constant_bias():
    rng, shape, overlap, model, bias = random_case(11)
    ms, _, _ = seam_matches(rng, 3, 3, shape, overlap, model, bias)
    b = rng.normal(0, 0.3, (2, 2))
    one = SeamCalibration(b[:, None, :], np.full((2, 1, 2), 0.01), (40.0, 40.0), shape)
    for got, want in zip(correct_seam_profile(ms, one), correct_seam_bias(ms, b), strict=True):
        assert got.shift == want.shift
        np.testing.assert_array_equal(got.points_mov, want.points_mov)


@pytest.mark.parametrize("seed", range(3))
def test_another_overlap_or_tile_is_not_applied(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.choice([256, 512])),) * 2
    ov = float(rng.uniform(0.1, 0.2)) * shape[1]
    cal = SeamCalibration(np.zeros((2, 8, 2)), np.full((2, 8, 2), 0.01), (ov, ov), shape)
    near = ov + 0.009 * shape[1] * rng.choice([-1, 1])
    far = ov + 0.02 * shape[1] * rng.choice([-1, 1])
    assert cal.applies((near, near), shape)[0]
    ok, line = cal.applies((far, ov), shape)
    assert not ok and line.endswith("not applied") and f"{100 * ov / shape[1]:.1f} %" in line
    ok, line = cal.applies((ov, ov), (shape[0], shape[1] + 8))
    assert not ok and "not applied" in line and "tiles" in line


def test_too_few_pairs_is_refused():
    rng, shape, overlap, model, bias = random_case(3)
    ms, stage, _ = seam_matches(rng, 1, 3, shape, overlap, model, bias)  # one row: no vertical pair
    with pytest.raises(ValueError, match="0 vertical"):
        measure_seam_bias(ms, stage, model, tile_shape=shape)


# --- the stitch step's use of a file's seam bias (steps/_stitch_seam.py) ---


@pytest.mark.parametrize("seed", range(12, 15))
def test_the_stitch_step_applies_a_files_seam_bias_within_tolerance_and_says_so(tmp_path, seed):
    from imaxt_pipeline.algorithms.calibration import DistortionFit
    from imaxt_pipeline.algorithms.optics import Calibration
    from imaxt_pipeline.io.calibration_file import write_calibration_file
    from imaxt_pipeline.steps._stitch_seam import (
        apply_seam_calibration,
        calibration_file_url,
        load_seam_calibration,
        seam_estimate,
    )

    rng, shape, overlap, model, bias = random_case(seed)
    cal = measure_seam_bias(*seam_matches(rng, 4, 4, shape, overlap, model, bias)[:2], model, tile_shape=shape)
    path = tmp_path / "cal.npz"
    fit = DistortionFit(model, {}, np.zeros((16, 2)), 24, 24, 100, 0.02, 0.1)
    write_calibration_file(path, Calibration(dark=np.zeros(1)), fit, distortion_only=True, seam=cal)
    prov = [
        {"name": "calibrate", "status": "finished", "parameters": {"calibration_file": "old.npz"}},
        {"name": "calibrate", "status": "finished", "parameters": {"calibration_file": str(path)}},
        {"name": "stitch", "status": "running", "parameters": {}},
    ]
    url = calibration_file_url(prov)
    assert url == str(path) and calibration_file_url(prov[2:]) is None
    seam = load_seam_calibration(url, None, n_channels=1, tile_shape=shape)
    assert seam is not None
    # production: the overlap from the recorded steps (1 px stage) within 1 % of the tile of the calibrated one
    ms, stage, true = seam_matches(rng, 3, 4, shape, overlap, model, bias, stage_sigma=1.0, jitter=0.3)
    use = apply_seam_calibration(ms, seam, shape, file_distortion=True)
    assert use.seam_sigma == seam.seam_sigma() and "not applied" not in use.line
    assert seam_estimate(use)["source"] == "calibration file"
    sol = solve_positions(
        use.matches,
        stage,
        tile_shape=shape,
        estimate_distortion=False,
        distortion=model,
        prior_sigma_px=1.0,
        seam_sigma=use.seam_sigma,
    )
    d = sol.positions - true
    d -= d.mean(axis=0)
    assert np.median(np.hypot(*d.T)) < 0.1
    # another overlap (2 % of the tile off), or the distortion estimated here: the matches untouched, said in a line
    far, _, _ = seam_matches(rng, 3, 4, shape, overlap + 0.03, model, bias, stage_sigma=3.0)
    for got in (
        apply_seam_calibration(far, seam, shape, file_distortion=True),
        apply_seam_calibration(ms, seam, shape, file_distortion=False),
        apply_seam_calibration(ms, None, shape, file_distortion=True),
    ):
        assert got.seam_sigma is None and got.line.endswith("not applied") and seam_estimate(got) is None
        assert all(a is b for a, b in zip(got.matches, far if got.matches[0] is far[0] else ms, strict=True))
