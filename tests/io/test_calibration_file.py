"""Calibration files: versioned, and files written before the version was recorded still load."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import DistortionFit
from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel, Trim
from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.calibration_file import FORMAT_VERSION, read_calibration_file, write_calibration_file

MODEL = DistortionModel(mag_y=1.5e-3, mag_x=-1.2e-3, k_y=4.1e-3, k_x=5.3e-3)
SIGMA = {"mag_y": 1e-4, "mag_x": 2e-4, "k_y": 3e-5, "k_x": 4e-5}


def _written(tmp_path, **kw):
    rng = np.random.default_rng(0)
    cal = Calibration(
        dark=np.array([100.0, 90.0]),
        flat=rng.uniform(0.8, 1.2, (2, 16, 16)).astype(np.float32),
        trim=Trim(top=1, bottom=0, left=3, right=2),
        distortion=MODEL,
    )
    fit = DistortionFit(
        model=MODEL,
        sigma=SIGMA,
        positions=np.zeros((4, 2)),
        n_pairs=4,
        n_used=4,
        n_points=40,
        residual_px=0.02,
        stage_scatter_px=0.1,
    )
    path = tmp_path / "new.npz"
    write_calibration_file(path, cal, fit, **kw)
    return cal, path


def _read(path):
    return read_calibration_file(str(path), None, n_channels=2, tile_shape=(16, 16))


def test_written_file_is_versioned_and_round_trips(tmp_path):
    cal, path = _written(tmp_path)
    data = np.load(path)
    assert int(data["format_version"]) == 3 < FORMAT_VERSION  # no quintic terms: the version readers since 3 read
    np.testing.assert_array_equal(data["distortion"], [MODEL.mag_y, MODEL.mag_x, MODEL.k_y, MODEL.k_x])
    np.testing.assert_array_equal(data["distortion_sigma"], [SIGMA[k] for k in ("mag_y", "mag_x", "k_y", "k_x")])
    terms = _read(path)
    assert terms["distortion"] == MODEL
    assert terms["trim"] == cal.trim
    np.testing.assert_array_equal(terms["flat"], cal.flat)
    np.testing.assert_array_equal(terms["dark"], cal.dark)


def test_old_format_file_loads_to_the_same_model(tmp_path):
    """Version 1: no ``format_version`` key, distortion as (mag_y, mag_x, k_y, k_x)."""
    cal, new = _written(tmp_path)
    old = tmp_path / "old.npz"
    with open(old, "wb") as fh:  # exactly what the writer stored before files were versioned
        np.savez(
            fh,
            distortion=np.array([1.5e-3, -1.2e-3, 4.1e-3, 5.3e-3]),
            distortion_sigma=np.array([1e-4, 2e-4, 3e-5, 4e-5]),
            dark=np.asarray(cal.dark, float),
            trim=np.array([1, 0, 3, 2]),
            flat=cal.flat,
        )
    assert "format_version" not in np.load(old)
    got_old, got_new = _read(old), _read(new)
    assert got_old["distortion"] == got_new["distortion"] == MODEL
    assert got_old["trim"] == got_new["trim"]
    np.testing.assert_array_equal(got_old["flat"], got_new["flat"])


def test_distortion_only_and_unknown_version(tmp_path):
    _, path = _written(tmp_path, distortion_only=True)
    assert set(np.load(path).files) == {"format_version", "distortion", "distortion_sigma"}
    assert set(_read(path)) == {"distortion"}
    future = tmp_path / "future.npz"
    with open(future, "wb") as fh:
        np.savez(fh, format_version=np.array(FORMAT_VERSION + 1), distortion=np.zeros(4))
    with pytest.raises(InputError, match="newer"):
        _read(future)


def test_an_existing_file_is_never_replaced_unless_it_is_ours_and_overwrite_is_given(tmp_path):
    foreign = tmp_path / "new.npz"
    foreign.write_bytes(b"somebody's notes")
    with pytest.raises(InputError, match="is not a calibration file"):
        _written(tmp_path)
    assert foreign.read_bytes() == b"somebody's notes"
    foreign.unlink()
    cal, path = _written(tmp_path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="pass --overwrite"):
        _written(tmp_path)
    assert path.read_bytes() == before
    _written(tmp_path, overwrite=True)
    assert _read(path)["distortion"] == MODEL
