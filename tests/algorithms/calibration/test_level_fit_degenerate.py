"""The level fit at a dark where no positive flat fits the blocks: that dark is ruled out, not a crash.

``data/level_fit_draw22.npz`` holds the inputs of the level fit (block medians of 25 tiles of 1024 px, their
classes and the flat basis) that ``estimate_calibration`` built for the randomised instrument of seed 22's
calibration acquisition (``benchmarks/stitching_calfile.py``): its dark search reached the faintest blocks,
the flat coefficients diverged, and ``np.linalg.lstsq`` raised ``LinAlgError: SVD did not converge``.
"""

from pathlib import Path

import numpy as np

from imaxt_pipeline.algorithms.calibration._level_fit import LevelFit

DATA = Path(__file__).parent / "data" / "level_fit_draw22.npz"


def _fit() -> LevelFit:
    with np.load(DATA) as z:
        d = {k: z[k] for k in z.files}
    return LevelFit(d["data"], d["cls"], d["region"], d["robust"], d["basis"], d["coef"], d["fb"], float(d["dark"]))


def test_best_dark_of_the_degenerate_acquisition_is_below_its_faintest_blocks():
    fit = _fit()
    best = fit.best_dark()
    assert best is not None and np.isfinite(best)
    low = fit.y[fit.cls_row == 0]
    # a dark is what the sensor reads with no light: never above the faintest blocks it was fitted to
    assert best < np.percentile(low, 1.0)
    coef, levels, obj = fit.solve(best)
    assert coef is not None and np.all(np.isfinite(coef)) and np.isfinite(obj)
    assert abs(float(fit.mean_basis @ coef) - 1.0) < 1e-9  # the flat keeps its unit mean


def test_a_dark_no_positive_flat_fits_is_ruled_out_and_keeps_the_warm_start():
    fit = _fit()
    low = fit.y[fit.cls_row == 0]
    fit.solve(float(np.percentile(low, 0.1)) - 50.0)
    before = None if fit.coef is None else fit.coef.copy()
    objs = [fit.objective(float(d)) for d in np.linspace(np.percentile(low, 1.0), low.max() + 100.0, 8)]
    assert np.isinf(objs).any()  # up at the faintest blocks no positive flat fits
    assert all(np.isinf(o) or np.isfinite(o) for o in objs)
    if before is not None:  # a ruled-out dark leaves the flat of the last candidate as it was
        assert fit.coef is not None and np.all(np.isfinite(fit.coef))
