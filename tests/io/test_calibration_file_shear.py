"""Calibration files and stored records with the linear map's off-diagonal terms (version 3), and older ones."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import DistortionFit
from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel
from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.calibration_file import FORMAT_VERSION, read_calibration_file, write_calibration_file

SHEARED = DistortionModel(mag_y=1.5e-3, mag_x=-1.2e-3, k_y=4.1e-3, k_x=5.3e-3, shear_yx=5.2e-3, shear_xy=-5.0e-3)
SIGMA = {"mag_y": 1e-4, "mag_x": 2e-4, "k_y": 3e-5, "k_x": 4e-5, "shear_yx": 2e-4, "shear_xy": 1e-4}


def _fit(model, sigma):
    return DistortionFit(model, sigma, np.zeros((4, 2)), 4, 4, 40, 0.02, 0.1)


def _read(path):
    return read_calibration_file(str(path), None, n_channels=1, tile_shape=(16, 16))


def test_shear_round_trips_and_older_files_read_as_square_to_the_stage(tmp_path):
    path = tmp_path / "c.npz"
    write_calibration_file(path, Calibration(dark=np.zeros(1)), _fit(SHEARED, SIGMA), distortion_only=True)
    data = np.load(path)
    assert int(data["format_version"]) == 3 and FORMAT_VERSION == 4  # 4 only with quintic terms
    np.testing.assert_array_equal(data["distortion"], [SHEARED.mag_y, SHEARED.mag_x, SHEARED.k_y, SHEARED.k_x])
    np.testing.assert_array_equal(data["distortion_shear"], [5.2e-3, -5.0e-3])
    np.testing.assert_array_equal(data["distortion_shear_sigma"], [2e-4, 1e-4])
    assert _read(path)["distortion"] == SHEARED
    for version in (None, 2):  # files written before the shear terms: the same four values, no shear
        old = tmp_path / f"v{version}.npz"
        extra = {} if version is None else {"format_version": np.array(version)}
        with open(old, "wb") as fh:
            np.savez(fh, distortion=data["distortion"], distortion_sigma=data["distortion_sigma"], **extra)
        got = _read(old)["distortion"]
        assert got == DistortionModel(*data["distortion"]) and got.shear_yx == got.shear_xy == 0.0
    # a fit without the terms (sigma 0, no shear) writes none: the file is what a version-2 one held, plus the version
    plain = tmp_path / "plain.npz"
    write_calibration_file(
        plain, Calibration(dark=np.zeros(1)), _fit(DistortionModel(k_y=1e-3), {}), distortion_only=True
    )
    assert set(np.load(plain).files) == {"format_version", "distortion", "distortion_sigma"}


def test_a_malformed_shear_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as fh:
        np.savez(fh, format_version=np.array(3), distortion=np.zeros(4), distortion_shear=np.zeros(3))
    with pytest.raises(InputError, match="distortion_shear must be") as exc:
        _read(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_stored_attrs_without_the_shear_keys_load():
    """``imaxt.calibrate`` attrs written before the shear terms (four distortion keys) reload with shear 0."""
    old = {"dark": [1.0], "trim": {}, "distortion": {"mag_y": 1e-3, "mag_x": 0.0, "k_y": 4e-3, "k_x": 5e-3}}
    cal = Calibration.from_attrs(old)
    assert cal.distortion == DistortionModel(mag_y=1e-3, k_y=4e-3, k_x=5e-3)
    new = Calibration(dark=np.zeros(1), distortion=SHEARED).to_attrs()
    assert set(new["distortion"]) == set(DistortionModel.COEFFICIENTS)
    assert Calibration.from_attrs(new).distortion == SHEARED
