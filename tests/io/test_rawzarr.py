"""The raw Zarr store as the steps read it: every read verified against what the uploader recorded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from imaxt_pipeline.errors import StoreError
from imaxt_pipeline.io.rawzarr import RawStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.testing import write_raw_sample
from imaxt_pipeline.testing._faults import chunk_files


def test_read_tile_is_every_channel_of_one_tile(tmp_path):
    import pickle

    import tifffile

    sample = write_raw_sample(tmp_path / "raw", slices=2, rows=1, cols=2, tile=16)
    upload(str(sample), str(tmp_path / "raw.zarr"), progress=False)
    raw = RawStore(str(tmp_path / "raw.zarr"))
    tile = raw.read_tile(1, 0, 1)
    assert tile.shape == (2, 16, 16) and tile.dtype == np.uint16
    for c in range(2):
        np.testing.assert_array_equal(tile[c], tifffile.imread(sample / "tiles" / f"s001_c{c}_r0_c1.tif"))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(raw.read_tile))(1, 0, 1), tile)  # workers use it


# -- verified reads ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("rawzarr")
    sample = write_raw_sample(root / "raw", slices=2, rows=2, cols=2, tile=32)
    upload(str(sample), str(root / "raw.zarr"), progress=False)
    return root / "raw.zarr"


def _copy(store, tmp_path):
    dest = tmp_path / "copy.zarr"
    shutil.copytree(store, dest)
    return dest


def _edit_attrs(store, edit):
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    edit(meta["attributes"]["imaxt"])
    path.write_text(json.dumps(meta))


def _flip(path, at=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x5A
    path.write_bytes(bytes(data))


# chunk files are in key order: tiles/c/<slice>/<z>/<channel>/<tile>/0/0; index 3 is slice 0, z 0, channel 0, tile 3
def _flip_bytes(s):
    _flip(chunk_files(s)[3])
    return 0, 3, "channel 0, row 1, col 1, z 0): checksum mismatch"


def _swap_chunks(s):
    a, b = chunk_files(s)[3], chunk_files(s)[4]  # (channel 0, tile 3) and (channel 1, tile 0): same size class
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return 0, 3, "channel 0, row 1, col 1, z 0): checksum mismatch"


def _delete_chunk(s):
    chunk_files(s)[3].unlink()
    return 0, 3, "channel 0, row 1, col 1, z 0): missing"


def _truncate_chunk(s):
    path = chunk_files(s)[3]
    path.write_bytes(path.read_bytes()[:50])
    return 0, 3, "channel 0, row 1, col 1, z 0): checksum mismatch"


def _flip_crc_free(s):
    """A chunk whose bytes decode (valid CRC recomputed) but hold other pixels: only the SHA-256 sees it."""
    import zarr

    arr = zarr.open_array(str(s / "tiles"), mode="r+")
    arr[1, 0, 1, 2] = arr[1, 0, 1, 2] ^ 1
    return 1, 2, "channel 1, row 1, col 0, z 0): checksum mismatch"


@pytest.mark.parametrize("damage", [_flip_bytes, _swap_chunks, _delete_chunk, _truncate_chunk, _flip_crc_free])
def test_read_tile_refuses_a_damaged_chunk_with_one_line(store, tmp_path, damage):
    s = _copy(store, tmp_path)
    slice_, tile, message = damage(s)
    raw = RawStore(str(s))
    with pytest.raises(StoreError) as err:
        raw.read_tile(slice_, 0, tile)
    text = str(err.value)
    assert text.startswith(f"{s}/tiles tile (slice {slice_}, ") and message in text, text
    assert "\n" not in text
    # Intact tiles still read.
    np_tile = raw.read_tile(1 - slice_, 0, 0)
    assert np_tile.shape == (2, 32, 32)


def test_tiles_recorded_as_never_acquired_are_not_corruption(store, tmp_path):
    s = _copy(store, tmp_path)
    chunk_files(s)[3].unlink()
    with pytest.raises(StoreError, match="missing"):
        RawStore(str(s)).read_tile(0, 0, 3)
    _edit_attrs(s, lambda m: m["upload"].update(missing_tiles=["0/0/0/3"]))
    tile = RawStore(str(s)).read_tile(0, 0, 3)
    assert tile.shape == (2, 32, 32) and not tile[0].any()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: [p.unlink() for p in chunk_files(s, "stage_um")], "stage_um: chunk c/0/0/0/0 is missing"),
        (lambda s: [_flip(p, at=20) for p in chunk_files(s, "stage_um")], "stage_um: checksum mismatch"),
        (lambda s: (s / "zarr.json").unlink(), "zarr.json is missing"),
        (lambda s: (s / "zarr.json").write_text((s / "zarr.json").read_text()[:80]), "zarr.json cannot be read"),
        (lambda s: shutil.rmtree(s / "tiles"), "array 'tiles' is missing"),
        (lambda s: (s / "tiles" / "zarr.json").write_text("{"), "tiles: zarr.json cannot be read"),
        (lambda s: _edit_attrs(s, lambda m: m["acquisition"].update(rows=3)), "do not match the tiles array"),
        (
            lambda s: _edit_attrs(s, lambda m: m["acquisition"].update(rows=4, cols=1)),
            "does not match the store's owner",
        ),
        (lambda s: _edit_attrs(s, lambda m: m["acquisition"].update(rows=-1)), "invalid imaxt.acquisition"),
        (lambda s: _edit_attrs(s, lambda m: m["upload"].update(complete=False)), "upload is not complete"),
        (
            lambda s: _edit_attrs(s, lambda m: m["upload"]["tile_sha256"].update({"0/0/0/0": "0" * 64})),
            "tile_sha256 does not match the store's owner record",
        ),
    ],
)
def test_opening_a_damaged_store_is_one_line_naming_it(store, tmp_path, damage, message):
    s = _copy(store, tmp_path)
    damage(s)
    with pytest.raises(StoreError) as err:
        RawStore(str(s))
    text = str(err.value)
    assert text.startswith(str(s)) and message in text and "\n" not in text, text
