"""The estimators' per-channel fits on the workers give the client's estimate exactly."""

from __future__ import annotations

import numpy as np

from imaxt_pipeline.algorithms.calibration import calibration_estimate, summarise
from imaxt_pipeline.parallel.calibration import cluster_starmap
from imaxt_pipeline.synth import draw_instrument, render_random_sample


def test_channel_fits_on_the_cluster_equal_the_in_process_ones(dask_client) -> None:
    draw = draw_instrument(3, grid=(2, 3), tile=96, sections=1)
    tiles = render_random_sample(draw).tiles  # (S, C, T, H, W)
    n_s, n_c, n_t, h, w = tiles.shape
    pool = tiles.transpose(1, 0, 2, 3, 4).reshape(n_c, n_s * n_t, h, w)
    stats = [summarise(pool[c], noise_every=2) for c in range(n_c)]
    kw = {"max_trim_px": 8, "bootstrap": 2, "check_darks": True}
    here = calibration_estimate(stats, **kw)
    there = calibration_estimate(stats, starmap=cluster_starmap(dask_client), **kw)
    assert len(stats) >= 2  # a shared flat: the second round of fits (the others' darks) runs there too
    np.testing.assert_array_equal(there.calibration.dark, here.calibration.dark)
    np.testing.assert_array_equal(there.calibration.flat, here.calibration.flat)
    np.testing.assert_array_equal(there.dark_sigma, here.dark_sigma)
    assert there.uncertainty() == here.uncertainty()
