"""Distortion + magnification from a synthetic calibration acquisition, end to end through the CLI.

The calibration acquisition (:func:`imaxt_pipeline.synth.calibration_params`:
5 x 5 tiles of 256 px, 45 % overlap, a 0.1 px stage, one slice of dense
tissue) shares its optics with the normal samples of
``test_stitch_synth.py``, so the file it yields must stitch those to the
0.1 px (median) / 0.5 px (max) target after removing only the translation;
fitting the magnification on a normal sample cannot (its 3 px stage leaves
mag uncertain by 0.5 %, about 1 px per tile step).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import estimate_calibration
from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.algorithms.stitching import adjacent_pairs, solve_positions
from imaxt_pipeline.io.calibration_file import read_calibration_file
from imaxt_pipeline.parallel.stitching import match_tiles
from imaxt_pipeline.service.cli import main
from imaxt_pipeline.synth import calibration_params, synthesize
from imaxt_pipeline.testing import one_slice_grid as _sample
from imaxt_pipeline.testing import position_errors as _errors

pytestmark = pytest.mark.slow  # a calibration acquisition fitted by the CLI

STAGE_SIGMA = 0.1  # px, as simulated by calibration_params


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    params = calibration_params(seed=0)
    truth = synthesize(root / "raw", params)
    out = root / "calibration.npz"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["calibrate-distortion", str(root / "raw"), str(out), "--stage-sigma-px", str(STAGE_SIGMA)])
    assert rc == 0
    lines = printed.getvalue().splitlines()
    for k in ("mag_y", "mag_x", "k_y", "k_x"):  # every coefficient is printed with its sigma
        assert any(line.split()[:1] == [k] and "±" in line for line in lines), lines
    return params, truth, out


def _grid(truth, params, key):
    pos = getattr(truth, key)
    return np.array([pos[f"0/{t // params.cols}/{t % params.cols}"] for t in range(params.rows * params.cols)])


def test_coefficients_match_truth(calibration):
    params, truth, out = calibration
    data = np.load(out)
    mag_y, mag_x, k_y, k_x = data["distortion"]
    sig = data["distortion_sigma"]
    td = truth.distortion
    # Magnification: the stage is the only ruler, so the least-squares error is the slope of the
    # stage error against the tile positions (computed here from the truth) plus the matcher's
    # block-averaging bias, 4/3 k (16 / 256)**2 = 0.5e-4 (see algorithms/distortion_fit.py).
    true, rec = _grid(truth, params, "tile_positions_px"), _grid(truth, params, "recorded_positions_px")
    t = true - true.mean(axis=0)
    stage_term = np.sum((rec - true) * t, axis=0) / np.sum(t * t, axis=0)
    err = np.array([mag_y - td.mag_y, mag_x - td.mag_x])
    assert np.all(np.abs(err - stage_term) <= 1e-4), (err, stage_term)
    # The stated uncertainty is the stage's over the lever arm (1.0e-4 here), and it covers the error.
    lever = STAGE_SIGMA / np.sqrt(np.sum(t * t, axis=0))
    assert np.all(sig[:2] >= 0.95 * lever) and np.all(sig[:2] <= 1.5 * lever), (sig, lever)
    assert np.all(np.abs(err) <= 3 * sig[:2] + 1e-4)
    # Cubic terms: pinned by the seams (sigma 0.2e-4); 1e-4 (1.3-1.6 % of k) allows 4 sigma plus a
    # residual matcher bias measured at <= 0.4e-4 over seeds 0-5.
    assert k_y == pytest.approx(td.k_y, abs=1e-4)
    assert k_x == pytest.approx(td.k_x, abs=1e-4)
    assert np.all(sig[2:] < 0.5e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrated_distortion_stitches_normal_samples(calibration, tmp_path, seed):
    params, truth, out = calibration
    model = DistortionModel(*np.load(out)["distortion"])
    p, strue, tiles, stage, true = _sample(tmp_path, seed=seed)
    assert p.resolved_distortion() == truth.distortion  # same optics as the calibration acquisition
    cal = estimate_calibration(tiles, max_trim_px=int(p.overlap * p.tile_shape[1] / 4))
    ms = [match_tiles(lambda i: tiles[:, i], a, b, tuple(stage[b] - stage[a]), cal) for a, b in adjacent_pairs(3, 3)]
    sol = solve_positions(ms, stage, tile_shape=p.tile_shape, estimate_distortion=False, distortion=model)
    err = _errors(sol.positions, true, sol.constrained)  # the common translation only
    assert np.median(err) <= 0.1 and err.max() <= 0.5, err
    # Fitting the magnification on the sample itself instead is as poor as its 3 px stage.
    fitted = solve_positions(ms, stage, tile_shape=p.tile_shape, fit_magnification=True, prior_sigma_px=3.0)
    assert np.median(_errors(fitted.positions, true, fitted.constrained)) > np.median(err)


def test_file_round_trips_through_the_calibrate_loader(calibration):
    params, truth, out = calibration
    data = np.load(out)
    terms = read_calibration_file(str(out), None, n_channels=len(params.channels), tile_shape=params.tile_shape)
    assert set(terms) == {"dark", "flat", "trim", "distortion"} | ({"stray"} & set(data.files))
    assert terms["distortion"] == DistortionModel(*data["distortion"], *data["distortion_shear"])
    assert terms["flat"].shape == (len(params.channels), *params.tile_shape)
    assert [terms["trim"].top, terms["trim"].bottom, terms["trim"].left, terms["trim"].right] == list(data["trim"])
    np.testing.assert_allclose(terms["dark"], data["dark"])
    assert not list(out.parent.glob(".calibration.npz.tmp-*"))  # the temporary file was renamed away


def test_bad_input_is_one_line_error(calibration, tmp_path, capsys):
    params, truth, out = calibration
    rc = main(["calibrate-distortion", str(tmp_path / "missing"), str(tmp_path / "c.npz"), "--stage-sigma-px", "0.2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "missing/acquisition.json" in err and "calibrate-distortion" in err
    rc = main(
        ["calibrate-distortion", str(out.parent / "raw"), str(tmp_path / "no" / "c.npz"), "--stage-sigma-px", "0.2"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "c.npz").exists()


def test_pipeline_stitches_with_the_calibration_file(calibration, tmp_path, dask_client):
    """``steps.calibrate.calibration_file`` through the runner: distortion from the file, fixed by `stitch`."""
    import zarr

    from imaxt_pipeline.synth import SynthParams
    from imaxt_pipeline.testing import processed_sample

    params, truth, out = calibration
    p = SynthParams(slices=1, rows=3, cols=3, seed=2, tile_shape=(256, 256))
    strue = processed_sample(
        tmp_path, p, steps=("calibrate", "stitch"), client=dask_client, **{"steps.calibrate.calibration_file": str(out)}
    ).truth
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["imaxt"]
    assert attrs["calibrate"]["source"]["distortion"] == "file"
    file_model = DistortionModel(*np.load(out)["distortion"], *np.load(out)["distortion_shear"])
    assert attrs["stitch"]["distortion"] == pytest.approx(file_model.as_dict())
    pos = attrs["stitch"]["tile_positions_px"]
    keys = [k for k in pos if k not in attrs["stitch"]["unconstrained"]]
    got = np.array([pos[k] for k in keys])
    err = _errors(got, np.array([strue.tile_positions_px[k] for k in keys]), np.ones(len(keys), bool))
    assert np.median(err) <= 0.1 and err.max() <= 0.5, err


def test_synth_cli_writes_a_calibration_acquisition(tmp_path):
    import json

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["synth", str(tmp_path / "cal"), "--calibration", "--tile-size", "128", "--seed", "4"]) == 0
    acq = json.loads((tmp_path / "cal" / "acquisition.json").read_text())
    expected = calibration_params(seed=4, tile_shape=(128, 128))
    assert (acq["rows"], acq["cols"], acq["slices"]) == (expected.rows, expected.cols, 1)
    assert acq["overlap"] == pytest.approx(expected.overlap) and acq["tile_shape"] == [128, 128]
