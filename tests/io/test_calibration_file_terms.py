"""Calibration files with the linear map's off-diagonal terms (version 3) and the quintic radial terms
(version 4), and the files and stored records from before them."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import DistortionFit
from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel
from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.calibration_file import FORMAT_VERSION, read_calibration_file, write_calibration_file

SHEARED = DistortionModel(mag_y=1.5e-3, mag_x=-1.2e-3, k_y=4.1e-3, k_x=5.3e-3, shear_yx=5.2e-3, shear_xy=-5.0e-3)
SHEAR_SIGMA = {"mag_y": 1e-4, "mag_x": 2e-4, "k_y": 3e-5, "k_x": 4e-5, "shear_yx": 2e-4, "shear_xy": 1e-4}
QUINTIC = DistortionModel(mag_y=1.5e-3, k_y=4.1e-3, k_x=5.3e-3, shear_yx=5.2e-3, k5_y=-6e-4, k5_x=8e-4)
QUINTIC_SIGMA = {"mag_y": 1e-4, "k_y": 3e-5, "k_x": 4e-5, "shear_yx": 2e-4, "k5_y": 5e-5, "k5_x": 6e-5}


def _write(path, model, sigma):
    fit = DistortionFit(model, sigma, np.zeros((4, 2)), 4, 4, 40, 0.02, 0.1)
    write_calibration_file(path, Calibration(dark=np.zeros(1)), fit, distortion_only=True)


def _read(path):
    return read_calibration_file(str(path), None, n_channels=1, tile_shape=(16, 16))


def test_shear_round_trips_and_older_files_read_as_square_to_the_stage(tmp_path):
    path = tmp_path / "c.npz"
    _write(path, SHEARED, SHEAR_SIGMA)
    data = np.load(path)
    assert int(data["format_version"]) == 3 and FORMAT_VERSION >= 4  # 4 only with quintic terms (5 with a seam bias)
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
    _write(plain, DistortionModel(k_y=1e-3), {})
    assert set(np.load(plain).files) == {"format_version", "distortion", "distortion_sigma"}


def test_quintic_terms_round_trip_as_version_4_and_without_them_the_file_stays_version_3(tmp_path):
    path = tmp_path / "q.npz"
    _write(path, QUINTIC, QUINTIC_SIGMA)
    data = np.load(path)
    # version 4: a version-3 reader refuses it rather than drop the terms
    assert int(data["format_version"]) == 4
    np.testing.assert_array_equal(data["distortion_quintic"], [-6e-4, 8e-4])
    np.testing.assert_array_equal(data["distortion_quintic_sigma"], [5e-5, 6e-5])
    assert _read(path)["distortion"] == QUINTIC
    cubic = DistortionModel(*QUINTIC.coefficients()[:6])
    plain = tmp_path / "c.npz"
    _write(plain, cubic, {})
    with np.load(plain) as old:
        assert int(old["format_version"]) == 3 and "distortion_quintic" not in old.files
    got = _read(plain)["distortion"]
    assert got == cubic and got.k5_y == got.k5_x == 0.0


@pytest.mark.parametrize(("version", "key"), [(3, "distortion_shear"), (4, "distortion_quintic")])
def test_a_malformed_term_is_one_line_naming_the_file(tmp_path, version, key):
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as fh:
        np.savez(fh, format_version=np.array(version), distortion=np.zeros(4), **{key: np.zeros(3)})
    with pytest.raises(InputError, match=f"{key} must be") as exc:
        _read(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_a_newer_version_is_refused_in_one_line(tmp_path):
    newer = tmp_path / f"v{FORMAT_VERSION + 1}.npz"
    with open(newer, "wb") as fh:
        np.savez(fh, format_version=np.array(FORMAT_VERSION + 1), distortion=np.zeros(4))
    with pytest.raises(InputError, match="newer than this reader") as exc:
        _read(newer)
    assert str(newer) in str(exc.value) and "\n" not in str(exc.value)


def test_stored_attrs_without_the_shear_keys_load():
    """``imaxt.calibrate`` attrs written before the shear terms (four distortion keys) reload with shear 0."""
    old = {"dark": [1.0], "trim": {}, "distortion": {"mag_y": 1e-3, "mag_x": 0.0, "k_y": 4e-3, "k_x": 5e-3}}
    cal = Calibration.from_attrs(old)
    assert cal.distortion == DistortionModel(mag_y=1e-3, k_y=4e-3, k_x=5e-3)
    new = Calibration(dark=np.zeros(1), distortion=SHEARED).to_attrs()
    assert set(new["distortion"]) == set(DistortionModel.COEFFICIENTS)
    assert Calibration.from_attrs(new).distortion == SHEARED
