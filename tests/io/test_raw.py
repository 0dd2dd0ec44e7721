"""Raw-layout validation: every contract violation is one clear line naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.raw import read_raw_sample
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.testing._raw import rewrite_csv, write_raw_sample


@pytest.fixture
def sample(tmp_path):
    return write_raw_sample(tmp_path / "s")


def test_valid_sample_reads(sample):
    raw = read_raw_sample(str(sample))
    assert raw.acquisition.sample == "tiny"
    assert len(raw.records) == 2 * 2 * 2 * 2
    assert raw.stage_um.shape == (2, 1, 4, 2)
    np.testing.assert_allclose(raw.stage_um[0, 0, 3], [28.8, 28.8])


def _break_missing_file(root):
    (root / "tiles" / "s001_c1_r1_c1.tif").unlink()
    return "s001_c1_r1_c1.tif", "file is missing"


def _break_escape(root):
    rewrite_csv(root, lambda rows: [r[:6] + ["../../etc/passwd"] if i == 0 else r for i, r in enumerate(rows)])
    return "tiles.csv", "escapes the sample folder"


def _break_dtype(root):
    tifffile.imwrite(root / "tiles" / "s000_c0_r0_c1.tif", np.zeros((32, 32), np.float32))
    return "s000_c0_r0_c1.tif", "dtype float32 but uint16 is required"


def _break_shape(root):
    tifffile.imwrite(root / "tiles" / "s000_c1_r1_c0.tif", np.zeros((32, 30), np.uint16))
    return "s000_c1_r1_c0.tif", "shape (32, 30)"


def _break_duplicate(root):
    rewrite_csv(root, lambda rows: rows + [rows[2]])
    return "tiles.csv", "duplicated tile"


def _break_missing_tile(root):
    rewrite_csv(root, lambda rows: rows[:-1])
    return "tiles.csv", "missing tile slice=1 z=0 channel=1 row=1 col=1"


def _break_json(root):
    acq = json.loads((root / "acquisition.json").read_text())
    del acq["pixel_size_um"]
    (root / "acquisition.json").write_text(json.dumps(acq))
    return "acquisition.json", "pixel_size_um"


def _break_range(root):
    rewrite_csv(root, lambda rows: [["7"] + r[1:] if i == 0 else r for i, r in enumerate(rows)])
    return "tiles.csv", "slice=7 outside 0..1"


@pytest.mark.parametrize(
    "breaker",
    [
        _break_missing_file,
        _break_escape,
        _break_dtype,
        _break_shape,
        _break_duplicate,
        _break_missing_tile,
        _break_json,
        _break_range,
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(sample, tmp_path, breaker):
    filename, problem = breaker(sample)
    dest = tmp_path / "out.zarr"
    with pytest.raises(InputError) as info:
        upload(str(sample), str(dest), progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert filename in message and problem in message
    assert not dest.exists()


def test_cli_reports_bad_input_with_exit_code_2(sample, tmp_path, capsys):
    from imaxt_pipeline.service.cli import main

    _break_missing_file(sample)
    code = main(["upload", str(sample), str(tmp_path / "o.zarr"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("imaxt upload: error:") and "s001_c1_r1_c1.tif: file is missing" in err
    assert len(err.splitlines()) == 1
