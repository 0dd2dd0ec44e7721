"""``imaxt verify``: every kind of damage to a raw store is found, named on one line, and counted."""

from __future__ import annotations

import json
import shutil

import pytest

from imaxt_pipeline.io.output import claim_output
from imaxt_pipeline.io.rawzarr import RawStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.io.verify import verify_store
from imaxt_pipeline.service.cli import main
from imaxt_pipeline.testing import write_raw_sample
from imaxt_pipeline.testing._faults import chunk_files


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    sample = write_raw_sample(root / "raw", slices=2, rows=2, cols=2, tile=32)
    upload(str(sample), str(root / "raw.zarr"), progress=False)
    return root / "raw.zarr"


@pytest.fixture
def copy(store, tmp_path):
    dest = tmp_path / "copy.zarr"
    shutil.copytree(store, dest)
    return dest


def _verify_cli(capsys, url):
    code = main(["verify", str(url)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_a_clean_raw_store_verifies(store, capsys):
    code, out, err = _verify_cli(capsys, store)
    assert code == 0 and err == []
    assert out == [f"{store}: raw store ok (16 tile images checked)"]


def _flip(s):
    path = chunk_files(s)[3]  # slice 0, z 0, channel 0, tile 3 = row 1, col 1
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return ["tile (slice 0, channel 0, row 1, col 1, z 0): checksum mismatch"]


def _swap(s):
    a, b = chunk_files(s)[0], chunk_files(s)[9]  # (s0 c0 t0) and (s1 c0 t1)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return [
        "tile (slice 0, channel 0, row 0, col 0, z 0): checksum mismatch",
        "tile (slice 1, channel 0, row 0, col 1, z 0): checksum mismatch",
    ]


def _delete(s):
    chunk_files(s)[15].unlink()  # slice 1, channel 1, tile 3
    return ["tile (slice 1, channel 1, row 1, col 1, z 0): missing"]


def _truncate(s):
    path = chunk_files(s)[6]  # slice 0, channel 1, tile 2
    path.write_bytes(path.read_bytes()[:33])
    return ["tile (slice 0, channel 1, row 1, col 0, z 0): checksum mismatch"]


def _delete_stage(s):
    for path in chunk_files(s, "stage_um"):
        path.unlink()
    return ["stage_um: chunk c/0/0/0/0 is missing"]


@pytest.mark.parametrize("damage", [_flip, _swap, _delete, _truncate, _delete_stage])
def test_each_kind_of_damage_is_one_line_and_exit_1(copy, capsys, damage):
    expected = damage(copy)
    report = verify_store(str(copy))
    assert not report.ok and len(report.problems) == len(expected)
    for line, fragment in zip(report.problems, expected, strict=True):
        assert line.startswith(str(copy)) and fragment in line, line
    code, out, err = _verify_cli(capsys, copy)
    assert code == 1
    assert out == report.problems
    n = len(expected)
    assert err == [
        f"imaxt verify: {copy}: {n} problem{'s' if n > 1 else ''} in this raw store (16 tile images checked)"
    ]


def test_every_damaged_tile_is_reported_not_only_the_first(copy):
    expected = _flip(copy) + _delete(copy)
    problems = verify_store(str(copy)).problems
    assert [p.split("/tiles ", 1)[1][: len(e)] for p, e in zip(problems, expected, strict=True)] == expected


def test_damaged_metadata_is_reported(copy, capsys):
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["imaxt"]["acquisition"]["rows"] = 3
    (copy / "zarr.json").write_text(json.dumps(meta))
    code, out, _ = _verify_cli(capsys, copy)
    assert code == 1 and len(out) == 1 and "acquisition attrs do not match the tiles array" in out[0]
    (copy / "zarr.json").write_text("{")
    code, out, _ = _verify_cli(capsys, copy)
    assert code == 1 and out == [f"{copy}: zarr.json cannot be read"]


def test_nothing_there_is_an_error(tmp_path, capsys):
    code = main(["verify", str(tmp_path / "nope.zarr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"imaxt verify: error: {tmp_path / 'nope.zarr'}: no store here"]


def _claimed_output(store, tmp_path):
    raw = RawStore(str(store))
    out = tmp_path / "out.zarr"
    claim_output(
        str(out),
        None,
        source=raw.location,
        sample=raw.acquisition.sample,
        sample_id=raw.sample_id,
        sections=raw.section_checksums(),
        processing=[0],
    ).write_table("cells", __import__("pandas").DataFrame({"label": [1]}))
    return out


def test_an_output_store_needs_its_owner_record_and_only_what_the_steps_write(store, tmp_path, capsys):
    out = _claimed_output(store, tmp_path)
    code, lines, _ = _verify_cli(capsys, out)
    assert code == 0 and lines[-1].startswith(f"{out}: output store ok")
    (out / "tables" / "notes.txt").write_text("mine")
    code, lines, _ = _verify_cli(capsys, out)
    assert code == 1 and lines == [f"{out}/tables/notes.txt: not written by imaxt run"]
    (out / "tables" / "notes.txt").unlink()
    meta = json.loads((out / "zarr.json").read_text())
    del meta["attributes"]["imaxt"]["owner"]
    (out / "zarr.json").write_text(json.dumps(meta))
    code, lines, _ = _verify_cli(capsys, out)
    assert code == 1 and len(lines) == 1 and "no owner record" in lines[0]
