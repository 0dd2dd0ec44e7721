"""Zeiss Axioscan CZI mosaics: synthetic CZI files read back to the generic sample's tiles, grid and positions."""

from __future__ import annotations

import importlib
from pathlib import Path

import aicspylibczi  # noqa: F401  (the formats extra: a missing reader fails, never skips)
import numpy as np
import pytest

from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.formats import detect_format, open_acquisition
from imaxt_pipeline.io.raw import read_raw_sample, read_tile
from imaxt_pipeline.io.rawzarr import RawStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.io.urls import Location
from imaxt_pipeline.service.cli import main
from imaxt_pipeline.synth import SynthParams, synthesize, write_axioscan, write_czi


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("czi")
    # 2 scenes, 2 x 3 tiles, 2 channels, a 3 px stage error: positions off the nominal grid
    synthesize(base / "g", SynthParams(slices=2, rows=2, cols=3, tile_shape=(32, 40), seed=3, pixel_size_um=0.65))
    write_axioscan(base / "g", base / "scan.czi")
    return base / "g", base / "scan.czi"


def test_czi_round_trips_positions_grid_and_pixels(pair):
    generic, czi = pair
    assert detect_format(str(czi)) == "czi"
    sample = open_acquisition(str(czi))
    raw = read_raw_sample(str(generic))
    acq, ref = sample.acquisition, raw.acquisition
    assert acq.modality == "AXIO" and sample.format == "czi"
    assert (acq.slices, acq.rows, acq.cols, acq.tile_shape) == (ref.slices, ref.rows, ref.cols, ref.tile_shape)
    assert acq.channels == ref.channels
    assert acq.pixel_size_um == pytest.approx(ref.pixel_size_um, rel=1e-12)
    np.testing.assert_allclose(sample.stage_um, raw.stage_um, atol=1e-5)
    assert sample.missing_tiles == [] and len(sample.records) == len(raw.records)
    loc = Location(str(generic))
    for rec in sample.records:
        theirs = raw.record_for(rec.slice, rec.z, rec.channel, acq.tile_index(rec.row, rec.col))
        assert rec.x_um == pytest.approx(theirs.x_um, abs=1e-5) and rec.y_um == pytest.approx(theirs.y_um, abs=1e-5)
        pixels = sample.read_tile(rec)
        assert pixels.dtype == np.uint16
        np.testing.assert_array_equal(pixels, read_tile(loc, theirs, ref))


def test_pylibczirw_reads_the_synthetic_file(pair):
    czi_mod = importlib.import_module("pylibCZIrw.czi")
    _, czi = pair
    with czi_mod.open_czi(str(czi)) as doc:
        assert set(doc.scenes_bounding_rectangle) == {0, 1}
        assert doc.pixel_types[0] == "Gray16"


def test_czi_upload_from_the_command_line_matches_the_generic_upload(pair, tmp_path, capsys):
    generic, czi = pair
    assert main(["upload", str(czi), str(tmp_path / "c.zarr"), "--no-progress"]) == 0
    upload(str(generic), str(tmp_path / "g.zarr"), progress=False)
    a, b = RawStore(str(tmp_path / "g.zarr")), RawStore(str(tmp_path / "c.zarr"))
    np.testing.assert_array_equal(np.asarray(a.tiles[...]), np.asarray(b.tiles[...]))
    np.testing.assert_allclose(a.stage_um, b.stage_um, atol=1e-5)
    assert a.tile_checksums() == b.tile_checksums()
    assert b.attrs["upload"]["format"] == "czi" and b.acquisition.modality == "AXIO"
    # a repeated upload verifies every tile in place
    again = upload(str(czi), str(tmp_path / "c.zarr"), progress=False)
    assert not again.written and len(again.verified) == len(a.tile_checksums())


def _one_line(exc: pytest.ExceptionInfo[InputError], path: Path) -> str:
    text = str(exc.value)
    assert "\n" not in text and str(path) in text
    return text


def test_czi_without_stage_positions_is_refused_and_nothing_is_written(tmp_path):
    tiles = np.arange(2 * 2 * 4 * 16 * 20, dtype=np.uint16).reshape(2, 2, 4, 16, 20)
    stage = np.array([[[r * 14.0, c * 18.0] for r in range(2) for c in range(2)]] * 2)
    path = tmp_path / "nostage.czi"
    write_czi(path, tiles, stage, channels=["DAPI", "FITC"], pixel_size_um=1.0, stage_positions=False)
    with pytest.raises(InputError) as exc:
        upload(str(path), str(tmp_path / "out.zarr"), progress=False)
    assert "StageYPosition" in _one_line(exc, path)
    assert not (tmp_path / "out.zarr").exists()


def test_a_pylibczirw_mosaic_has_no_stage_positions(tmp_path):
    czi_mod = importlib.import_module("pylibCZIrw.czi")
    path = tmp_path / "plain.czi"
    with czi_mod.create_czi(str(path), exist_ok=True) as w:
        for scene in range(2):
            for t, (x, y) in enumerate([(0, 0), (18, 0), (0, 14), (18, 14)]):
                for c in range(2):
                    w.write(
                        np.full((16, 20), t + c, np.uint16), plane={"C": c}, location=(x, y + 100 * scene), scene=scene
                    )
        w.write_metadata(channel_names={0: "DAPI", 1: "FITC"}, scale_x=1e-6, scale_y=1e-6)
    assert detect_format(str(path)) == "czi"
    with pytest.raises(InputError) as exc:
        open_acquisition(str(path))
    text = _one_line(exc, path)
    assert "stage positions" in text or "no mosaic tiles" in text


def test_truncated_czi_is_one_line(pair, tmp_path):
    _, czi = pair
    cut = tmp_path / "cut.czi"
    cut.write_bytes(czi.read_bytes()[: czi.stat().st_size // 2])
    with pytest.raises(InputError) as exc:
        open_acquisition(str(cut), "czi")
    _one_line(exc, cut)
    with pytest.raises(InputError):
        open_acquisition(str(tmp_path), "czi")  # a folder is not a CZI file


def test_czi_options(pair):
    _, czi = pair
    sample = open_acquisition(str(czi), pixel_size_um=0.5, slice_thickness_um=8.0, channel_names=["a", "b"])
    acq = sample.acquisition
    assert (acq.pixel_size_um, acq.slice_thickness_um, acq.channels) == (0.5, 8.0, ["a", "b"])
    with pytest.raises(TypeError, match="orientation"):
        open_acquisition(str(czi), orientation="rot90")
