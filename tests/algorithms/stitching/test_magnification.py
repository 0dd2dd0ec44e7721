"""Magnification (and shear) from the stage statistics: its sigma against truth over randomised grids."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.stitching import stage_magnification


def _grid(rows: int, cols: int, step: float, sections: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Detector-frame positions (with placement jitter) of ``sections`` grids and their section index."""
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    one = np.stack([rr, cc], axis=-1).reshape(-1, 2) * step
    q = np.concatenate([one + rng.normal(0, 3.0, one.shape) + rng.uniform(-500, 500, 2) for _ in range(sections)])
    return q, np.repeat(np.arange(sections), rows * cols)


def test_sigma_matches_the_scatter_of_the_estimate_over_random_grids() -> None:
    """(estimate - truth) / sigma is a unit normal over 400 grids of 2x2 to 10x10 tiles, 1-4 sections."""
    z_mag, z_shear = [], []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        rows, cols, sections = int(rng.integers(2, 11)), int(rng.integers(2, 11)), int(rng.integers(1, 5))
        tile = float(rng.choice([256, 512, 1024, 2048]))
        q, groups = _grid(rows, cols, tile * (1 - rng.uniform(0.05, 0.2)), sections, rng)
        sigma = rng.uniform(1.0, 10.0)
        mag = rng.uniform(-3e-3, 3e-3, 2)
        shear = rng.uniform(-1e-3, 1e-3, 2)
        a = np.array([[1 + mag[0], shear[1]], [shear[0], 1 + mag[1]]])  # stage = q @ a
        offsets = rng.uniform(-1e3, 1e3, (sections, 2))[groups]  # every section its own translation
        stage = q @ a + offsets + rng.normal(0, sigma, q.shape)
        est = stage_magnification(q, stage, groups, np.ones(len(q), bool), stage_sigma_px=sigma)
        z_mag.append((np.array(est.mag) - mag) / np.array(est.mag_sigma))
        z_shear.append((np.array(est.shear) - shear) / np.array(est.shear_sigma))
    for z in (np.concatenate(z_mag), np.concatenate(z_shear)):
        assert abs(z.mean()) < 0.12, z.mean()
        assert 0.85 < z.std() < 1.15, z.std()
        assert np.abs(z).max() < 4.5


def test_sigma_is_the_stage_error_over_the_lever_arms_and_falls_with_sections() -> None:
    """The issue's figure: one 10 x 10 section of 2048 px tiles (10 % overlap) at 6 px stage noise, ~1e-4."""
    rng = np.random.default_rng(0)
    step = 2048 * 0.9
    sig = []
    for sections in (1, 4, 16):
        q, groups = _grid(10, 10, step, sections, rng)
        stage = q + rng.normal(0, 6.0, q.shape)
        est = stage_magnification(q, stage, groups, np.ones(len(q), bool), stage_sigma_px=6.0)
        lever = np.concatenate([q[groups == k] - q[groups == k].mean(axis=0) for k in range(sections)])
        expected = 6.0 / np.sqrt(np.sum(lever**2, axis=0))
        np.testing.assert_allclose(est.mag_sigma, expected, rtol=0.2)
        sig.append(est.mag_sigma[0])
        # never applied without cause: no magnification in the data
        assert not any(est.applied) or max(abs(m) / s for m, s in zip(est.mag, est.mag_sigma, strict=True)) > 3
    assert sig[0] == pytest.approx(1.13e-4, rel=0.2)
    assert sig[1] == pytest.approx(sig[0] / 2, rel=0.25) and sig[2] == pytest.approx(sig[0] / 4, rel=0.25)


def test_significant_magnification_is_applied_only_where_allowed() -> None:
    rng = np.random.default_rng(3)
    q, groups = _grid(6, 6, 900.0, 2, rng)
    stage = q * (1 + 2e-3) + rng.normal(0, 0.5, q.shape)  # 0.2 % with a 0.5 px stage: ~40 sigma
    est = stage_magnification(q, stage, groups, np.ones(len(q), bool), stage_sigma_px=5.0)
    assert est.applied == (True, True) and est.significant == (True, True)
    np.testing.assert_allclose(est.mag, 2e-3, atol=4 * max(est.mag_sigma))
    # the measured scatter (0.5 px, 136 dof) outweighs the stated 5 px
    assert est.stage_sigma_px < 1.0
    fixed = stage_magnification(q, stage, groups, np.ones(len(q), bool), stage_sigma_px=5.0, allow=False)
    assert fixed.applied == (False, False) and fixed.significant == (True, True)
    record = est.as_dict()
    assert record["applied"] == [True, True] and record["predicted_translation_error_px"] == est.predicted_px


def test_an_implausible_linear_map_is_never_applied_however_significant() -> None:
    """Beyond 2 % (a magnification, or a camera turned ~1.1 degrees) the stage statistics are not believed."""
    rng = np.random.default_rng(4)
    q, groups = _grid(6, 6, 900.0, 2, rng)
    turn = np.array([[1.0, 0.03], [-0.03, 1.0]])  # a 1.7 degree turn, and 3 % on y
    stage = q @ turn.T * np.array([1.03, 1.0]) + rng.normal(0, 0.5, q.shape)
    est = stage_magnification(q, stage, groups, np.ones(len(q), bool), stage_sigma_px=5.0)
    assert est.significant[0] and est.shear_significant == (True, True)
    assert est.applied == (False, False) and est.shear_applied == (False, False)
    np.testing.assert_allclose(est.mag[0], 0.03, atol=5e-3)  # measured and reported, just not applied
    plausible = stage_magnification(
        q, q * np.array([1.015, 1.0]) + rng.normal(0, 0.5, q.shape), groups, np.ones(len(q), bool), stage_sigma_px=5.0
    )
    assert plausible.applied == (True, False)


def test_tiles_placed_by_the_stage_are_left_out_and_a_single_row_fixes_one_axis() -> None:
    rng = np.random.default_rng(4)
    q, groups = _grid(3, 3, 500.0, 1, rng)
    stage = q * 1.01
    use = np.ones(9, bool)
    use[4] = False  # a tile placed by the stage (its detector position is the stage's): left out
    q2 = q.copy()
    q2[4] = stage[4]
    est = stage_magnification(q2, stage, groups, use, stage_sigma_px=2.0)
    np.testing.assert_allclose(est.mag, 0.01, atol=1e-9)
    assert est.n_tiles == 8
    # one row: x from its 2500 px of lever, y only from the 3 px jitter (a sigma that says so)
    qr, gr = _grid(1, 6, 500.0, 1, rng)
    row = stage_magnification(qr, qr * 1.01, gr, np.ones(6, bool), stage_sigma_px=2.0)
    assert row.applied == (False, True) and row.mag_sigma[0] > 10 * row.mag_sigma[1]
    one = stage_magnification(q[:1], stage[:1], groups[:1], np.ones(1, bool), stage_sigma_px=2.0)
    assert one.applied == (False, False) and np.isinf(one.mag_sigma).all() and one.mag == (0.0, 0.0)


def test_a_joint_sigma_smaller_than_the_regressions_is_not_believed() -> None:
    """The joint solve's value is kept, its sigma floored by the regression's over the tiles used: a joint
    sigma made small by the stage priors of tiles on false matches (draw 70) must not apply a shear."""
    rng = np.random.default_rng(5)
    q, groups = _grid(2, 2, 486.0, 2, rng)
    stage = q + rng.normal(0, 5.0, q.shape)
    alone = stage_magnification(q, stage, groups, np.ones(len(q), bool), stage_sigma_px=5.0)
    joint = ([0.0, 0.0, -0.012, 0.0], [1e-4, 1e-4, 1.6e-3, 1e-4])  # -1.2 % at "7.5 sigma"
    est = stage_magnification(q, stage, groups, np.ones(len(q), bool), stage_sigma_px=5.0, joint=joint)
    assert est.shear == (-0.012, 0.0)
    np.testing.assert_allclose(est.shear_sigma, alone.shear_sigma)
    np.testing.assert_allclose(est.mag_sigma, alone.mag_sigma)
    assert est.shear_applied == (False, False) and est.applied == (False, False)
    # a joint sigma larger than the regression's stands
    wide = ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    assert stage_magnification(q, stage, groups, np.ones(len(q), bool), stage_sigma_px=5.0, joint=wide).mag_sigma == (
        1.0,
        1.0,
    )
