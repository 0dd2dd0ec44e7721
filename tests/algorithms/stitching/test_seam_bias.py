"""The seams' common bias: measured along the seams, carried in each tile's sigma, taken out when calibrated."""

import numpy as np
import pytest

from imaxt_pipeline.algorithms.stitching import (
    PairMatch,
    adjacent_pairs,
    correct_seam_bias,
    describe_flags,
    solve_positions,
)
from imaxt_pipeline.algorithms.stitching._seam_bias import seam_levers, seam_variation
from imaxt_pipeline.testing import position_errors

TILE = 200.0
ALONG = np.linspace(0.05, 0.95, 16) * TILE  # the blocks' centres along every seam


def _field(rng, amplitude):
    """Per direction: (constant bias (2,), along-seam variation callable) alike for every seam of it."""
    out = []
    for _ in range(2):
        k = rng.uniform(0.7, 1.5, 2)
        phase = rng.uniform(0, 2 * np.pi, 2)
        bias = rng.normal(0.0, amplitude, 2)
        out.append(
            (
                bias,
                lambda s, k=k, phase=phase: amplitude * np.sqrt(2) * np.sin(2 * np.pi * np.outer(s, k) / TILE + phase),
            )
        )
    return out


def _matches(rng, rows, cols, *, field, noise=0.05, reverse=False):
    """Exact-but-noisy correspondences of a jittered grid; every seam of one direction biased by ``field``."""
    stage = np.array([(r, c) for r in range(rows) for c in range(cols)], float) * 0.9 * TILE
    true = stage + rng.normal(0, 2.0, stage.shape)
    ms = []
    for a, b in adjacent_pairs(rows, cols):
        if reverse and rng.random() < 0.5:
            a, b = b, a
        shift = true[b] - true[a]
        o = 0 if abs(shift[1]) > abs(shift[0]) else 1
        sign = 1.0 if shift[1 - o] > 0 else -1.0
        along = ALONG
        across = np.full(16, 0.95 * TILE if sign > 0 else 0.05 * TILE)
        pa = np.stack([along, across] if o == 0 else [across, along], axis=1)
        bias, vary = field[o]
        err = sign * (bias + vary(along)) + rng.normal(0, noise, pa.shape)
        ms.append(
            PairMatch(
                a,
                b,
                tuple(stage[b] - stage[a]),
                tuple(shift),
                0.9,
                True,
                pa,
                pa - shift - err,
                np.full(16, 1 / noise**2),
            )
        )
    return ms, stage, true


def _solve(ms, stage, **kw):
    return solve_positions(
        ms, stage, tile_shape=(int(TILE), int(TILE)), estimate_distortion=False, prior_sigma_px=5.0, **kw
    )


def _residuals(sol, ms):
    """Per pair: measured minus solved over each point (no distortion fitted: positions alone)."""
    return [m.points_ref - m.points_mov - (sol.positions[m.moving] - sol.positions[m.reference]) for m in ms]


def test_seam_variation_measures_the_field_along_the_seams_and_not_the_noise():
    for seed in range(6):
        rng = np.random.default_rng(seed)
        amp = float(rng.uniform(0.05, 0.4))
        ms, stage, _ = _matches(rng, 3, 4, field=_field(rng, amp), noise=0.05, reverse=True)
        sol = _solve(ms, stage)
        keep = [np.ones(len(m.point_weights), bool) for m in ms]
        est = seam_variation(ms, _residuals(sol, ms), keep, np.ones(len(ms), bool))
        np.testing.assert_allclose(est, sol.seam_variation)
        # a sine's rms over a seam a few periods long; the pair's mean removed
        assert np.all(est > 0.6 * amp) and np.all(est < 1.3 * amp), (seed, amp, est)
        rng = np.random.default_rng(100 + seed)
        flat = [(np.zeros(2), lambda s: np.zeros((len(s), 2)))] * 2
        ms, stage, _ = _matches(rng, 3, 4, field=flat, noise=float(rng.uniform(0.05, 0.3)))
        assert np.all(_solve(ms, stage).seam_variation < 0.03)


def test_the_levers_of_a_full_grid_are_its_columns_and_rows_about_the_centre():
    rng = np.random.default_rng(0)
    ms, stage, _ = _matches(rng, 3, 4, field=_field(rng, 0.1), reverse=True)
    lev = seam_levers(12, ms, np.ones(len(ms), bool), np.zeros(12, int))
    rows, cols = np.divmod(np.arange(12), 4)
    np.testing.assert_allclose(lev[:, 0], cols - 1.5, atol=1e-6)
    np.testing.assert_allclose(lev[:, 1], rows - 1.0, atol=1e-6)


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_common_seam_bias_shears_the_mosaic_within_each_tiles_reported_sigma(calibrated):
    """Over random grids, the seams' shared bias (which no loop sees) leaves tiles within their 3 sigma;
    told the bias is absent (``seam_sigma`` 0), the same solve claims far too much."""
    z, z_blind, words = [], [], []
    for seed in range(25):
        rng = np.random.default_rng(seed)
        rows, cols = (int(v) for v in rng.integers(2, 6, 2))
        amp = float(rng.uniform(0.05, 0.5))
        field = _field(rng, amp)
        ms, stage, true = _matches(rng, rows, cols, field=field, reverse=True)
        if calibrated:  # a calibration measured the bias to 10 %: what is left is 10 % of it
            # what a calibration measures: each direction's whole mean offset over the seam
            bias = np.array([f[0] + f[1](ALONG).mean(axis=0) for f in field])
            err = 0.1 * amp * rng.normal(size=(2, 2))
            ms = correct_seam_bias(ms, bias + err)
            sol = _solve(ms, stage, seam_sigma=(0.1 * amp, 0.1 * amp))
        else:
            sol = _solve(ms, stage)
        blind = _solve(ms, stage, seam_sigma=(0.0, 0.0))
        keep = np.ones(len(true), bool)
        z += list(position_errors(sol.positions, true, keep, scale=True) / sol.position_sigma)
        z_blind += list(position_errors(blind.positions, true, keep, scale=True) / blind.position_sigma)
        words += describe_flags(sol.flags, str)
    z, z_blind = np.array(z), np.array(z_blind)
    assert np.mean(z > 3) <= 0.02, np.quantile(z, [0.5, 0.99])
    if not calibrated:
        assert np.mean(z_blind > 3) > 0.3  # the test can fail: without the seam term the sigma is dishonest
        assert any("every seam biased alike by optics outside the model" in w for w in words)


def test_correct_seam_bias_gives_back_the_unbiased_solve():
    rng = np.random.default_rng(3)
    field = _field(rng, 0.3)
    const = [(b, lambda s: np.zeros((len(s), 2))) for b, _ in field]
    ms, stage, true = _matches(rng, 3, 3, field=const, noise=0.01, reverse=True)
    rng = np.random.default_rng(3)
    _field(rng, 0.3)
    clean, _, _ = _matches(rng, 3, 3, field=[(np.zeros(2), f) for _, f in const], noise=0.01, reverse=True)
    fixed = _solve(correct_seam_bias(ms, np.array([b for b, _ in field])), stage)
    ref = _solve(clean, stage)
    np.testing.assert_allclose(fixed.positions, ref.positions, atol=1e-6)
    biased = _solve(ms, stage)
    assert np.max(np.abs(biased.positions - ref.positions - (biased.positions - ref.positions).mean(0))) > 0.1
