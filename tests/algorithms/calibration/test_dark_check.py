"""The dark check: photon-transfer lower bound and darkest-pixel upper bound bracket the true dark."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.calibration import check_dark, checked_darks


def _tiles(dark: float, gain: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # tiles from faint (5 photons) to bright (400), with a smooth texture: the photon-transfer lever arm
    levels = np.geomspace(5.0, 400.0, 8)[:, None, None]
    scene = levels * (1.0 + 0.2 * ndi.gaussian_filter(rng.standard_normal((8, 128, 128)), (0, 8, 8)))
    photons = rng.poisson(scene)
    return gain * photons + dark + 3.0 * rng.standard_normal(scene.shape)


def test_bounds_bracket_the_true_dark() -> None:
    for seed, (dark, gain) in enumerate([(100.0, 2.0), (400.0, 5.0), (20.0, 1.0)]):
        ck = check_dark(_tiles(dark, gain, seed), dark)
        assert ck.lower - 3 * ck.lower_sigma <= dark <= ck.upper, ck
        assert ck.consistent
        assert abs(ck.gain - gain) < 0.3 * gain


def test_wrong_dark_is_flagged_and_clipped() -> None:
    tiles = _tiles(300.0, 3.0, 5)
    darks, checks = checked_darks(np.stack([tiles, tiles]), [20.0, 300.0])
    assert not checks[0].consistent and checks[1].consistent
    assert "INCONSISTENT" in checks[0].describe(0)
    assert abs(darks[0] - 300.0) < abs(20.0 - 300.0) / 2 and darks[1] == 300.0
    assert checks[0].as_dict()["consistent"] is False
