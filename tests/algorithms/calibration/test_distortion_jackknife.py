"""The distortion fit's stated sigma (max of formal and a detector-block jackknife) covers its error.

Synthetic calibration matches: a 4 x 4 grid at 45 % overlap through a random cubic model plus a smooth field
outside the model (coherent over the detector: what makes the formal sigma too small), a 0.1 px stage.
"""

from __future__ import annotations

import numpy as np

from imaxt_pipeline.algorithms.calibration import fit_calibration_distortion
from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.algorithms.stitching import PairMatch, adjacent_pairs

SHAPE = (256, 256)


def _matches(rng, model, field_px):
    h, w = SHAPE
    ov = 0.45
    kf = rng.uniform(1.0, 2.5, 2)
    ph = rng.uniform(0, 2 * np.pi, 2)

    def disp(p):
        dy, dx = model.displacement(p[:, 0], p[:, 1], SHAPE)
        fy = field_px * np.sin(kf[0] * np.pi * p[:, 1] / w + ph[0]) * np.cos(np.pi * p[:, 0] / h)
        fx = field_px * np.cos(kf[1] * np.pi * p[:, 0] / h + ph[1]) * np.sin(np.pi * p[:, 1] / w)
        return np.stack([dy + fy, dx + fx], 1)

    true = np.array([(r * h * (1 - ov), c * w * (1 - ov)) for r in range(4) for c in range(4)])
    stage = true + rng.normal(0, 0.1, true.shape)
    out = []
    grid = np.arange(8, 256, 16.0)
    for a, b in adjacent_pairs(4, 4):
        d = true[b] - true[a]
        yy, xx = np.meshgrid(grid, grid, indexing="ij")
        pref = np.stack([yy.ravel(), xx.ravel()], 1)
        pref = pref[np.all((pref - d >= 8) & (pref - d < np.array(SHAPE) - 8), axis=1)]
        world = pref + disp(pref) - d
        pmov = world.copy()
        for _ in range(8):
            pmov = world - disp(pmov)
        pmov += rng.normal(0, 0.03, pmov.shape)
        shift = tuple(float(v) for v in np.mean(pref - pmov, axis=0))
        out.append(
            PairMatch(
                a, b, tuple(float(v) for v in stage[b] - stage[a]), shift, 0.9, True, pref, pmov, np.ones(len(pref))
            )
        )
    return out, stage


def test_the_stated_sigma_covers_the_error_where_the_formal_one_does_not():
    """Over random draws: the stated sigma is never below the formal one, and the errors over it are of a
    normal's size (median under 2) where over the formal one they are not. Not every draw is covered: the field's
    projection on the model is not noise the jackknife can see (worst z measured 10.8 on seeds 0-9, seed 8)."""
    z_formal, z_stated = [], []
    for seed in range(4):
        rng = np.random.default_rng([seed, 99])
        model = DistortionModel(
            mag_y=rng.normal(0, 1e-3), mag_x=rng.normal(0, 1e-3), k_y=rng.normal(0, 3e-3), k_x=rng.normal(0, 3e-3)
        )
        ms, stage = _matches(rng, model, field_px=float(rng.uniform(0.2, 0.5)))
        formal = fit_calibration_distortion(ms, stage, tile_shape=SHAPE, stage_sigma_px=0.1, jackknife=0)
        fit = fit_calibration_distortion(ms, stage, tile_shape=SHAPE, stage_sigma_px=0.1)
        assert fit.model == formal.model  # the jackknife states the sigma, it does not move the fit
        for k in ("mag_y", "mag_x", "k_y", "k_x"):
            assert fit.sigma[k] >= formal.sigma[k] > 0
            err = abs(getattr(fit.model, k) - getattr(model, k))
            z_formal.append(err / formal.sigma[k])
            z_stated.append(err / fit.sigma[k])
    assert np.median(z_stated) < 2.0 and np.max(z_stated) < np.max(z_formal), (z_stated, z_formal)
    assert np.max(z_formal) > 3.0  # the case is one the formal sigma misses


def test_describe_says_a_held_term_is_not_fitted_rather_than_exact():
    rng = np.random.default_rng(5)
    model = DistortionModel(mag_y=2e-3, mag_x=-1e-3, k_y=4e-3, k_x=-3e-3)
    matches, stage = _matches(rng, model, 0.0)
    fit = fit_calibration_distortion(matches, stage, tile_shape=SHAPE, stage_sigma_px=0.1, jackknife=0)
    lines = {line.split("=")[0].strip(): line for line in fit.describe().splitlines()[1:]}
    held = [k for k, s in zip(DistortionModel.COEFFICIENTS, fit.sigmas(), strict=True) if s == 0]
    # no quintic in the field: the probe judges it not significant, and only it is held
    assert held and set(held) <= set(DistortionModel.RADIAL[1]), held
    for k in DistortionModel.COEFFICIENTS:
        assert ("not fitted" in lines[k]) == (k in held), lines[k]
        assert ("±" in lines[k]) == (k not in held), lines[k]
    assert "± 0.000000" not in fit.describe()
