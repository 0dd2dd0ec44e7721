"""Global positions + distortion from pairwise matches, against synthetic truth."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.algorithms.stitching import PairMatch, adjacent_pairs, match_pair, solve_positions
from imaxt_pipeline.testing import grid_tiles

MODEL = DistortionModel(k_y=0.006, k_x=0.006)  # ~1.9 px at the corners of a 192 px tile


def _errors(pos, true):
    err = pos - true
    err -= err.mean(axis=0)  # the slice's common translation is free
    return np.hypot(err[:, 0], err[:, 1])


def _matches(tiles, stage, rows, cols):
    return [
        match_pair(tiles[a], tiles[b], stage[b] - stage[a], reference=a, moving=b)
        for a, b in adjacent_pairs(rows, cols)
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_distortion_fit_beats_stage_and_rigid_solve(seed):
    tiles, true, stage = grid_tiles(seed, rows=3, cols=3, model=MODEL)
    matches = _matches(tiles, stage, 3, 3)
    sol = solve_positions(matches, stage, tile_shape=(192, 192), fit_magnification=False)
    err = _errors(sol.positions, true)
    rigid = _errors(solve_positions(matches, stage, tile_shape=(192, 192), estimate_distortion=False).positions, true)
    assert np.median(err) <= 0.2 and err.max() <= 0.5, err
    assert np.median(rigid) > 3 * np.median(err)  # uncorrected distortion shrinks the grid
    assert np.median(_errors(stage, true)) > 1.0
    assert sol.distortion.k_x == pytest.approx(MODEL.k_x, abs=0.001)
    assert sol.distortion.k_y == pytest.approx(MODEL.k_y, abs=0.001)
    stats = sol.residual_stats()
    assert stats["n_used"] == 12 and stats["median_px"] < 0.1


def test_empty_agarose_pairs_fall_back_to_stage():
    tiles, true, stage = grid_tiles(3, rows=3, cols=3, model=MODEL, empty_cols=1)
    matches = _matches(tiles, stage, 3, 3)
    ok = [m for m in matches if m.ok]
    assert 0 < len(ok) < len(matches)  # the pairs inside the empty column carry no information
    sol = solve_positions(matches, stage, tile_shape=(192, 192), fit_magnification=False)
    informative = sorted({i for m in ok for i in (m.reference, m.moving)})
    err = _errors(sol.positions[informative], true[informative])
    assert np.median(err) <= 0.3
    assert not sol.pairs.loc[~sol.pairs["ok"], "used"].any()


def test_outlier_pair_is_rejected():
    tiles, true, stage = grid_tiles(4, rows=3, cols=3, model=MODEL)
    matches = _matches(tiles, stage, 3, 3)
    bad = matches[5]
    matches[5] = PairMatch(
        bad.reference,
        bad.moving,
        bad.expected,
        bad.shift,
        bad.ncc,
        True,
        bad.points_ref,
        bad.points_mov - np.array([0.0, 6.0]),
        bad.point_weights,
    )
    sol = solve_positions(matches, stage, tile_shape=(192, 192), fit_magnification=False)
    assert sol.rejected >= 1
    assert not sol.pairs.loc[5, "used"]
    assert np.median(_errors(sol.positions, true)) <= 0.2


def test_fixed_distortion_is_kept_and_bad_index_raises():
    tiles, true, stage = grid_tiles(0, rows=2, cols=2, model=MODEL)
    matches = _matches(tiles, stage, 2, 2)
    sol = solve_positions(matches, stage, tile_shape=(192, 192), estimate_distortion=False, distortion=MODEL)
    assert sol.distortion == MODEL
    assert np.median(_errors(sol.positions, true)) <= 0.2
    with pytest.raises(ValueError, match="outside"):
        solve_positions(matches, stage[:2], tile_shape=(192, 192))


def _exact_matches(true, model, shape, pairs, rng, noise_px):
    """Correspondences on a 6 x 6 grid of scene points in each overlap, with Gaussian noise on ``p_b``."""
    from imaxt_pipeline.algorithms.optics import detector_coordinates

    out = []
    for a, b in pairs:
        lo = np.maximum(true[a], true[b]) + 8
        hi = np.minimum(true[a], true[b]) + np.array(shape) - 8
        ys, xs = np.meshgrid(*(np.linspace(lo[i], hi[i], 6) for i in range(2)), indexing="ij")
        pts = [
            np.stack(
                detector_coordinates(ys.ravel() - true[t, 0], xs.ravel() - true[t, 1], shape, model, iterations=30),
                axis=1,
            )
            for t in (a, b)
        ]
        pb = pts[1] + rng.normal(0, noise_px, pts[1].shape)
        shift = tuple(np.mean(pts[0] - pb, axis=0))
        out.append(PairMatch(a, b, shift, shift, 1.0, True, pts[0], pb, np.full(len(pb), noise_px**-2)))
    return out


def test_fitted_magnification_is_unbiased_within_stage_noise():
    """mag is fixed only by the stage: its error must be the stage noise's, not a shrink of the world.

    For exact data the least-squares magnification error is the slope of the
    stage error against the tile positions, ``sum(e t) / sum(t t)`` per axis
    (``t`` centred), of standard deviation ``sigma_stage / sqrt(sum(t t))``:
    0.53 % here. Point noise (0.05 px, the weights stated) must not bias it.
    """
    shape, rows, cols, sigma = (256, 256), 3, 3, 3.0
    model = DistortionModel(mag_y=0.0015, mag_x=-0.0015, k_y=0.006, k_x=0.0077)
    pairs = adjacent_pairs(rows, cols)
    grid = np.stack(np.meshgrid(np.arange(rows) * 230.0, np.arange(cols) * 230.0, indexing="ij"), -1).reshape(-1, 2)
    tc = grid - grid.mean(axis=0)
    expected_sigma = sigma / np.sqrt(np.sum(tc**2, axis=0))
    z = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        true = grid + 40 + rng.normal(0, 1.0, grid.shape)
        stage = true + rng.normal(0, sigma, true.shape)
        sol = solve_positions(
            _exact_matches(true, model, shape, pairs, rng, 0.05),
            stage,
            tile_shape=shape,
            fit_magnification=True,
            prior_sigma_px=sigma,
        )
        d, s = sol.distortion, sol.distortion_sigma
        t = true - true.mean(axis=0)
        oracle = np.sum((stage - true) * t, axis=0) / np.sum(t * t, axis=0)
        got = np.array([d.mag_y - model.mag_y, d.mag_x - model.mag_x])
        np.testing.assert_allclose(got, oracle, atol=0.05 * expected_sigma.max())
        np.testing.assert_allclose([s["mag_y"], s["mag_x"]], expected_sigma, rtol=0.05)
        assert d.k_y == pytest.approx(model.k_y, abs=3e-4) and d.k_x == pytest.approx(model.k_x, abs=3e-4)
        assert s["k_x"] < 3e-4
        z.append(got / expected_sigma)
    z = np.array(z)
    assert np.all(np.abs(z) < 4.5)
    assert np.all(np.abs(z.mean(axis=0)) < 3 / np.sqrt(len(z)))  # no shrink bias (was -4 to -8 sigma)


def test_accurate_stage_pins_magnification():
    """A calibration-like acquisition (0.2 px stage, 5 x 5 tiles, 45 % overlap) recovers mag to 0.02 %."""
    shape, sigma = (256, 256), 0.2
    model = DistortionModel(mag_y=0.0015, mag_x=-0.0015, k_y=0.006, k_x=0.0077)
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(np.arange(5) * 141.0, np.arange(5) * 141.0, indexing="ij"), -1).reshape(-1, 2)
    true = grid + 40
    stage = true + rng.normal(0, sigma, true.shape)
    sol = solve_positions(
        _exact_matches(true, model, shape, adjacent_pairs(5, 5), rng, 0.05),
        stage,
        tile_shape=shape,
        fit_magnification=True,
        prior_sigma_px=sigma,
    )
    s = sol.distortion_sigma
    assert s["mag_y"] == pytest.approx(sigma / np.sqrt(5 * 10 * 141.0**2), rel=0.05)
    assert abs(sol.distortion.mag_y - model.mag_y) < 3 * s["mag_y"]
    assert abs(sol.distortion.mag_x - model.mag_x) < 3 * s["mag_x"]
    err = sol.positions - true
    assert np.abs(err - err.mean(axis=0)).max() < 0.3


@pytest.mark.parametrize(("stage_sigma", "grid", "applied"), [(0.2, 5, True), (5.0, 2, False)])
def test_magnification_from_the_stage_is_applied_only_when_significant(stage_sigma, grid, applied):
    """Without ``fit_magnification`` the solve still estimates mag from the stage statistics, with its sigma.

    An accurate stage (0.2 px, 5 x 5 tiles) makes 0.5 % significant: applied, the positions then hold the
    translation-only error it predicts. A coarse stage on 2 x 2 tiles cannot: nominal (0) kept, reported.
    """
    shape = (256, 256)
    model = DistortionModel(mag_y=0.005, mag_x=-0.004, k_y=0.006, k_x=0.0077)
    step = 141.0 if grid == 5 else 230.0
    z = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        cells = np.stack(np.meshgrid(*[np.arange(grid) * step] * 2, indexing="ij"), -1).reshape(-1, 2)
        true = cells + 40 + rng.normal(0, 1.0, cells.shape)
        stage = true + rng.normal(0, stage_sigma, true.shape)
        sol = solve_positions(
            _exact_matches(true, model, shape, adjacent_pairs(grid, grid), rng, 0.05),
            stage,
            tile_shape=shape,
            fit_magnification=False,
            prior_sigma_px=stage_sigma,
        )
        mag = sol.magnification
        assert mag.applied == (applied, applied)
        got = np.array(mag.mag) - [model.mag_y, model.mag_x]
        t = true - true.mean(axis=0)
        oracle = np.sum((stage - true) * t, axis=0) / np.sum(t * t, axis=0)  # what this stage noise implies
        # the joint fit's own freedom (k~ against the scale of 4 tiles) moves it by up to ~0.5 sigma from the oracle
        np.testing.assert_allclose(got, oracle, atol=0.75 * max(mag.mag_sigma))
        z.append(got / np.array(mag.mag_sigma))
        lever = np.hypot(*(true - true.mean(axis=0)).T)
        expected = stage_sigma / np.sqrt(np.sum((true - true.mean(axis=0)) ** 2, axis=0))
        np.testing.assert_allclose(mag.mag_sigma, expected, rtol=0.5)
        err = _errors(sol.positions, true)
        if applied:
            assert (sol.distortion.mag_y, sol.distortion.mag_x) == mag.mag
            assert np.median(err) <= 3 * mag.predicted_px + 0.05
            assert sol.distortion.k_x == pytest.approx(model.k_x, abs=3e-4)
        else:
            assert sol.distortion.mag_y == sol.distortion.mag_x == 0.0
            # the nominal scale is off by the true mag: the error it leaves, within what the sigma predicts
            assert np.median(err) == pytest.approx(np.median(lever) * 0.0045, rel=0.5)
            assert mag.predicted_px > np.median(err)
    assert np.all(np.abs(z) < 4.5)


def _rotated_grid(grid, step, seed, stage_sigma, sections=1):
    """True top-left positions of ``sections`` jittered grids (each its own offset) and their stage positions."""
    rng = np.random.default_rng(seed)
    cells = np.stack(np.meshgrid(*[np.arange(grid) * step] * 2, indexing="ij"), -1).reshape(-1, 2)
    true = np.concatenate([cells + rng.uniform(0, 300, 2) + rng.normal(0, 1.0, cells.shape) for _ in range(sections)])
    return rng, true, true + rng.normal(0, stage_sigma, true.shape)


def _section_errors(pos, true, n_t):
    return np.concatenate([_errors(pos[k : k + n_t], true[k : k + n_t]) for k in range(0, len(true), n_t)])


def _rotation_matches(true, model, shape, grid, sections, rng, noise_px=0.05):
    """:func:`_exact_matches` for every pair of ``sections`` grids, all points inverted at once (fast)."""
    from imaxt_pipeline.algorithms.optics import detector_coordinates

    pairs = [(a + k * grid * grid, b + k * grid * grid) for k in range(sections) for a, b in adjacent_pairs(grid, grid)]
    ab = np.array(pairs)
    lo = np.maximum(true[ab[:, 0]], true[ab[:, 1]]) + 8
    hi = np.minimum(true[ab[:, 0]], true[ab[:, 1]]) + np.array(shape) - 8
    fy, fx = (f.ravel() for f in np.meshgrid(np.linspace(0, 1, 6), np.linspace(0, 1, 6), indexing="ij"))
    ys = (lo[:, 0, None] + (hi - lo)[:, 0, None] * fy)[:, None]  # (pairs, 1, 36) scene points
    xs = (lo[:, 1, None] + (hi - lo)[:, 1, None] * fx)[:, None]
    py, px = detector_coordinates(ys - true[ab, 0][..., None], xs - true[ab, 1][..., None], shape, model, iterations=12)
    out = []
    for i, (a, b) in enumerate(pairs):
        pa = np.stack([py[i, 0], px[i, 0]], axis=1)
        pb = np.stack([py[i, 1], px[i, 1]], axis=1) + rng.normal(0, noise_px, pa.shape)
        shift = tuple(np.mean(pa - pb, axis=0))
        out.append(PairMatch(a, b, shift, shift, 1.0, True, pa, pb, np.full(len(pb), noise_px**-2)))
    return out


THETA = np.radians(0.3)  # a camera mounted 0.3 degrees off the stage axes: 2.4 px over a 460 px tile step
ROTATED = DistortionModel(mag_y=0.001, k_y=0.004, k_x=0.005, shear_yx=THETA, shear_xy=-THETA)


def test_camera_rotation_from_the_stage_is_applied_on_a_large_grid():
    """6 x 6 tiles, 3 px stage: 0.3 degrees is ~8 sigma, applied; the positions then hold the error it predicts."""
    shape, grid, sigma = (512, 512), 6, 3.0
    rng, true, stage = _rotated_grid(grid, 460.0, 0, sigma)
    ms = _rotation_matches(true, ROTATED, shape, grid, 1, rng)
    sol = solve_positions(ms, stage, tile_shape=shape, fit_magnification=False, prior_sigma_px=sigma)
    est = sol.magnification
    assert est.shear_applied == (True, True) and est.shear_significant == (True, True)
    assert (sol.distortion.shear_yx, sol.distortion.shear_xy) == est.shear  # the positions are solved under it
    for got, true_v, s in zip(est.shear, (THETA, -THETA), est.shear_sigma, strict=True):
        assert abs(got - true_v) < 4 * s
    assert est.rotation_deg == pytest.approx(0.3, abs=4 * np.degrees(max(est.shear_sigma)))
    err = _errors(sol.positions, true)
    assert np.median(err) <= 3 * est.linear_predicted_px + 0.05
    assert np.median(err) < 1.0 < 0.5 * np.median(np.hypot(*(true - true.mean(axis=0)).T)) * THETA
    rec = est.as_dict()
    assert rec["shear_applied"] == [True, True] and rec["rotation_deg"] == pytest.approx(est.rotation_deg)
    assert rec["predicted_shear_error_px"] == pytest.approx(est.shear_predicted_px)
    # the map from a calibration file is never replaced: reported, not applied, and the file's map gives truth
    fixed = solve_positions(ms, stage, tile_shape=shape, estimate_distortion=False, distortion=ROTATED)
    assert fixed.magnification.shear_applied == (False, False) and fixed.distortion == ROTATED
    assert _errors(fixed.positions, true).max() < 0.05
    # fit_magnification fits the whole linear map jointly, shear included
    joint = solve_positions(ms, stage, tile_shape=shape, fit_magnification=True, prior_sigma_px=sigma)
    assert joint.magnification.shear_applied == (True, True)
    assert abs(joint.distortion.shear_yx - THETA) < 4 * joint.distortion_sigma["shear_yx"]


def test_camera_rotation_on_a_2x2_grid_is_not_applied_and_its_error_is_reported():
    """2 x 2 tiles, 3 px stage: the rotation's sigma (~6e-3) exceeds 0.3 degrees; nominal kept, error reported."""
    shape, grid, sigma = (512, 512), 2, 3.0
    for seed in range(3):
        rng, true, stage = _rotated_grid(grid, 460.0, seed, sigma)
        sol = solve_positions(
            _rotation_matches(true, ROTATED, shape, grid, 1, rng),
            stage,
            tile_shape=shape,
            fit_magnification=False,
            prior_sigma_px=sigma,
        )
        est = sol.magnification
        assert est.shear_applied == (False, False) and sol.distortion.shear_yx == sol.distortion.shear_xy == 0.0
        assert min(est.shear_sigma) > THETA / 4.9
        err = _errors(sol.positions, true)
        # the rotation left in: 0.3 degrees at each tile's 325 px lever arm, and the reported error covers it
        assert np.median(err) == pytest.approx(325 * THETA, rel=0.35)
        assert est.shear_predicted_px > np.median(err) / 3 and np.isfinite(est.linear_predicted_px)
        assert est.as_dict()["shear_significant"] == [False, False]


def test_shear_sigma_of_the_solve_matches_its_scatter_over_random_grids():
    """(estimate - truth) / sigma of the off-diagonal terms of the joint solve is a unit normal over 50 grids."""
    shape, z = (256, 256), []
    for seed in range(50):
        rng = np.random.default_rng(100 + seed)
        grid, sections = int(rng.integers(2, 5)), int(rng.integers(1, 4))
        sigma = float(rng.uniform(1.0, 6.0))
        shear = rng.uniform(-3e-3, 3e-3, 2)
        model = DistortionModel(k_y=0.004, k_x=0.005, shear_yx=shear[0], shear_xy=shear[1])
        rng, true, stage = _rotated_grid(grid, 230.0, seed, sigma, sections)
        sol = solve_positions(
            _rotation_matches(true, model, shape, grid, sections, rng),
            stage,
            tile_shape=shape,
            fit_magnification=False,
            prior_sigma_px=sigma,
        )
        est = sol.magnification
        z.append((np.array(est.shear) - shear) / np.array(est.shear_sigma))
    z = np.concatenate(z)
    print(f"shear z over {len(z)} terms: mean {z.mean():+.3f}, std {z.std():.3f}, max |z| {np.abs(z).max():.2f}")
    assert abs(z.mean()) < 0.25, z.mean()
    assert 0.75 < z.std() < 1.25, z.std()
    assert np.abs(z).max() < 4.5


def test_quintic_radial_terms_are_fitted_where_significant_and_only_there():
    """3 x 3 tiles of 512 px with 5th-order terms (2-3 px at the corners), asked for: estimated within 4 sigma
    and applied; the cubic alone (the default) leaves ~3 px (a scale the 5th order projects onto). Without
    them in the data: not applied."""
    shape, grid = (512, 512), 3
    quintic = DistortionModel(k_y=0.01, k_x=0.012, k5_y=0.004, k5_x=-0.003)
    for seed in range(2):
        for model in (quintic, DistortionModel(k_y=0.01, k_x=0.012)):
            rng, true, stage = _rotated_grid(grid, 460.0, seed, 3.0)
            ms = _rotation_matches(true, model, shape, grid, 1, rng)
            sol = solve_positions(
                ms, stage, tile_shape=shape, fit_magnification=False, prior_sigma_px=3.0, quintic=True
            )
            sig = sol.distortion_sigma
            err = _errors(sol.positions, true)
            if model is quintic:
                for k in ("k5_y", "k5_x"):
                    assert sig[k] > 0 and abs(getattr(sol.distortion, k) - getattr(model, k)) < 4 * sig[k], (k, sol)
                # the default (off): the cubic alone
                cubic = solve_positions(ms, stage, tile_shape=shape, fit_magnification=False, prior_sigma_px=3.0)
                assert cubic.distortion.k5_y == cubic.distortion.k5_x == 0.0
                assert np.median(err) < 0.15 < 1.0 < np.median(_errors(cubic.positions, true))
            else:
                assert sol.distortion.k5_y == sol.distortion.k5_x == 0.0 and sig["k5_y"] == sig["k5_x"] == 0.0
                assert np.median(err) < 0.05


def test_a_calibration_acquisition_fits_the_quintic_terms():
    """4 x 4 tiles of 512 px at 41 % overlap, 0.2 px stage: the calibration fit (quintic on) recovers them."""
    from imaxt_pipeline.algorithms.calibration import fit_calibration_distortion

    for model in (DistortionModel(k_y=0.01, k_x=0.012, k5_y=0.004, k5_x=-0.003), DistortionModel(k_y=0.01)):
        rng, true, stage = _rotated_grid(4, 300.0, 0, 0.2)
        ms = _rotation_matches(true, model, (512, 512), 4, 1, rng)
        fit = fit_calibration_distortion(ms, stage, tile_shape=(512, 512), stage_sigma_px=0.2)
        for k in ("k5_y", "k5_x"):
            if getattr(model, k):
                assert abs(getattr(fit.model, k) - getattr(model, k)) < max(4 * fit.sigma[k], 2e-4), fit.describe()
            else:
                assert getattr(fit.model, k) == 0.0 and fit.sigma[k] == 0.0
