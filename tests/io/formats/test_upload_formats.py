"""The same acquisition in the generic layout and as TissueCyte uploads to the same tiles and stage positions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.formats import detect_format, open_acquisition
from imaxt_pipeline.io.rawzarr import RawStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.service.cli import main
from imaxt_pipeline.synth import SynthParams, synthesize, write_tissuecyte


def _round_positions(sample: Path) -> None:
    """Round the generic tiles.csv positions to the 0.1 µm TissueCyte stores."""
    with open(sample / "tiles.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(sample / "tiles.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow(
                {
                    **row,
                    "x_um": f"{round(float(row['x_um']) * 10) / 10:.1f}",
                    "y_um": f"{round(float(row['y_um']) * 10) / 10:.1f}",
                }
            )


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("pair")
    # 230.4 µm steps and a 3 px stage error: positions that are not multiples of 0.1 µm before rounding
    synthesize(base / "g", SynthParams(slices=2, rows=2, cols=2, tile_shape=(48, 48), seed=7, pixel_size_um=1.13))
    _round_positions(base / "g")
    write_tissuecyte(base / "g", base / "tc", compress=True, restart=True)
    return base / "g", base / "tc"


def test_generic_and_tissuecyte_upload_to_identical_tiles_and_positions(pair, tmp_path):
    generic, tc = pair
    assert (detect_format(str(generic)), detect_format(str(tc))) == ("generic", "tissuecyte")
    upload(str(generic), str(tmp_path / "g.zarr"), progress=False)
    upload(str(tc), str(tmp_path / "tc.zarr"), progress=False)
    a, b = RawStore(str(tmp_path / "g.zarr")), RawStore(str(tmp_path / "tc.zarr"))
    assert a.tiles.shape == b.tiles.shape
    np.testing.assert_array_equal(np.asarray(a.tiles[...]), np.asarray(b.tiles[...]))
    np.testing.assert_array_equal(a.stage_um, b.stage_um)
    assert a.acquisition.pixel_size_um == b.acquisition.pixel_size_um
    assert a.tile_checksums() == b.tile_checksums()
    assert b.attrs["upload"]["format"] == "tissuecyte" and b.attrs["upload"]["missing_tiles"] == []
    assert a.attrs["upload"]["format"] == "generic"


def test_missing_tiles_are_recorded_in_the_store_and_not_written(pair, tmp_path):
    generic, _ = pair
    tc = tmp_path / "tc"
    missing = write_tissuecyte(generic, tc, missing_tiles=1, seed=2)
    report = upload(str(tc), str(tmp_path / "s.zarr"), progress=False, format="tissuecyte")
    store = RawStore(str(tmp_path / "s.zarr"))
    assert store.attrs["upload"]["missing_tiles"] == missing and len(missing) == 2
    assert not set(missing) & set(report.written) and len(report.written) == 2 * 2 * 4 - 2
    assert not set(missing) & set(store.tile_checksums())
    s, z, c, t = (int(v) for v in missing[0].split("/"))
    assert not np.asarray(store.tiles[s, z, c, t]).any()


def test_generic_options_are_refused_for_the_generic_reader(pair, tmp_path):
    generic, _ = pair
    with pytest.raises(TypeError, match="pixel_size_um"):
        open_acquisition(str(generic), pixel_size_um=0.5)
    with pytest.raises(InputError, match="Mosaic"):
        open_acquisition(str(generic), "tissuecyte")


def test_cli_synth_inspect_upload(tmp_path, capsys):
    out = tmp_path / "scan"
    assert (
        main(
            [
                "synth",
                str(out),
                "--format",
                "tissuecyte",
                "--slices",
                "2",
                "--rows",
                "2",
                "--cols",
                "2",
                "--tile-size",
                "32",
                "--missing-tiles",
                "1",
                "--restart",
                "--gzip",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "format: tissuecyte" in text and "grid: 2 rows x 2 cols of 32 x 32 px tiles" in text
    assert "missing tiles: 2" in text and "restart before section 0002" in text
    assert main(["inspect", str(out), "--json", "--pixel-size-um", "0.56"]) == 0
    assert '"pixel_size_um": 0.56' in capsys.readouterr().out
    assert main(["upload", str(out), str(tmp_path / "s.zarr"), "--no-progress", "--format", "tissuecyte"]) == 0
    assert len(RawStore(str(tmp_path / "s.zarr")).attrs["upload"]["missing_tiles"]) == 2
    assert main(["inspect", str(out), "--format", "generic", "--pixel-size-um", "1"]) == 2
    assert "pixel_size_um" in capsys.readouterr().err


@pytest.mark.slow  # stitch on both stores
def test_generic_and_tissuecyte_stores_stitch_to_the_same_tile_positions(tmp_path, dask_client):
    from imaxt_pipeline.io.output import OutputStore
    from imaxt_pipeline.io.results import read_tile_positions
    from imaxt_pipeline.testing import uploaded_sample

    params = SynthParams(slices=1, rows=2, cols=3, tile_shape=(128, 128), seed=11, pixel_size_um=1.13)
    synthesize(tmp_path / "g", params)
    _round_positions(tmp_path / "g")
    write_tissuecyte(tmp_path / "g", tmp_path / "tc")
    positions = []
    for name in ("g", "tc"):
        sample = uploaded_sample(tmp_path / f"run-{name}", tmp_path / name)
        sample.run(steps=["stitch"], client=dask_client)
        positions.append(read_tile_positions(OutputStore(sample.out, mode="r")))
    generic, tc = positions
    assert sorted(generic) == sorted(tc) and len(generic) == 6
    diff = max(float(np.max(np.abs(np.subtract(generic[k], tc[k])))) for k in generic)
    assert diff <= 0.01, f"tile positions differ by {diff:.4f} px"
    nominal = RawStore(str(tmp_path / "run-g" / "raw.zarr")).stage_px(0, 0)
    assert np.ptp(nominal[:, 1]) > 0  # a real grid, not one tile
