"""Calibration files with the quintic radial terms (version 4), and the versions before them."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import DistortionFit
from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel
from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.calibration_file import read_calibration_file, write_calibration_file

QUINTIC = DistortionModel(mag_y=1.5e-3, k_y=4.1e-3, k_x=5.3e-3, shear_yx=5.2e-3, k5_y=-6e-4, k5_x=8e-4)
SIGMA = {"mag_y": 1e-4, "k_y": 3e-5, "k_x": 4e-5, "shear_yx": 2e-4, "k5_y": 5e-5, "k5_x": 6e-5}


def _fit(model, sigma):
    return DistortionFit(model, sigma, np.zeros((4, 2)), 4, 4, 40, 0.02, 0.1)


def _read(path):
    return read_calibration_file(str(path), None, n_channels=1, tile_shape=(16, 16))


def test_quintic_terms_round_trip_as_version_4_and_without_them_the_file_stays_version_3(tmp_path):
    path = tmp_path / "q.npz"
    write_calibration_file(path, Calibration(dark=np.zeros(1)), _fit(QUINTIC, SIGMA), distortion_only=True)
    data = np.load(path)
    # version 4: a version-3 reader refuses it rather than drop the terms
    assert int(data["format_version"]) == 4
    np.testing.assert_array_equal(data["distortion_quintic"], [-6e-4, 8e-4])
    np.testing.assert_array_equal(data["distortion_quintic_sigma"], [5e-5, 6e-5])
    assert _read(path)["distortion"] == QUINTIC
    cubic = DistortionModel(*QUINTIC.coefficients()[:6])
    plain = tmp_path / "c.npz"
    write_calibration_file(plain, Calibration(dark=np.zeros(1)), _fit(cubic, {}), distortion_only=True)
    with np.load(plain) as old:
        assert int(old["format_version"]) == 3 and "distortion_quintic" not in old.files
    got = _read(plain)["distortion"]
    assert got == cubic and got.k5_y == got.k5_x == 0.0


def test_a_malformed_quintic_or_a_newer_version_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as fh:
        np.savez(fh, format_version=np.array(4), distortion=np.zeros(4), distortion_quintic=np.zeros(3))
    with pytest.raises(InputError, match="distortion_quintic must be") as exc:
        _read(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    newer = tmp_path / "v5.npz"
    with open(newer, "wb") as fh:
        np.savez(fh, format_version=np.array(5), distortion=np.zeros(4))
    with pytest.raises(InputError, match="newer than this reader"):
        _read(newer)
