"""Distortion model inverse and its estimation from overlaps."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import fit_distortion
from imaxt_pipeline.algorithms.optics import DistortionModel, detector_coordinates, displacement_field, max_displacement, undistort, distort
from imaxt_pipeline.algorithms.stitching import adjacent_pairs, match_pair

from tests.algorithms.stitching.test_overlap import grid_tiles


def test_detector_coordinates_inverts_the_model():
    model = DistortionModel(mag_y=0.002, mag_x=-0.001, k_y=0.006, k_x=0.004)
    shape = (128, 160)
    dy, dx = displacement_field(shape, model)
    yy, xx = np.indices(shape, dtype=float)
    py, px = detector_coordinates(yy + dy, xx + dx, shape, model, iterations=8)
    np.testing.assert_allclose(py, yy, atol=1e-3)
    np.testing.assert_allclose(px, xx, atol=1e-3)
    assert max_displacement(shape, model) == pytest.approx(np.hypot(dy, dx).max(), rel=1e-6)


def test_undistort_round_trip():
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    scene = ndi.gaussian_filter(rng.uniform(0, 100, (96, 96)), 3)
    model = DistortionModel(k_y=0.01, k_x=0.01)
    back = undistort(distort(scene, model, order=3), model, order=3)
    assert np.abs(back - scene)[8:-8, 8:-8].max() < 0.5


def test_fit_distortion_from_high_overlap_calibration():
    model = DistortionModel(k_y=0.004, k_x=0.007)
    tiles, true, stage = grid_tiles(11, rows=3, cols=3, tile=160, overlap=0.4, model=model, stage_err=0.5)
    matches = [match_pair(tiles[a], tiles[b], stage[b] - stage[a], reference=a, moving=b, max_shift=6, block_size=24)
               for a, b in adjacent_pairs(3, 3)]
    fitted = fit_distortion(matches, stage, tile_shape=(160, 160), fit_magnification=False)
    assert fitted.k_x == pytest.approx(model.k_x, abs=1e-3)
    assert fitted.k_y == pytest.approx(model.k_y, abs=1e-3)
