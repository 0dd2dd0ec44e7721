"""Calibration file format 5: the seam calibration round-trips; older files read as before; newer ones refused."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import DistortionFit
from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel
from imaxt_pipeline.algorithms.stitching import SeamCalibration
from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io import calibration_file
from imaxt_pipeline.io.calibration_file import FORMAT_VERSION, read_calibration_file, write_calibration_file

SHAPE = (64, 64)


def _fit(rng, quintic):
    model = DistortionModel(k_y=rng.normal(0, 1e-3), k5_x=rng.normal(0, 1e-4) if quintic else 0.0)
    sigma = {k: 1e-5 for k in DistortionModel.COEFFICIENTS if quintic or not k.startswith("k5")}
    return DistortionFit(model, sigma, np.zeros((4, 2)), int(rng.integers(4, 40)), 4, 40, 0.02, 0.1)


def _seam(rng, bins):
    return SeamCalibration(
        rng.normal(0, 0.3, (2, bins, 2)),
        rng.uniform(0.005, 0.05, (2, bins, 2)),
        tuple(float(v) for v in rng.uniform(5, 15, 2)),
        SHAPE,
    )


def _read(path):
    return read_calibration_file(str(path), None, n_channels=1, tile_shape=SHAPE)


@pytest.mark.parametrize("seed", range(4))
def test_seam_calibration_round_trips_as_version_5(tmp_path, seed):
    rng = np.random.default_rng(seed)
    fit, seam = _fit(rng, quintic=bool(seed % 2)), _seam(rng, int(rng.choice([1, 8, 12])))
    path = tmp_path / "c.npz"
    write_calibration_file(path, Calibration(dark=np.zeros(1)), fit, distortion_only=True, seam=seam)
    data = np.load(path)
    assert int(data["format_version"]) == 5 == FORMAT_VERSION and int(data["distortion_n_pairs"]) == fit.n_pairs
    got = _read(path)
    assert got["distortion"] == fit.model
    back = got["seam_bias"]
    assert isinstance(back, SeamCalibration)
    np.testing.assert_array_equal(back.profile, seam.profile)
    np.testing.assert_array_equal(back.sigma, seam.sigma)
    assert back.overlap_px == seam.overlap_px and back.tile_shape == SHAPE


@pytest.mark.parametrize("quintic", [False, True])
def test_without_a_seam_the_file_is_version_3_or_4_as_before(tmp_path, quintic):
    path = tmp_path / "c.npz"
    write_calibration_file(
        path, Calibration(dark=np.zeros(1)), _fit(np.random.default_rng(1), quintic), distortion_only=True
    )
    data = np.load(path)
    assert int(data["format_version"]) == (4 if quintic else 3)
    assert not any(k.startswith("seam") for k in data.files) and "distortion_n_pairs" not in data.files
    assert "seam_bias" not in _read(path)


def test_a_version_4_reader_refuses_a_5_file_and_this_one_a_newer(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    path = tmp_path / "c.npz"
    write_calibration_file(
        path, Calibration(dark=np.zeros(1)), _fit(rng, True), distortion_only=True, seam=_seam(rng, 8)
    )
    newer = tmp_path / "newer.npz"
    with open(newer, "wb") as fh:
        np.savez(fh, format_version=np.array(FORMAT_VERSION + 1), distortion=np.zeros(4))
    with pytest.raises(InputError, match="newer than this reader") as exc:
        _read(newer)
    assert "\n" not in str(exc.value)
    # a reader of version 4 (its table of versions without 5) refuses the seam file rather than drop the bias
    monkeypatch.setattr(
        calibration_file, "_DISTORTION_ORDER", {v: o for v, o in calibration_file._DISTORTION_ORDER.items() if v < 5}
    )
    with pytest.raises(InputError, match="version 5 is newer"):
        _read(path)


def test_a_broken_seam_calibration_is_one_line(tmp_path):
    rng = np.random.default_rng(3)
    good = tmp_path / "c.npz"
    write_calibration_file(
        good, Calibration(dark=np.zeros(1)), _fit(rng, False), distortion_only=True, seam=_seam(rng, 8)
    )
    data = dict(np.load(good))
    for name, change in (
        ("missing", lambda d: d.pop("seam_bias_sigma")),
        ("shape", lambda d: d.update(seam_bias=np.zeros((3, 8, 2)))),
        ("nan", lambda d: d.update(seam_bias=np.full((2, 8, 2), np.nan))),
    ):
        bad = tmp_path / f"{name}.npz"
        d = dict(data)
        change(d)
        with open(bad, "wb") as fh:
            np.savez(fh, **d)
        with pytest.raises(InputError) as exc:
            _read(bad)
        assert str(bad) in str(exc.value) and "\n" not in str(exc.value) and "seam" in str(exc.value)
