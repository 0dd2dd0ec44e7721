"""The shared-flat estimate in two rounds of fits gives what fitting every channel with its bootstrap gives."""

from __future__ import annotations

from typing import Any

import numpy as np

from imaxt_pipeline.algorithms.calibration import calibration_estimate, summarise
from imaxt_pipeline.algorithms.calibration._flatfield import estimate_tile_model
from imaxt_pipeline.synth import draw_instrument, render_random_sample


def _one_round_each(stats: list[Any], seed: int, **kw: Any) -> tuple[list[Any], int]:
    """The models as the estimate once made them: every channel fitted with its bootstrap, then the others
    refitted with the flat of the best-supported channel (returned: the reference, chosen by the first fits'
    support, as the refits' support may differ)."""
    first = [estimate_tile_model(s, seed=seed + i, **kw) for i, s in enumerate(stats)]
    ref = int(np.argmax([m.support for m in first]))
    models = [
        m if i == ref else estimate_tile_model(stats[i], flat=first[ref].flat, seed=seed + i, **kw)
        for i, m in enumerate(first)
    ]
    return models, ref


def test_two_rounds_equal_every_channel_fitted_with_its_bootstrap() -> None:
    rounds: list[int] = []
    seed = 4
    draw = draw_instrument(seed, grid=(2, 3), tile=96, sections=1)
    tiles = render_random_sample(draw).tiles  # (S, C, T, H, W)
    n_s, n_c, n_t, h, w = tiles.shape
    pool = tiles.transpose(1, 0, 2, 3, 4).reshape(n_c, n_s * n_t, h, w)
    stats = [summarise(pool[c], noise_every=2) for c in range(n_c)]
    assert n_c >= 2  # a shared flat

    def counting(fn: Any, items: Any) -> list[Any]:
        rounds.append(len(items))
        return [fn(*a) for a in items]

    est = calibration_estimate(stats, max_trim_px=8, bootstrap=3, seed=seed, starmap=counting)
    want, ref = _one_round_each(stats, seed, max_trim_px=8, bootstrap=3, degree=2, trim_threshold=1.0)
    np.testing.assert_array_equal(est.calibration.dark, [m.dark for m in want])
    np.testing.assert_array_equal(est.calibration.flat, np.stack([m.flat for m in want]))
    np.testing.assert_array_equal(est.dark_sigma, [m.dark_sigma for m in want])
    np.testing.assert_array_equal(est.stray_sigma, [m.stray_sigma for m in want])
    assert est.flat_sigma is not None
    np.testing.assert_array_equal(est.flat_sigma, np.stack([want[ref].flat_sigma] * n_c))
    # the first fits (no bootstrap), then the reference's bootstrap beside the others' refits
    assert rounds == [n_c, n_c]
