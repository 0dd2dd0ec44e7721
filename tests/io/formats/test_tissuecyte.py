"""TissueCyte reader: round trips through the synthetic writer, missing tiles, restarts, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.formats import detect_format, open_acquisition, parse_mosaic, serpentine
from imaxt_pipeline.io.raw import read_raw_sample, read_tile
from imaxt_pipeline.io.rawzarr import tile_key
from imaxt_pipeline.io.urls import Location
from imaxt_pipeline.synth import SynthParams, synthesize, write_tissuecyte

PARAMS = SynthParams(slices=3, rows=2, cols=3, tile_shape=(32, 40), seed=3, n_beads=2)


@pytest.fixture(scope="module")
def generic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generic") / "synth"
    synthesize(out, PARAMS)
    return out


def _generic_tiles(path: Path) -> dict[tuple[int, int, int, int], np.ndarray]:
    raw = read_raw_sample(str(path))
    loc = Location(str(path))
    return {
        (r.slice, r.z, r.channel, raw.acquisition.tile_index(r.row, r.col)): read_tile(loc, r, raw.acquisition)
        for r in raw.records
    }


def _rounded_stage(path: Path) -> np.ndarray:
    stage = read_raw_sample(str(path)).stage_um
    return np.vectorize(lambda v: round(v * 10) / 10)(stage)


@pytest.mark.parametrize(
    "options",
    [{}, {"compress": True}, {"nov2024": True}, {"orientation": "rot90"}, {"orientation": "antitranspose"}],
    ids=["plain", "gzip", "nov2024", "rot90", "antitranspose"],
)
def test_round_trip_gives_back_positions_grid_and_pixels(generic, tmp_path, options):
    out = tmp_path / "tc"
    assert write_tissuecyte(generic, out, **options) == []
    assert detect_format(str(out)) == "tissuecyte"
    sample = open_acquisition(str(out), orientation=options.get("orientation", "identity"))
    acq = sample.acquisition
    assert (acq.rows, acq.cols, acq.slices, acq.optical_sections) == (2, 3, 3, 1)
    assert acq.tile_shape == (32, 40) and acq.pixel_size_um == 1.0 and acq.slice_thickness_um == 15.0
    assert acq.overlap == pytest.approx(0.1, abs=1e-3)
    assert sample.missing_tiles == [] and sample.notes == []
    np.testing.assert_array_equal(sample.stage_um, _rounded_stage(generic))  # exact, to the 0.1 µm stored
    expected = _generic_tiles(generic)
    assert len(sample.records) == len(expected)
    for rec in sample.records:
        key = (rec.slice, rec.z, rec.channel, acq.tile_index(rec.row, rec.col))
        assert (rec.y_um, rec.x_um) == tuple(sample.stage_um[rec.slice, rec.z, key[3]])
        np.testing.assert_array_equal(sample.read_tile(rec), expected[key])
    if options.get("compress"):
        assert all(r.file.endswith(".tif.gz") for r in sample.records)


def test_stored_layout_follows_the_spec(generic, tmp_path):
    out = tmp_path / "tc"
    write_tissuecyte(generic, out)
    section = (out / "synth-0002" / "Mosaic_synth-0002.txt").read_text()
    assert "startnum:6\n" in section and "acqDate:5/7/2024 1:05:09 PM\n" in section
    names = sorted(p.name for p in (out / "synth-0002").glob("*.tif"))
    assert names[0] == "05072024-1305-10_01.tif" and len(names) == 2 * 6  # 1-based 2-digit channels, N = 6..11
    x = [int(line.split(":")[1]) for line in section.splitlines() if line.startswith("XPos")]
    y = [int(line.split(":")[1]) for line in section.splitlines() if line.startswith("YPos")]
    step_x = np.median(np.abs(np.diff(x))[np.abs(np.diff(x)) > 0])
    step_y = np.median(np.abs(np.diff(y))[np.abs(np.diff(y)) > 0])
    rows = np.rint((max(x) - np.array(x)) / step_x).astype(int)
    cols = np.rint((np.array(y) - min(y)) / step_y).astype(int)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == serpentine(2, 3)  # serpentine, X reversed


def test_missing_tiles_and_restart_are_reported_not_fatal(generic, tmp_path):
    out = tmp_path / "tc"
    missing = write_tissuecyte(generic, out, missing_tiles=2, restart=True, seed=5)
    assert len(missing) == 2 * 2  # two tiles, every channel
    sample = open_acquisition(str(out))
    assert sample.missing_tiles == missing
    assert len(sample.records) == 3 * 2 * 6 - len(missing)
    present = {tile_key(r.slice, r.z, r.channel, sample.acquisition.tile_index(r.row, r.col)) for r in sample.records}
    assert not present & set(missing)
    assert sample.details["tile_prefixes"] == ["05072024-1305", "05082024-1522", "05082024-1522"]
    assert any(n.startswith("restart before section 0002") for n in sample.notes)
    np.testing.assert_array_equal(sample.stage_um, _rounded_stage(generic))  # missing tiles keep their position


def test_one_missing_channel_file_is_one_missing_tile(generic, tmp_path):
    out = tmp_path / "tc"
    write_tissuecyte(generic, out)
    (out / "synth-0001" / "05072024-1305-4_02.tif").unlink()  # t=4 is row 0 col 2 (serpentine): tile 2
    assert open_acquisition(str(out)).missing_tiles == ["0/0/1/2"]


def _write_generic_z(root: Path, layers: int = 2) -> None:
    rng = np.random.default_rng(1)
    (root / "tiles").mkdir(parents=True)
    acq = {
        "sample": "zs",
        "modality": "STPT",
        "pixel_size_um": 0.5,
        "slice_thickness_um": 10.0,
        "tile_shape": [16, 16],
        "overlap": 0.125,
        "channels": ["a", "b", "c"],
        "rows": 2,
        "cols": 2,
        "slices": 2,
        "optical_sections": layers,
    }
    (root / "acquisition.json").write_text(json.dumps(acq))
    with open(root / "tiles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice", "z", "channel", "row", "col", "x_um", "y_um", "file"])
        for s in range(2):
            for z in range(layers):
                for c in range(3):
                    for r in range(2):
                        for col in range(2):
                            name = f"tiles/{s}_{z}_{c}_{r}_{col}.tif"
                            tifffile.imwrite(root / name, rng.integers(0, 4000, (16, 16), dtype=np.uint16))
                            w.writerow([s, z, c, r, col, col * 7.0 + 0.3 * s, r * 7.0 - 0.1, name])


def test_optical_layers_round_trip(tmp_path):
    _write_generic_z(tmp_path / "g")
    write_tissuecyte(tmp_path / "g", tmp_path / "tc")
    sample = open_acquisition(str(tmp_path / "tc"))
    acq = sample.acquisition
    assert acq.optical_sections == 2 and len(acq.channels) == 3 and acq.pixel_size_um == 0.5
    assert acq.overlap == pytest.approx(0.125)
    expected = _generic_tiles(tmp_path / "g")
    assert len(sample.records) == len(expected) == 2 * 2 * 3 * 4
    for rec in sample.records:
        np.testing.assert_array_equal(
            sample.read_tile(rec), expected[(rec.slice, rec.z, rec.channel, acq.tile_index(rec.row, rec.col))]
        )
    # N = startnum + t + layer * mrows * mcolumns: section 2 layer 1 tile 0 is 8 + 0 + 4
    assert (tmp_path / "tc" / "zs-0002" / "05072024-1305-12_03.tif").exists()


def test_pixel_size_override_and_suspicious_pixel_size(generic, tmp_path):
    out = tmp_path / "tc"
    write_tissuecyte(generic, out)
    sample = open_acquisition(str(out), pixel_size_um=0.5)  # tiles 16 x 20 µm, step 28.8 µm: no overlap
    assert sample.acquisition.pixel_size_um == 0.5 and sample.details["pixel_size_from"] == "override"
    assert any("pixel size wrong" in n for n in sample.notes)
    assert sample.acquisition.overlap == 0.0


def test_mosaic_lines_split_at_the_first_colon():
    m = parse_mosaic("M.txt", b"Sample ID: ab:c\r\nacqDate:10/9/2015 10:10:49 PM\r\nXPos-5:-20\r\nYPos0:7\r\nnoise\r\n")
    assert m.text("Sample ID") == "ab:c" and m.text("SampleID") == "ab:c"
    assert m.acq_date() is not None and m.acq_date().strftime("%m%d%Y-%H%M") == "10092015-2210"
    assert (m.xpos, m.ypos, m.ignored_lines) == ([-20], [7], 1)


# -- bad input -------------------------------------------------------------------------
def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _section(out: Path, n: int = 2) -> Path:
    return out / f"synth-{n:04d}" / f"Mosaic_synth-{n:04d}.txt"


BAD = {
    "binary root": (lambda o: (o / "Mosaic_synth.txt").write_bytes(b"\x00\x01\x02"), "Mosaic_synth.txt", "NUL"),
    "bad position": (lambda o: _edit(_section(o), "YPos0:", "YPos0:abc"), "Mosaic_synth-0002.txt", "not an integer"),
    "bad integer": (lambda o: _edit(o / "Mosaic_synth.txt", "mrows:2", "mrows:two"), "Mosaic_synth.txt", "integer"),
    "inconsistent header": (
        lambda o: _edit(_section(o), "mcolumns:3", "mcolumns:2"),
        "Mosaic_synth-0002.txt",
        "mcolumns is 2 but Mosaic_synth.txt says 3",
    ),
    "other sample": (
        lambda o: _edit(_section(o), "Sample ID:synth", "Sample ID:other"),
        "Mosaic_synth-0002.txt",
        "Sample ID",
    ),
    "tile number outside the grid": (
        lambda o: shutil.copy(
            o / "synth-0002" / "05072024-1305-6_01.tif", o / "synth-0002" / "05072024-1305-99_01.tif"
        ),
        "05072024-1305-99_01.tif",
        "tile number 99 outside",
    ),
    "channel outside": (
        lambda o: shutil.copy(o / "synth-0002" / "05072024-1305-6_01.tif", o / "synth-0002" / "05072024-1305-6_03.tif"),
        "05072024-1305-6_03.tif",
        "channel 03",
    ),
    "position count": (lambda o: _edit(_section(o), "XPos", "Xpass"), "Mosaic_synth-0002.txt", "XPos"),
    "missing section mosaic": (lambda o: _section(o, 3).unlink(), "Mosaic_synth-0003.txt", "missing"),
    "two roots": (lambda o: (o / "Mosaic_b.txt").write_text("a:b\n"), str(Path("tc")), "exactly one Mosaic"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_line_naming_the_file(generic, tmp_path, case):
    from imaxt_pipeline.io.upload import upload

    out = tmp_path / "tc"
    write_tissuecyte(generic, out)
    damage, name, problem = BAD[case]
    damage(out)
    with pytest.raises(InputError) as err:
        open_acquisition(str(out))
    message = str(err.value)
    assert "\n" not in message and name in err.value.path and problem in message
    with pytest.raises(InputError):
        upload(str(out), str(tmp_path / "s.zarr"), progress=False)
    assert not (tmp_path / "s.zarr").exists()  # nothing half-written


def test_duplicate_grid_position_is_an_error(generic, tmp_path):
    out = tmp_path / "tc"
    write_tissuecyte(generic, out)
    path = _section(out)
    lines = path.read_text().splitlines()
    xs = [i for i, line in enumerate(lines) if line.startswith("XPos")]
    ys = [i for i, line in enumerate(lines) if line.startswith("YPos")]
    lines[xs[1]], lines[ys[1]] = lines[xs[0]], lines[ys[0]]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="tiles 0 and 1 put both at row 0 col 0"):
        open_acquisition(str(out))


def test_corrupt_gzip_tile_fails_on_read(generic, tmp_path):
    out = tmp_path / "tc"
    write_tissuecyte(generic, out, compress=True)
    victim = out / "synth-0001" / "05072024-1305-0_01.tif.gz"
    victim.write_bytes(victim.read_bytes()[:40])
    sample = open_acquisition(str(out))
    rec = next(r for r in sample.records if r.file.endswith("-0_01.tif.gz"))
    with pytest.raises(InputError, match="05072024-1305-0_01.tif.gz"):
        sample.read_tile(rec)


def test_landed_sections_read_an_acquisition_still_running(generic, tmp_path):
    out = tmp_path / "tc"
    write_tissuecyte(generic, out)
    full = open_acquisition(str(out))
    shutil.rmtree(out / "synth-0003")  # not started yet
    first = open_acquisition(str(out), landed_sections=[1])
    assert first.acquisition == full.acquisition  # the planned sections: the sample's identity does not change
    assert first.details["slices_of_sections"] == [0] and "1 of 3 planned sections landed so far" in first.notes
    assert {r.slice for r in first.records} == {0} and len(first.records) == PARAMS.rows * PARAMS.cols * 2
    assert {int(k.split("/")[0]) for k in first.missing_tiles} == {1, 2}
    np.testing.assert_array_equal(first.stage_um[1], full.stage_um[0])  # the first section's, until it lands
    two = open_acquisition(str(out), landed_sections=[1, 2])
    np.testing.assert_array_equal(two.stage_um[:2], full.stage_um[:2])
    assert [r.file for r in two.records] == [r.file for r in full.records if r.slice < 2]
    with pytest.raises(InputError, match=r"synth-0003: landed section folder is missing"):
        open_acquisition(str(out), landed_sections=[1, 2, 3])
