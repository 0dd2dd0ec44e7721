"""The compiled resampler's edge: taps that are not finite where the weight is 0 stay out of the mosaic."""

from __future__ import annotations

import numpy as np

from imaxt_pipeline.algorithms.fusion import fuse_region
from imaxt_pipeline.algorithms.optics import Calibration, Trim


def test_a_zero_flat_under_the_trimmed_border_never_reaches_the_mosaic():
    # column 0 of the flat is 0 (a dead, trimmed column): its corrected taps are infinite, weight 0
    rng = np.random.default_rng(4)
    shape = (40, 40)
    flat = (0.8 + 0.4 * rng.random((1, *shape))).astype(np.float32)
    flat[:, :, 0] = 0.0
    cal = Calibration(dark=np.array([10.0]), flat=flat, trim=Trim(left=2))
    tiles = [rng.integers(100, 1000, (1, *shape)).astype(np.uint16) for _ in range(2)]
    positions = np.array([[0.0, 0.0], [0.3, 30.6]])  # the second tile's dead column inside the first one
    fused = fuse_region(tiles, positions, (0, 41, 0, 71), weights=cal.confidence(shape), calibration=cal)
    assert np.isfinite(fused.image).all()
    assert (fused.weight > 0).mean() > 0.9
    overlap = fused.image[0, 5:35, 33:38]  # both tiles there, neither's border
    assert overlap.min() > 0 and overlap.max() < 1000 / 0.8
