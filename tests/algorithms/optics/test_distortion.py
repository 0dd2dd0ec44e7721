"""Distortion model inverse and its estimation from overlaps."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.optics import (
    DistortionModel,
    detector_coordinates,
    displacement_field,
    distort,
    max_displacement,
    tile_coordinates,
    undistort,
)
from imaxt_pipeline.algorithms.stitching import adjacent_pairs, match_pair, solve_positions
from imaxt_pipeline.testing import grid_tiles


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
    matches = [
        match_pair(tiles[a], tiles[b], stage[b] - stage[a], reference=a, moving=b, max_shift=6, block_size=24)
        for a, b in adjacent_pairs(3, 3)
    ]
    # The solver the stitch step runs (the positions it solves too are not looked at here).
    fitted = solve_positions(
        matches, stage, tile_shape=(160, 160), estimate_distortion=True, fit_magnification=False, prior_sigma_px=5.0
    ).distortion
    assert fitted.k_x == pytest.approx(model.k_x, abs=1e-3)
    assert fitted.k_y == pytest.approx(model.k_y, abs=1e-3)


def test_tile_coordinates_span_minus_one_to_one():
    v, u = tile_coordinates(np.arange(5), np.arange(9), (5, 9))
    np.testing.assert_allclose(v, [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(u, np.linspace(-1, 1, 9), atol=1e-15)
    # each axis keeps its shape, and the centre of an even tile sits between pixels
    v, u = tile_coordinates(np.array([[0.0], [1.5]]), np.array([[3.5, 7.0]]), (4, 8))
    assert (v.shape, u.shape) == ((2, 1), (1, 2))
    assert v[0, 0] == -1 and v[1, 0] == 0 and u[0, 0] == 0 and u[0, 1] == 1


def test_coefficient_order_is_one_for_files_fields_and_design():
    model = DistortionModel(
        mag_y=1e-3, mag_x=-2e-3, k_y=4e-3, k_x=5e-3, shear_yx=3e-4, shear_xy=-6e-4, k5_y=1e-3, k5_x=-2e-3
    )
    assert DistortionModel.COEFFICIENTS == ("mag_y", "mag_x", "k_y", "k_x", "shear_yx", "shear_xy", "k5_y", "k5_x")
    np.testing.assert_array_equal(model.coefficients(), [1e-3, -2e-3, 4e-3, 5e-3, 3e-4, -6e-4, 1e-3, -2e-3])
    assert DistortionModel.from_coefficients(model.coefficients()) == model == DistortionModel(*model.coefficients())
    assert DistortionModel.from_coefficients(model.coefficients()[:6]) == DistortionModel(*model.coefficients()[:6])
    assert list(model.as_dict()) == list(DistortionModel.COEFFICIENTS)
    assert DistortionModel.from_dict(model.as_dict()) == model
    with pytest.raises(ValueError, match="8 coefficients"):
        DistortionModel.from_coefficients([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown distortion"):
        DistortionModel.from_dict({"mag_y": 1.0, "twist": 2.0})
    # the linear design evaluates the same polynomial as the model (exact without shear or without k)
    rng = np.random.default_rng(0)
    y, x = rng.uniform(0, 191, (2, 50))
    no_shear = DistortionModel(*model.coefficients()[:4], k5_y=1e-3, k5_x=-2e-3)
    for m in (no_shear, DistortionModel(mag_y=1e-3, shear_yx=3e-4, shear_xy=-6e-4)):
        gy, gx = DistortionModel.design(y, x, (192, 256))
        dy, dx = m.displacement(y, x, (192, 256))
        np.testing.assert_allclose(gy @ m.coefficients(), dy, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gx @ m.coefficients(), dx, rtol=1e-12, atol=1e-15)
    # y terms only move y, x terms only move x (the off-diagonal term of an axis moves it by the other's position)
    assert not gy[:, [1, 3, 5, 7]].any() and not gx[:, [0, 2, 4, 6]].any()


def test_quintic_terms_are_the_fifth_order_radial_displacement_and_old_records_read_without_them():
    shape = (200, 300)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    y, x = np.array([0.0, 50.0, 199.0]), np.array([0.0, 299.0, 10.0])
    v, u = (y - cy) / cy, (x - cx) / cx
    r4 = (u * u + v * v) ** 2
    base = DistortionModel(mag_y=1e-3, k_y=4e-3, k_x=-3e-3)
    dy0, dx0 = base.displacement(y, x, shape)
    dy, dx = DistortionModel(mag_y=1e-3, k_y=4e-3, k_x=-3e-3, k5_y=2e-3, k5_x=-1e-3).displacement(y, x, shape)
    np.testing.assert_allclose(dy - dy0, cy * 2e-3 * v * r4, rtol=1e-12)
    np.testing.assert_allclose(dx - dx0, cx * -1e-3 * u * r4, rtol=1e-12)
    # a record of six values or without the keys (attrs, calibration files before them) has no quintic
    six = DistortionModel.from_coefficients(base.coefficients()[:6])
    assert six == base == DistortionModel.from_dict({k: getattr(base, k) for k in DistortionModel.COEFFICIENTS[:6]})
    assert six.k5_y == six.k5_x == 0.0
    # a quintic of the other sign turns the radial profile over inside the tile: the largest |D| is not at a corner
    folded = DistortionModel(k_y=0.02, k_x=0.02, k5_y=-0.01, k5_x=-0.01)  # r2 (k + k5 r2) = 0 at the corners
    dy_c, dx_c = folded.displacement(np.array([0.0]), np.array([0.0]), shape)
    assert float(np.hypot(dy_c, dx_c)[0]) < 1e-12 and max_displacement(shape, folded) > 1.4  # 1.5 px mid-edge


def test_records_written_before_the_shear_terms_load_with_zero_shear():
    """Four values (files, positional records) and dicts without the new keys (stored attrs) read as shear 0."""
    old = {"mag_y": 1e-3, "mag_x": -2e-3, "k_y": 4e-3, "k_x": 5e-3}
    model = DistortionModel.from_dict(old)
    assert model == DistortionModel(**old) == DistortionModel.from_coefficients(list(old.values()))
    assert model.shear_yx == model.shear_xy == 0.0 and model.rotation_deg == 0.0
    assert DistortionModel.from_dict({**old, "shear_yx": None}) == model  # an undetermined term: nominal
    assert set(model.as_dict()) == set(old) | {"shear_yx", "shear_xy", "k5_y", "k5_x"}  # records gain the keys


def test_shear_turns_the_camera_frame_with_its_distortion():
    """``p + D(p) = A (p + k~ g(p))``: the radial terms in the camera frame, then the whole linear map."""
    theta = np.radians(0.3)
    model = DistortionModel(mag_y=1e-3, mag_x=-2e-3, k_y=4e-3, k_x=5e-3, shear_yx=theta, shear_xy=-theta)
    assert model.rotation_deg == pytest.approx(0.3)
    shape = (128, 160)
    rng = np.random.default_rng(1)
    y, x = rng.uniform(0, 127, 40), rng.uniform(0, 159, 40)
    cam = DistortionModel(k_y=4e-3 / (1 + 1e-3), k_x=5e-3 / (1 - 2e-3))  # k~ = k / (1 + mag)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    wy, wx = cam.displacement(y, x, shape)
    w = np.stack([y - cy + wy, x - cx + wx])
    dy, dx = model.displacement(y, x, shape)
    np.testing.assert_allclose(np.stack([y - cy + dy, x - cx + dx]), model.linear @ w, rtol=1e-12, atol=1e-9)
    # 0.3 degrees moves the tile's x edge by 0.4 px in y: the inverse still recovers the detector pixel
    py, px = detector_coordinates(y + dy, x + dx, shape, model, iterations=8)
    np.testing.assert_allclose(py, y, atol=1e-3)
    np.testing.assert_allclose(px, x, atol=1e-3)
    assert max_displacement(shape, model) > max_displacement(shape, DistortionModel(*model.coefficients()[:4]))
