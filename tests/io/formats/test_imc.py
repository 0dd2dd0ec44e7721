"""Imaging mass cytometry: synthetic .txt and .mcd files read through readimc, uploaded as float32 tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import readimc  # (the formats extra; a missing reader is a failure, not a skip)

from imaxt_pipeline.errors import InputError
from imaxt_pipeline.io.formats import detect_format, open_acquisition
from imaxt_pipeline.io.rawzarr import RawStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.service.cli import main
from imaxt_pipeline.synth import ImcAcquisition, write_imc_txt, write_mcd

PANEL = [("DNA1", "Ir", 191), ("CD45", "Sm", 152), ("", "Nd", 148)]
NAMES = ["Ir191_DNA1", "Sm152_CD45", "Nd148"]


def _counts(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return (rng.gamma(2.0, 3.0, (len(PANEL), h, w)) * rng.integers(0, 2, (len(PANEL), h, w))).astype(np.float32)


@pytest.fixture(scope="module")
def mcd(tmp_path_factory) -> tuple[Path, list[ImcAcquisition]]:
    rng = np.random.default_rng(0)
    acqs = [
        ImcAcquisition(_counts(rng, 12, 15), (1000.0, 2000.0), "ROI one"),
        ImcAcquisition(_counts(rng, 9, 15), (3000.5, 2500.0), "ROI two"),
    ]
    path = tmp_path_factory.mktemp("imc") / "slide.mcd"
    write_mcd(path, acqs, PANEL, pixel_size_um=1.0)
    return path, acqs


def test_txt_round_trips_channels_and_float32_counts(tmp_path):
    img = _counts(np.random.default_rng(1), 7, 11)
    img[0, 0, 0] = 1.2345678
    path = tmp_path / "roi_1.txt"
    write_imc_txt(path, img, PANEL)
    assert detect_format(str(path)) == "imc"
    sample = open_acquisition(str(path))
    acq = sample.acquisition
    assert (acq.modality, acq.channels, acq.tile_shape, acq.slices, acq.rows, acq.cols) == (
        "IMC", NAMES, (7, 11), 1, 1, 1
    )  # fmt: skip
    assert acq.model_dump()["dtype"] == "float32"
    for rec in sample.records:
        pixels = sample.read_tile(rec)
        assert pixels.dtype == np.float32
        np.testing.assert_array_equal(pixels, img[rec.channel])


def test_mcd_is_what_readimc_parses(mcd):
    path, acqs = mcd
    with readimc.MCDFile(path) as f:
        found = [a for s in f.slides for a in s.acquisitions]
        assert [a.description for a in found] == ["ROI one", "ROI two"]
        assert list(found[0].channel_labels) == [label for label, _, _ in PANEL]
        np.testing.assert_array_equal(f.read_acquisition(found[1]), acqs[1].image)


def test_mcd_acquisitions_are_sections_with_positions_and_padding(mcd):
    path, acqs = mcd
    sample = open_acquisition(str(path))
    acq = sample.acquisition
    assert (acq.slices, acq.tile_shape, acq.channels, acq.pixel_size_um) == (2, (12, 15), NAMES, 1.0)
    np.testing.assert_allclose(sample.stage_um[:, 0, 0], [[-2000.0, 1000.0], [-2500.0, 3000.5]])
    assert any("padded" in n for n in sample.notes)
    for rec in sample.records:
        pixels = sample.read_tile(rec)
        want = acqs[rec.slice].image[rec.channel]
        np.testing.assert_array_equal(pixels[: want.shape[0], : want.shape[1]], want)
        assert not pixels[want.shape[0] :].any()


def test_mcd_upload_from_the_command_line_is_float32_and_resumes(mcd, tmp_path):
    path, acqs = mcd
    dest = tmp_path / "imc.zarr"
    assert main(["upload", str(path), str(dest), "--no-progress"]) == 0
    store = RawStore(str(dest))
    assert store.tiles.dtype == np.float32 and store.attrs["upload"]["format"] == "imc"
    np.testing.assert_array_equal(np.asarray(store.tiles[0, 0, :, 0]), acqs[0].image)
    np.testing.assert_array_equal(np.asarray(store.read_tile(1, 0, 0))[:, :9], acqs[1].image)
    again = upload(str(path), str(dest), progress=False)
    assert not again.written and len(again.verified) == 2 * len(PANEL)


def _one_line(exc: pytest.ExceptionInfo[InputError], path: Path) -> str:
    text = str(exc.value)
    assert "\n" not in text and str(path) in text
    return text


@pytest.mark.parametrize(("broken", "message"), [({"empty": 1}, "is empty"), ({"truncate": 0}, "truncated")])
def test_empty_or_truncated_mcd_acquisitions_are_refused_and_nothing_is_written(mcd, tmp_path, broken, message):
    _, acqs = mcd
    path = tmp_path / "broken.mcd"
    write_mcd(path, acqs, PANEL, **broken)
    with pytest.raises(InputError) as exc:
        upload(str(path), str(tmp_path / "out.zarr"), progress=False)
    text = _one_line(exc, path)
    assert message in text and "acquisition" in text
    assert not (tmp_path / "out.zarr").exists()


def test_cut_mcd_and_txt_files_are_one_line(mcd, tmp_path):
    path, _ = mcd
    cut = tmp_path / "cut.mcd"
    cut.write_bytes(path.read_bytes()[:-100])  # the schema at the end is lost
    with pytest.raises(InputError) as exc:
        open_acquisition(str(cut))
    _one_line(exc, cut)
    txt = tmp_path / "cut.txt"
    write_imc_txt(txt, _counts(np.random.default_rng(2), 5, 6), PANEL)
    txt.write_bytes(txt.read_bytes()[:-40])
    with pytest.raises(InputError) as exc:
        upload(str(txt), str(tmp_path / "t.zarr"), progress=False)
    _one_line(exc, txt)
    assert not (tmp_path / "t.zarr").exists()
