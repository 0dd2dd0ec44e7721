"""Uploader: bit-exact round trips (local and S3 over HTTP), resumability, completeness."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tifffile

from imaxt_pipeline.errors import StoreError
from imaxt_pipeline.io.raw import read_raw_sample
from imaxt_pipeline.io.rawzarr import RawStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.testing._raw import write_raw_sample


def _assert_bit_exact(sample_dir, store: RawStore):
    raw = read_raw_sample(str(sample_dir))
    acq = raw.acquisition
    assert store.acquisition == acq
    for rec in raw.records:
        expected = tifffile.imread(sample_dir / rec.file)
        got = store.tiles[rec.slice, rec.z, rec.channel, acq.tile_index(rec.row, rec.col)]
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(store.stage_um, raw.stage_um)


@pytest.fixture
def sample(tmp_path):
    return write_raw_sample(tmp_path / "raw", slices=2, rows=2, cols=3, tile=48)


def test_local_round_trip_is_bit_exact(sample, tmp_path):
    report = upload(str(sample), str(tmp_path / "s.zarr"), progress=False)
    assert len(report.written) == 2 * 2 * 6 and not report.verified
    store = RawStore(str(tmp_path / "s.zarr"))
    _assert_bit_exact(sample, store)
    meta = store.attrs
    assert meta["upload"]["complete"] is True
    assert len(meta["upload"]["tile_sha256"]) == 24
    entry = meta["provenance"][-1]
    assert entry["name"] == "upload" and entry["software"]["zarr"] and entry["start"] <= entry["end"]
    codecs = store.tiles.metadata.codecs
    assert any("blosc" in type(c).__name__.lower() for c in codecs)
    assert store.tiles.chunks == (1, 1, 1, 1, 48, 48)


def test_s3_round_trip_is_bit_exact(sample, s3_endpoint, s3_bucket):
    url = f"s3://{s3_bucket}/raw/{uuid.uuid4().hex}.zarr"
    opts = {"endpoint_url": s3_endpoint}
    report = upload(str(sample), url, storage_options=opts, progress=False)
    assert len(report.written) == 24
    store = RawStore(url, opts)
    _assert_bit_exact(sample, store)
    # A second upload finds everything in place and rewrites nothing.
    again = upload(str(sample), url, storage_options=opts, progress=False)
    assert not again.written and len(again.verified) == 24


class _Interrupt(Exception):
    pass


def test_interrupted_upload_resumes_without_rewriting_finished_tiles(sample, tmp_path):
    dest = tmp_path / "s.zarr"
    done: list[str] = []

    def stop_after_ten(key):
        done.append(key)
        if len(done) >= 10:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        upload(str(sample), str(dest), progress=False, workers=1, on_tile=stop_after_ten)
    with pytest.raises(StoreError, match="upload is not complete"):
        RawStore(str(dest))
    chunk_files = {
        p: p.stat().st_mtime_ns for p in (dest / "tiles").rglob("*") if p.is_file() and p.name != "zarr.json"
    }
    assert len(chunk_files) == len(done) and 10 <= len(done) < 24

    rewritten: list[str] = []
    report = upload(str(sample), str(dest), progress=False, on_tile=rewritten.append)
    assert sorted(report.verified) == sorted(done)
    assert not set(rewritten) & set(done)
    assert len(report.written) == 24 - len(done)
    for path, mtime in chunk_files.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    _assert_bit_exact(sample, RawStore(str(dest)))


def test_corrupted_chunk_is_detected_and_rewritten(sample, tmp_path):
    dest = tmp_path / "s.zarr"
    upload(str(sample), str(dest), progress=False)
    store = RawStore(str(dest))
    import zarr

    tiles = zarr.open_group(str(dest), mode="r+")["tiles"]
    tiles[1, 0, 1, 5] = np.zeros((48, 48), np.uint16)
    report = upload(str(sample), str(dest), progress=False)
    assert report.written == ["1/0/1/5"]
    _assert_bit_exact(sample, store)


def test_refuses_to_mix_samples(sample, tmp_path):
    other = write_raw_sample(tmp_path / "other", slices=3, rows=2, cols=3, tile=48)
    dest = tmp_path / "s.zarr"
    upload(str(sample), str(dest), progress=False)
    with pytest.raises(StoreError, match="different sample"):
        upload(str(other), str(dest), progress=False)
