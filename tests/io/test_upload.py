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


# -- sections as they land ----------------------------------------------------------
def _tissuecyte(tmp_path, slices=3):
    from imaxt_pipeline.synth import SynthParams
    from imaxt_pipeline.synth._tissuecyte import synthesize_tissuecyte

    src = tmp_path / "scan"
    params = SynthParams(sample="tc", slices=slices, rows=2, cols=2, tile_shape=(48, 48), seed=5)
    synthesize_tissuecyte(src, params)
    return src


class _Reads:
    """Counts source tile reads and stored-chunk verifications per slice (spies on both functions)."""

    def __init__(self, monkeypatch):
        from imaxt_pipeline.io import upload as upload_module
        from imaxt_pipeline.io.formats._tissuecyte import TissueCyteReader

        self.source: list[int] = []
        self.stored: list[int] = []
        read_tile, stored_digest = TissueCyteReader.read_tile, upload_module._stored_digest

        def counted_read(reader, sample, record):
            self.source.append(record.slice)
            return read_tile(reader, sample, record)

        def counted_digest(dest, tiles, index, shape, zeros):
            self.stored.append(index[0])
            return stored_digest(dest, tiles, index, shape, zeros)

        monkeypatch.setattr(TissueCyteReader, "read_tile", counted_read)
        monkeypatch.setattr(upload_module, "_stored_digest", counted_digest)

    def take(self):
        got = (sorted(set(self.source)), len(self.source), sorted(set(self.stored)))
        self.source.clear()
        self.stored.clear()
        return got


def test_a_landing_reads_and_verifies_only_the_new_sections_tiles(tmp_path, monkeypatch):
    src = _tissuecyte(tmp_path)
    dest, per_section = str(tmp_path / "live.zarr"), 2 * 2 * 2  # channels x rows x cols
    reads = _Reads(monkeypatch)

    def land(*sections, **kw):
        return upload(
            str(src),
            dest,
            progress=False,
            format="tissuecyte",
            reader_options={"landed_sections": list(sections)},
            new_sections_only=True,
            **kw,
        )

    first = land(1)
    assert len(first.written) == per_section and reads.take() == ([0], per_section, [])  # a new store
    second = land(1, 2)
    assert len(second.written) == per_section and len(second.trusted) == per_section
    assert reads.take() == ([1], per_section, [1])  # section 1 neither read nor verified again
    third = land(1, 2, 3)
    assert len(third.trusted) == 2 * per_section and reads.take() == ([2], per_section, [2])
    assert "16 in sections verified earlier" in third.summary()
    again = land(1, 2, 3)  # nothing new: nothing read at all
    assert not again.written and reads.take() == ([], 0, [])

    # The store is exactly what one upload of the finished acquisition writes.
    once = str(tmp_path / "once.zarr")
    upload(str(src), once, progress=False, format="tissuecyte", reader_options={"landed_sections": [1, 2, 3]})
    assert reads.take()[1] == 3 * per_section
    live, whole = RawStore(dest), RawStore(once)
    assert live.tile_checksums() == whole.tile_checksums() and len(live.tile_checksums()) == 3 * per_section
    assert live.section_checksums() == whole.section_checksums()
    np.testing.assert_array_equal(live.tiles[...], whole.tiles[...])
    np.testing.assert_array_equal(live.stage_um, whole.stage_um)
    # Without new_sections_only every landed tile is read and checked again.
    upload(str(src), dest, progress=False, format="tissuecyte", reader_options={"landed_sections": [1, 2, 3]})
    assert reads.take() == ([0, 1, 2], 3 * per_section, [0, 1, 2])


def test_an_earlier_section_is_checked_again_when_its_tiles_changed_or_the_store_is_incomplete(tmp_path, monkeypatch):
    import zarr

    src = _tissuecyte(tmp_path, slices=2)
    dest, per_section = str(tmp_path / "live.zarr"), 8
    late = sorted((src / "tc-0001").glob("*-3_02.tif"))[0]
    held = late.read_bytes()
    late.unlink()  # section 1 landed with a tile missing
    reads = _Reads(monkeypatch)
    opts = {"format": "tissuecyte", "progress": False, "new_sections_only": True}
    upload(str(src), dest, reader_options={"landed_sections": [1]}, **opts)
    assert reads.take()[1] == per_section - 1
    late.write_bytes(held)  # ...and the tile turns up later: section 1 is read again, whole
    report = upload(str(src), dest, reader_options={"landed_sections": [1, 2]}, **opts)
    assert not report.trusted and reads.take() == ([0, 1], 2 * per_section, [0, 1])
    assert "0/0/1/3" not in RawStore(dest).missing_tiles

    # A store left incomplete (an interrupted upload) trusts nothing.
    group = zarr.open_group(dest, mode="r+")
    meta = dict(group.attrs["imaxt"])
    group.attrs["imaxt"] = {**meta, "upload": {**meta["upload"], "complete": False}}
    report = upload(str(src), dest, reader_options={"landed_sections": [1, 2]}, **opts)
    assert not report.trusted and reads.take() == ([0, 1], 2 * per_section, [0, 1])
    # A section whose recorded checksum disagrees with its tiles' entries is checked again.
    group = zarr.open_group(dest, mode="r+")
    meta = dict(group.attrs["imaxt"])
    table = dict(meta["upload"]["tile_sha256"])
    table["0/0/0/0"] = "0" * 64
    group.attrs["imaxt"] = {**meta, "upload": {**meta["upload"], "tile_sha256": table}}
    report = upload(str(src), dest, reader_options={"landed_sections": [1, 2]}, **opts)
    assert len(report.trusted) == per_section and reads.take() == ([0], per_section, [0])
    assert RawStore(dest).tile_checksums()["0/0/0/0"] != "0" * 64
