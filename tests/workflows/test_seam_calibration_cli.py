"""``imaxt calibrate-distortion --seam-acquisition`` end to end on small synthetic acquisitions."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from imaxt_pipeline.algorithms.stitching import SeamCalibration
from imaxt_pipeline.io.calibration_file import read_calibration_file
from imaxt_pipeline.service.cli import main
from imaxt_pipeline.synth import calibration_params, synthesize

SHAPE = (128, 128)


def _run(*argv):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["calibrate-distortion", *map(str, argv)])
    return rc, printed.getvalue()


@pytest.fixture(scope="module")
def acquisitions(tmp_path_factory):
    root = tmp_path_factory.mktemp("seamcal")
    seed = int(np.random.default_rng().integers(0, 1000))
    overlap = float(np.random.default_rng(seed).uniform(0.15, 0.25))
    common = dict(seed=seed, tile_shape=SHAPE, channels=("nuclear",), rows=3, cols=3)
    synthesize(root / "dist", calibration_params(**common))
    synthesize(root / "seam", calibration_params(**common, overlap=overlap))
    synthesize(root / "other", calibration_params(**{**common, "tile_shape": (96, 96)}, overlap=overlap))
    return root, seed, overlap


def test_the_seam_bias_is_measured_and_written(acquisitions):
    root, seed, overlap = acquisitions
    out = root / "cal.npz"
    rc, text = _run(root / "dist", out, "--stage-sigma-px", 0.1, "--seam-acquisition", root / "seam")
    assert rc == 0 and "seam bias from" in text, (seed, text)
    data = np.load(out)
    assert int(data["format_version"]) == 5
    seam = read_calibration_file(str(out), None, n_channels=1, tile_shape=SHAPE)["seam_bias"]
    assert isinstance(seam, SeamCalibration) and seam.tile_shape == SHAPE
    np.testing.assert_allclose(seam.overlap_px, [overlap * SHAPE[1]] * 2, atol=1.5)  # a 0.1 px stage
    assert np.all(np.isfinite(seam.profile)) and np.all(seam.sigma > 0)
    # the synthetic optics are the distortion model exactly: nothing outside it biases the seams
    assert np.abs(seam.profile).max() < max(0.3, 5 * seam.sigma.max()), (seed, seam.profile)


def test_a_seam_acquisition_of_another_camera_is_one_line(acquisitions, capsys):
    root, _, _ = acquisitions
    rc, _ = _run(root / "dist", root / "bad.npz", "--stage-sigma-px", 0.1, "--seam-acquisition", root / "other")
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "96 x 96" in err and str(root / "other") in err and len(err.splitlines()) == 1, err
    assert not (root / "bad.npz").exists()


@pytest.mark.slow
def test_the_pipeline_applies_it_at_its_overlap_and_says_not_elsewhere(acquisitions, tmp_path, dask_client):
    """Through the runner: the stitch step takes the file's seam bias out at the calibrated overlap (and says
    so, with ``estimates.seam_bias`` from the file), and leaves it at another overlap (and says why)."""
    import zarr

    from imaxt_pipeline.synth import SynthParams
    from imaxt_pipeline.testing import processed_sample

    root, seed, overlap = acquisitions
    out = root / "cal_pipeline.npz"
    rc, text = _run(
        root / "dist", out, "--stage-sigma-px", 0.1, "--distortion-only", "--seam-acquisition", root / "seam"
    )
    assert rc == 0, text
    for k, ov in enumerate((overlap, overlap + 0.05)):
        p = SynthParams(slices=1, rows=3, cols=3, seed=seed + 1, tile_shape=SHAPE, overlap=ov)
        where = tmp_path / f"run{k}"
        processed_sample(
            where,
            p,
            steps=("calibrate", "stitch"),
            client=dask_client,
            **{"steps.calibrate.calibration_file": str(out)},
        )
        stitch = zarr.open_group(str(where / "out.zarr"), mode="r").attrs["imaxt"]["stitch"]
        line = stitch["seam_calibration"]
        source = stitch["estimates"].get("seam_bias", {}).get("source")
        if k == 0:
            assert line.endswith(")") and ": applied (sigma" in line, (seed, line)
            assert source == "calibration file", (seed, stitch["estimates"].get("seam_bias"))
        else:
            assert line.endswith(": not applied") and f"calibrated at {100 * overlap:.1f} %" in line, (seed, line)
            assert source != "calibration file"
