"""Fault injection for ``imaxt upload``: nothing lost, nothing corrupt processed.

Every hostile input runs the real command line in a subprocess and must end in one line
on stderr (no traceback), exit code 2, and no change to anything the tool did not write:
the source and whatever the destination held before are fingerprinted before and after.
Destinations are checked locally and on S3 (moto over HTTP).
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from imaxt_pipeline.errors import StoreError
from imaxt_pipeline.io.rawzarr import RawStore, sha256
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.testing._faults import (
    assert_one_line_error,
    bucket_digest,
    chunk_files,
    cli_in_process,
    put_folder,
    put_objects,
    run_cli,
    tree_digest,
    write_tiles,
)
from imaxt_pipeline.testing._raw import rewrite_csv, write_raw_sample

SECRET = "SECRET-CONTENT-7f3a"


@pytest.fixture
def raw(tmp_path):
    return write_raw_sample(tmp_path / "raw")


def _upload_cli(src, dest, *extra, fresh_interpreter=True):
    # A fresh interpreter where how the process ends is tested (one line, no traceback, exit status);
    # main() in this one where only what the upload did and printed is (an interpreter's imports saved).
    run = run_cli if fresh_interpreter else cli_in_process
    return run("upload", str(src), str(dest), "--no-progress", *extra)


def _assert_bit_exact(sample_dir, store: RawStore):
    from imaxt_pipeline.io.raw import read_raw_sample

    sample = read_raw_sample(str(sample_dir))
    acq = sample.acquisition
    for rec in sample.records:
        got = store.tiles[rec.slice, rec.z, rec.channel, acq.tile_index(rec.row, rec.col)]
        np.testing.assert_array_equal(got, tifffile.imread(Path(sample_dir) / rec.file))


# -- destinations (local) ---------------------------------------------------------------------
def _dest_is_source(tmp, raw):
    return raw, "is the source folder"


def _dest_is_source_spelled_otherwise(tmp, raw):
    return Path(f"{raw}/../{raw.name}/"), "is the source folder"


def _dest_is_link_to_source(tmp, raw):
    link = tmp / "link"
    link.symlink_to(raw, target_is_directory=True)
    return link, "is the source folder"


def _dest_is_parent_of_source(tmp, raw):
    return tmp, "contains the source folder"


def _dest_inside_source(tmp, raw):
    return raw / "tiles" / "s.zarr", "is inside the source folder"


def _dest_with_other_files(tmp, raw):
    dest = tmp / "other"
    (dest / "sub").mkdir(parents=True)
    (dest / "notes.txt").write_text("keep me")
    (dest / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return dest, "is not empty and is not a store written by"


def _dest_is_an_existing_file(tmp, raw):
    dest = tmp / "file.zarr"
    dest.write_text("not a folder")
    return dest, "existing file"


def _dest_is_another_samples_store(tmp, raw):
    other = write_raw_sample(tmp / "other-raw", slices=3, seed=5)
    upload(str(other), str(tmp / "s.zarr"), progress=False)
    return tmp / "s.zarr", "different sample"


def _dest_is_our_store_with_a_foreign_file(tmp, raw):
    upload(str(raw), str(tmp / "s.zarr"), progress=False)
    (tmp / "s.zarr" / "tiles" / "README.txt").write_text("someone else's")
    return tmp / "s.zarr", "did not write (e.g. 'tiles/README.txt')"


def _dest_is_a_foreign_zarr_store(tmp, raw):
    root = zarr.open_group(str(tmp / "out.zarr"), mode="w")
    root.attrs["imaxt"] = {"provenance": [], "complete": True, "acquisition": {"sample": "tiny"}}
    root.create_array("mosaic", shape=(4, 4), dtype="uint16")[...] = 7
    return tmp / "out.zarr", "is not a store written by"


DEST_CASES = [
    _dest_is_source,
    _dest_is_source_spelled_otherwise,
    _dest_is_link_to_source,
    _dest_is_parent_of_source,
    _dest_inside_source,
    _dest_with_other_files,
    _dest_is_an_existing_file,
    _dest_is_another_samples_store,
    _dest_is_our_store_with_a_foreign_file,
    _dest_is_a_foreign_zarr_store,
]


# --overwrite changes nothing about what is refused: it only rewrites our own store of the same sample.
OVERWRITE_CASES = [
    _dest_is_source,
    _dest_is_parent_of_source,
    _dest_with_other_files,
    _dest_is_another_samples_store,
    _dest_is_our_store_with_a_foreign_file,
    _dest_is_a_foreign_zarr_store,
]
# Without --overwrite, another sample's local store was already refused in one line: tests/io covers that.
LOCAL_CASES = [(case, []) for case in DEST_CASES if case is not _dest_is_another_samples_store] + [
    (case, ["--overwrite"]) for case in OVERWRITE_CASES
]


@pytest.mark.parametrize(
    ("case", "extra"), LOCAL_CASES, ids=[c.__name__.strip("_") + ("-overwrite" if e else "") for c, e in LOCAL_CASES]
)
def test_local_destination_that_is_not_ours_is_refused_untouched(tmp_path, raw, case, extra):
    dest, fragment = case(tmp_path, raw)
    before = tree_digest(tmp_path)
    proc = _upload_cli(raw, dest, *extra)
    assert_one_line_error(proc, fragment)
    assert tree_digest(tmp_path) == before


# -- destinations (S3) ------------------------------------------------------------------------
def _s3_prefix_with_other_objects(endpoint, bucket, raw, tmp):
    put_objects(endpoint, bucket, {"raw/s.zarr/keep.txt": b"keep", "raw/s.zarr/deep/x.bin": b"\x01"})
    return f"s3://{bucket}/raw/s.zarr", "is not empty and is not a store written by"


def _s3_bucket_root_with_other_objects(endpoint, bucket, raw, tmp):
    put_objects(endpoint, bucket, {"other-sample/acquisition.json": b"{}"})
    return f"s3://{bucket}", "is not empty and is not a store written by"


def _s3_another_samples_store(endpoint, bucket, raw, tmp):
    other = write_raw_sample(tmp / "other-raw", slices=3, seed=5)
    url = f"s3://{bucket}/raw/s.zarr"
    assert _upload_cli(other, url, "--endpoint-url", endpoint, fresh_interpreter=False).returncode == 0
    return url, "different sample"


def _s3_our_store_with_a_foreign_object(endpoint, bucket, raw, tmp):
    url = f"s3://{bucket}/raw/s.zarr"
    assert _upload_cli(raw, url, "--endpoint-url", endpoint, fresh_interpreter=False).returncode == 0
    put_objects(endpoint, bucket, {"raw/s.zarr/notes.txt": b"someone else's"})
    return url, "did not write (e.g. 'notes.txt')"


def _s3_our_store_with_tampered_arrays(endpoint, bucket, raw, tmp):
    import boto3

    url = f"s3://{bucket}/raw/s.zarr"
    assert _upload_cli(raw, url, "--endpoint-url", endpoint, fresh_interpreter=False).returncode == 0
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    meta = json.loads(s3.get_object(Bucket=bucket, Key="raw/s.zarr/tiles/zarr.json")["Body"].read())
    meta["shape"][0] = 5
    put_objects(endpoint, bucket, {"raw/s.zarr/tiles/zarr.json": json.dumps(meta).encode()})
    return url, "arrays do not match this sample's acquisition"


def _s3_source_is_dest(endpoint, bucket, raw, tmp):
    put_folder(endpoint, bucket, "incoming/tiny", raw)
    return f"s3://{bucket}/incoming/tiny", "is the source folder"


def _s3_dest_contains_source(endpoint, bucket, raw, tmp):
    put_folder(endpoint, bucket, "incoming/tiny", raw)
    return f"s3://{bucket}/incoming", "contains the source folder"


S3_CASES = [
    _s3_prefix_with_other_objects,
    _s3_bucket_root_with_other_objects,
    _s3_another_samples_store,
    _s3_our_store_with_a_foreign_object,
    _s3_our_store_with_tampered_arrays,
    _s3_source_is_dest,
    _s3_dest_contains_source,
]


@pytest.mark.parametrize("case", S3_CASES, ids=lambda c: c.__name__.strip("_"))
def test_s3_destination_that_is_not_ours_is_refused_untouched(tmp_path, raw, s3_endpoint, s3_bucket, case):
    dest, fragment = case(s3_endpoint, s3_bucket, raw, tmp_path)
    source = f"s3://{s3_bucket}/incoming/tiny" if case in (_s3_source_is_dest, _s3_dest_contains_source) else raw
    before, local_before = bucket_digest(s3_endpoint, s3_bucket), tree_digest(tmp_path)
    proc = _upload_cli(source, dest, "--endpoint-url", s3_endpoint)
    assert_one_line_error(proc, fragment)
    assert bucket_digest(s3_endpoint, s3_bucket) == before
    assert tree_digest(tmp_path) == local_before


def test_our_own_stores_are_resumed_and_overwritten_not_refused(tmp_path, raw, s3_endpoint, s3_bucket):
    local = tmp_path / "s.zarr"
    local.mkdir()  # an empty folder is a fine destination
    remote = f"s3://{s3_bucket}/raw/s.zarr"
    for dest, extra in ((local, []), (remote, ["--endpoint-url", s3_endpoint])):
        assert _upload_cli(raw, dest, *extra, fresh_interpreter=False).returncode == 0
        again = _upload_cli(raw, dest, *extra, fresh_interpreter=False)
        assert again.returncode == 0 and "0 tiles written, 16 already present" in again.stdout
        forced = _upload_cli(raw, dest, "--overwrite", *extra, fresh_interpreter=False)
        assert forced.returncode == 0 and "16 tiles written, 0 already present" in forced.stdout, forced.stderr
    store = RawStore(str(local))
    owner = store.attrs["owner"]
    assert owner["tool"] == "imaxt-pipeline upload" and owner["sample"] == "tiny"
    assert sorted(owner["sections"]) == ["0", "1"] and len(owner["sample_id"]) == 64
    _assert_bit_exact(raw, store)
    # The S3 store carries the same record (read over HTTP with boto3, not through the s3fs that wrote it).
    import boto3

    body = (
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        .get_object(Bucket=s3_bucket, Key="raw/s.zarr/zarr.json")["Body"]
        .read()
    )
    assert json.loads(body)["attributes"]["imaxt"]["owner"] == owner


# -- hostile input ----------------------------------------------------------------------------
def _acq_utf16(root):
    text = (root / "acquisition.json").read_text()
    (root / "acquisition.json").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    return "acquisition.json: is UTF-16 text"


def _csv_utf16(root):
    text = (root / "tiles.csv").read_text()
    (root / "tiles.csv").write_bytes(text.encode("utf-16"))
    return "tiles.csv: is UTF-16 text"


def _acq_latin1(root):
    acq = json.loads((root / "acquisition.json").read_text())
    acq["operator"] = "Müller"
    (root / "acquisition.json").write_bytes(json.dumps(acq, ensure_ascii=False).encode("latin-1"))
    return "acquisition.json: is not UTF-8 text"


def _csv_latin1(root):
    rewrite_csv(root, lambda rows: [r[:6] + ["tiles/é.tif"] if i == 3 else r for i, r in enumerate(rows)])
    (root / "tiles.csv").write_bytes((root / "tiles.csv").read_text().encode("latin-1"))
    return "tiles.csv: is not UTF-8 text"


def _csv_nul(root):
    (root / "tiles.csv").write_bytes((root / "tiles.csv").read_bytes().replace(b"tiles/s001", b"tiles/\x00s001", 1))
    return "tiles.csv: contains NUL"


def _csv_huge_field(root):
    rewrite_csv(root, lambda rows: [r[:6] + ["t" * 200_000] if i == 1 else r for i, r in enumerate(rows)])
    return "tiles.csv: line 3"


def _acq_deeply_nested(root):
    (root / "acquisition.json").write_text('{"sample": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return "acquisition.json: invalid JSON (nested too deeply)"


def _acq_infinite_pixel(root):
    acq = json.loads((root / "acquisition.json").read_text())
    acq["pixel_size_um"] = float("inf")
    (root / "acquisition.json").write_text(json.dumps(acq))
    return "acquisition.json: key 'pixel_size_um': must be a finite number"


def _acq_giant_tiles(root):
    acq = json.loads((root / "acquisition.json").read_text())
    acq["tile_shape"] = [40000, 40000]
    (root / "acquisition.json").write_text(json.dumps(acq))
    return "larger than 32768 px a side"


def _stage(value):
    def breaker(root):
        rewrite_csv(root, lambda rows: [r[:4] + [value] + r[5:] if i == 5 else r for i, r in enumerate(rows)])
        return f"tiles.csv: line 7: stage position x_um={float(value):g}"

    breaker.__name__ = f"_stage_{value}"
    return breaker


def _stage_off_grid(root):
    rewrite_csv(root, lambda rows: [r[:5] + ["500"] + r[6:] if i == 2 else r for i, r in enumerate(rows)])
    return "tiles.csv: line 4: stage position y_um=500 is"


def _truncated_tiff(root):
    path = root / "tiles" / "s000_c0_r0_c1.tif"
    path.write_bytes(path.read_bytes()[:1500])
    return "s000_c0_r0_c1.tif: truncated TIFF"


def _three_d_tiff(root):
    tifffile.imwrite(root / "tiles" / "s001_c1_r0_c0.tif", np.ones((1, 32, 32), np.uint16))
    return "s001_c1_r0_c0.tif: shape (1, 32, 32) but a 2-D tile"


def _corrupt_compressed_tiff(root):
    path = root / "tiles" / "s001_c0_r1_c0.tif"
    tifffile.imwrite(path, np.random.default_rng(1).integers(0, 4000, (32, 32), dtype=np.uint16), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset + 2 : offset + 40] = bytes(38)
    path.write_bytes(bytes(data))
    return "s001_c0_r1_c0.tif: not a readable TIFF"


def _symlink_outside(root):
    outside = root.parent / "elsewhere.tif"
    tifffile.imwrite(outside, np.ones((32, 32), np.uint16))
    target = root / "tiles" / "s000_c1_r1_c1.tif"
    target.unlink()
    target.symlink_to(outside)
    return "s000_c1_r1_c1.tif: is a symbolic link to a file outside the sample folder"


def _symlink_to_secret(root):
    secret = root.parent / "secret.txt"
    secret.write_text(SECRET + "\n")
    target = root / "tiles" / "s001_c0_r0_c1.tif"
    target.unlink()
    target.symlink_to(secret)
    return "s001_c0_r0_c1.tif: is a symbolic link to a file outside the sample folder"


def _symlink_to_etc_passwd(root):
    target = root / "tiles" / "s001_c0_r0_c0.tif"
    target.unlink()
    target.symlink_to("/etc/passwd")
    return "s001_c0_r0_c0.tif: is a symbolic link to a file outside the sample folder"


def _symlinked_tiles_folder(root):
    outside = root.parent / "tiles-elsewhere"
    (root / "tiles").rename(outside)
    (root / "tiles").symlink_to(outside, target_is_directory=True)
    return "is a symbolic link to a file outside the sample folder"


def _symlinked_csv(root):
    outside = root.parent / "tiles-elsewhere.csv"
    (root / "tiles.csv").rename(outside)
    (root / "tiles.csv").symlink_to(outside)
    return "tiles.csv: is a symbolic link to a file outside the sample folder"


def _text_file_as_tile(root):
    (root / "tiles" / "s000_c0_r1_c0.tif").write_text(SECRET * 10)
    return "s000_c0_r1_c0.tif: not a readable TIFF"


def _fifo_as_tile(root):
    path = root / "tiles" / "s000_c1_r0_c1.tif"
    path.unlink()
    os.mkfifo(path)
    return "s000_c1_r0_c1.tif: is not a regular file"


INPUT_CASES = [
    _acq_utf16,
    _csv_utf16,
    _acq_latin1,
    _csv_latin1,
    _csv_nul,
    _csv_huge_field,
    _acq_deeply_nested,
    _acq_infinite_pixel,
    _acq_giant_tiles,
    _stage("1e12"),
    _stage("1e300"),
    _stage("-3e9"),
    _stage_off_grid,
    _truncated_tiff,
    _three_d_tiff,
    _corrupt_compressed_tiff,
    _symlink_outside,
    _symlink_to_secret,
    _symlink_to_etc_passwd,
    _symlinked_tiles_folder,
    _symlinked_csv,
    _text_file_as_tile,
    _fifo_as_tile,
]


@pytest.mark.parametrize("breaker", INPUT_CASES, ids=lambda b: b.__name__.strip("_"))
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(tmp_path, raw, breaker):
    fragment = breaker(raw)
    before = tree_digest(tmp_path)
    proc = run_cli("upload", str(raw), str(tmp_path / "out.zarr"), "--no-progress", timeout=60)
    err = assert_one_line_error(proc, fragment)
    for content in (SECRET, "root:", "SECR", "\\x"):
        assert content not in err, f"message echoes file content: {err}"
    assert not (tmp_path / "out.zarr").exists()
    assert tree_digest(tmp_path) == before


# -- the store: checksums, invalidation, damaged chunks ----------------------------------------------
class _Interrupt(Exception):
    pass


def test_interrupted_reupload_of_changed_data_leaves_the_store_incomplete(tmp_path, raw):
    dest = tmp_path / "s.zarr"
    upload(str(raw), str(dest), progress=False)
    old_table = RawStore(str(dest)).tile_checksums()
    write_tiles(raw, seed=99)
    done: list[str] = []

    def stop_after_five(key):
        done.append(key)
        if len(done) >= 5:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        upload(str(raw), str(dest), progress=False, workers=1, on_tile=stop_after_five)
    meta = zarr.open_group(str(dest), mode="r").attrs["imaxt"]
    assert meta["upload"]["complete"] is False
    assert "tile_sha256" not in meta["upload"] and meta["owner"]["sections"] == {}
    with pytest.raises(StoreError, match="upload is not complete"):
        RawStore(str(dest))

    upload(str(raw), str(dest), progress=False)
    store = RawStore(str(dest))
    _assert_bit_exact(raw, store)
    table = store.tile_checksums()
    assert table != old_table and len(table) == 16
    acq = store.acquisition
    for key, digest in table.items():
        s, z, c, t = (int(p) for p in key.split("/"))
        assert sha256(np.asarray(store.tiles[s, z, c, t])) == digest
    assert acq.sample == "tiny"


def test_new_stores_checksum_every_chunk_so_a_flipped_bit_fails_on_read(tmp_path, raw):
    dest = tmp_path / "s.zarr"
    upload(str(raw), str(dest), progress=False)
    store = RawStore(str(dest))
    assert [type(c).__name__ for c in store.tiles.metadata.codecs][-2:] == ["BloscCodec", "Crc32cCodec"]
    chunk = chunk_files(dest)[5]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        np.asarray(RawStore(str(dest)).tiles[...])
    report = upload(str(raw), str(dest), progress=False)
    assert len(report.written) == 1 and len(report.verified) == 15
    _assert_bit_exact(raw, RawStore(str(dest)))


def _legacy_store(raw, dest):
    """A store as the uploader wrote it before ownership and checksums: blosc only, no owner record."""
    from imaxt_pipeline.io.raw import read_raw_sample, read_tile
    from imaxt_pipeline.io.rawzarr import COMPRESSOR, TILE_DIMS, tile_key
    from imaxt_pipeline.io.urls import Location

    sample = read_raw_sample(str(raw))
    acq = sample.acquisition
    group = zarr.open_group(str(dest), mode="w")
    h, w = acq.tile_shape
    tiles = group.create_array(
        "tiles",
        shape=(acq.slices, 1, len(acq.channels), acq.n_tiles, h, w),
        chunks=(1, 1, 1, 1, h, w),
        dtype="uint16",
        compressors=[COMPRESSOR],
        fill_value=0,
        dimension_names=TILE_DIMS,
    )
    group.create_array("stage_um", data=sample.stage_um, dimension_names=("slice", "z", "tile", "yx"))
    table = {}
    for rec in sample.records:
        data = read_tile(Location(str(raw)), rec, acq)
        index = (rec.slice, rec.z, rec.channel, acq.tile_index(rec.row, rec.col))
        tiles[index] = data
        table[tile_key(*index)] = sha256(data)
    group.attrs["imaxt"] = {
        "acquisition": acq.model_dump(mode="json"),
        "provenance": [],
        "upload": {"complete": True, "source": sample.root, "tile_sha256": table},
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["crc32c-store", "legacy-blosc-store"])
@pytest.mark.parametrize("keep", [0, 15, 100, -1], ids=lambda k: f"keep{k}")
def test_reupload_over_a_truncated_chunk_rewrites_it_without_crashing(tmp_path, raw, legacy, keep):
    dest = tmp_path / "s.zarr"
    if legacy:
        _legacy_store(raw, dest)
    else:
        upload(str(raw), str(dest), progress=False)
    victims = chunk_files(dest)[3:8]
    for chunk in victims:
        data = chunk.read_bytes()
        chunk.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    for _ in range(2):  # the crash was intermittent: run it again, each time in a fresh process
        proc = _upload_cli(raw, dest)
        assert proc.returncode == 0, f"exit code {proc.returncode}: {proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr
        if _ == 0:
            assert f"{len(victims)} tiles written, {16 - len(victims)} already present" in proc.stdout
        else:
            assert "0 tiles written, 16 already present" in proc.stdout
    store = RawStore(str(dest))
    _assert_bit_exact(raw, store)
    assert store.attrs["owner"]["tool"] == "imaxt-pipeline upload"


def test_s3_reupload_over_a_truncated_chunk_rewrites_it_and_exits_cleanly(tmp_path, raw, s3_endpoint, s3_bucket):
    import boto3

    url, extra = f"s3://{s3_bucket}/raw/s.zarr", ("--endpoint-url", s3_endpoint)
    first = _upload_cli(raw, url, *extra)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    key = "raw/s.zarr/tiles/c/1/0/1/2/0/0"
    body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    put_objects(s3_endpoint, s3_bucket, {key: body[: len(body) // 2]})
    proc = _upload_cli(raw, url, *extra)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no traceback, no leaked-session noise
    assert "1 tiles written, 15 already present" in proc.stdout
    meta = json.loads(s3.get_object(Bucket=s3_bucket, Key="raw/s.zarr/zarr.json")["Body"].read())["attributes"]
    assert meta["imaxt"]["upload"]["complete"] is True and len(meta["imaxt"]["upload"]["tile_sha256"]) == 16
    assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
