"""Fault injection for ``imaxt run`` and ``imaxt verify``: nothing corrupt processed, no output mixed up.

Every hostile case runs the real command line in a subprocess. A refusal is one line on stderr
(``imaxt run: error: ...``), no traceback, exit code 2, and leaves the raw store and any output
that was there before byte-for-byte unchanged. Runs are tiny: 2 x 2 tiles of 32 px, 2 slices,
only ``calibrate`` (which reads every tile in the driver process), Dask in threads.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import zarr

from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.testing import write_raw_sample
from imaxt_pipeline.testing._faults import assert_one_line_error, chunk_files, cli_in_process, run_cli, tree_digest

STEPS = ("calibrate", "stitch", "mosaic", "beads", "register", "cube", "segment", "catalogue", "crops")
# Progress lines of the runner's logger (``imaxt run`` logs each step at INFO on stderr): not errors.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO imaxt_pipeline\.")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Sample A uploaded and processed (its output finished), sample B uploaded; copied per test."""
    root = tmp_path_factory.mktemp("runfaults")
    config = root / "run.yaml"
    steps = "".join(f"  {s}: {{enabled: {str(s == 'calibrate').lower()}}}\n" for s in STEPS)
    config.write_text(f"cluster: {{n_workers: 1, processes: false}}\nsteps:\n{steps}")
    upload(str(write_raw_sample(root / "a", slices=2, seed=1)), str(root / "a.zarr"), progress=False)
    upload(str(write_raw_sample(root / "b", slices=3, seed=2)), str(root / "b.zarr"), progress=False)  # another sample
    proc = _run(root / "a.zarr", root / "a-out.zarr", config)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture
def tmp(stores, tmp_path):
    for name in ("a.zarr", "b.zarr", "a-out.zarr", "run.yaml"):
        src = stores / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def _run(raw, out, config, *extra):
    return run_cli("run", str(raw), "--out", str(out), "--config", str(config), *extra)


def _one_error_line(proc, *fragments, command="run"):
    """Exit 2, no traceback, one error line on stderr besides the runner's progress lines."""
    assert "Traceback" not in proc.stderr, proc.stderr
    other = [line for line in proc.stderr.strip().splitlines() if not LOG_LINE.match(line)]
    assert proc.returncode == 2, proc.stderr
    assert len(other) == 1 and other[0].startswith(f"imaxt {command}: error:"), proc.stderr
    for fragment in fragments:
        assert fragment in other[0], other[0]
    return other[0]


def _snapshot(*paths):
    return {str(p): tree_digest(p) for p in paths}


# -- refusals before anything is written: exactly one stderr line ------------------------------------------------
def _other_sample_into_finished_output(tmp):
    return tmp / "b.zarr", tmp / "a-out.zarr", ("--slices", "0"), "different sample"


def _output_is_the_input(tmp):
    return tmp / "a.zarr", tmp / "a.zarr", (), "output is the input store"


def _output_inside_the_input(tmp):
    return tmp / "a.zarr", tmp / "a.zarr" / "out.zarr", (), "output is inside the input store"


def _output_contains_the_input(tmp):
    return tmp / "a.zarr", tmp, (), "output contains the input store"


def _output_with_foreign_files(tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep me")
    return tmp / "a.zarr", tmp / "mine", (), "is not empty and is not a store written by imaxt-pipeline run"


def _own_output_with_a_foreign_file(tmp):
    (tmp / "a-out.zarr" / "tables").mkdir(exist_ok=True)
    (tmp / "a-out.zarr" / "tables" / "notes.txt").write_text("someone else's")
    return tmp / "a.zarr", tmp / "a-out.zarr", (), "did not write (e.g. 'tables/notes.txt')"


def _output_is_a_raw_store(tmp):
    return tmp / "a.zarr", tmp / "b.zarr", (), "written by 'imaxt-pipeline upload', not by imaxt-pipeline run"


def _sections_from_different_raw_data(tmp):
    """Sample A re-uploaded with other pixels (same acquisition) into a new store: its output no longer matches."""
    from imaxt_pipeline.testing._faults import write_tiles

    raw = write_raw_sample(tmp / "a2", slices=2, seed=1)
    write_tiles(raw, seed=9)
    upload(str(raw), str(tmp / "a2.zarr"), progress=False)
    return tmp / "a2.zarr", tmp / "a-out.zarr", ("--slices", "1"), "sections 0, 1 of this output were processed"


def _incomplete_upload(tmp):
    _edit_attrs(tmp / "a.zarr", lambda m: m["upload"].update(complete=False))
    return tmp / "a.zarr", tmp / "new-out.zarr", (), "upload is not complete"


def _missing_store_metadata(tmp):
    (tmp / "a.zarr" / "zarr.json").unlink()
    return tmp / "a.zarr", tmp / "new-out.zarr", (), "zarr.json is missing"


def _truncated_store_metadata(tmp):
    meta = tmp / "a.zarr" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:120])
    return tmp / "a.zarr", tmp / "new-out.zarr", (), "zarr.json cannot be read"


def _missing_tiles_array(tmp):
    shutil.rmtree(tmp / "a.zarr" / "tiles")
    return tmp / "a.zarr", tmp / "new-out.zarr", (), "array 'tiles' is missing"


def _tampered_acquisition(tmp):
    _edit_attrs(tmp / "a.zarr", lambda m: m["acquisition"].update(rows=3))
    return tmp / "a.zarr", tmp / "new-out.zarr", (), "acquisition attrs do not match the tiles array"


def _deleted_stage_um(tmp):
    for path in chunk_files(tmp / "a.zarr", "stage_um"):
        path.unlink()
    return tmp / "a.zarr", tmp / "a-out.zarr", (), "a.zarr/stage_um: chunk c/0/0/0/0 is missing"


def _edit_attrs(store, edit):
    path = Path(store) / "zarr.json"
    meta = json.loads(path.read_text())
    edit(meta["attributes"]["imaxt"])
    path.write_text(json.dumps(meta))


REFUSALS = [
    _other_sample_into_finished_output,
    _output_is_the_input,
    _output_inside_the_input,
    _output_contains_the_input,
    _output_with_foreign_files,
    _own_output_with_a_foreign_file,
    _output_is_a_raw_store,
    _sections_from_different_raw_data,
    _incomplete_upload,
    _missing_store_metadata,
    _truncated_store_metadata,
    _missing_tiles_array,
    _tampered_acquisition,
    _deleted_stage_um,
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda f: f.__name__.strip("_"))
def test_run_refuses_with_one_line_and_changes_nothing(tmp, case):
    raw, out, extra, fragment = case(tmp)
    before = _snapshot(tmp)
    proc = _run(raw, out, tmp / "run.yaml", *extra)
    assert_one_line_error(proc, fragment, command="run")
    assert _snapshot(tmp) == before


# -- damaged tiles: found when read, the run stops with one error line --------------------------------------------
def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_bytes(tmp):
    _flip(chunk_files(tmp / "a.zarr")[3])
    return "tiles tile (slice 0, channel 0, row 1, col 1, z 0): checksum mismatch"


def _swap_chunks(tmp):
    a, b = chunk_files(tmp / "a.zarr")[1], chunk_files(tmp / "a.zarr")[2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return "checksum mismatch"


def _delete_chunk(tmp):
    chunk_files(tmp / "a.zarr")[5].unlink()
    return "tiles tile (slice 0, channel 1, row 0, col 1, z 0): missing"


def _truncate_chunk(tmp):
    path = chunk_files(tmp / "a.zarr")[12]
    path.write_bytes(path.read_bytes()[:40])
    return "tiles tile (slice 1, channel 1, row 0, col 0, z 0): checksum mismatch"


@pytest.mark.slow  # runs calibrate
@pytest.mark.parametrize("damage", [_flip_bytes, _swap_chunks, _delete_chunk, _truncate_chunk])
def test_a_damaged_tile_stops_the_run_with_one_line(tmp, damage):
    fragment = damage(tmp)
    raw_before = _snapshot(tmp / "a.zarr")
    proc = _run(tmp / "a.zarr", tmp / "new-out.zarr", tmp / "run.yaml")
    line = _one_error_line(proc, fragment)
    assert line.startswith(f"imaxt run: error: {tmp / 'a.zarr'}/tiles tile (slice "), line
    assert _snapshot(tmp / "a.zarr") == raw_before
    meta = zarr.open_group(str(tmp / "new-out.zarr"), mode="r").attrs["imaxt"]
    assert meta["complete"] is False
    assert [(p["name"], p["status"]) for p in meta["provenance"]] == [("calibrate", "failed")]

    proc = run_cli("verify", str(tmp / "a.zarr"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "problem" in proc.stderr
    assert fragment in proc.stdout


@pytest.mark.slow  # runs calibrate
def test_the_same_sample_reruns_into_its_own_output(tmp):
    """Live processing: ``--slices k`` into the sample's own output keeps working, and verify passes it."""
    proc = _run(tmp / "a.zarr", tmp / "a-out.zarr", tmp / "run.yaml", "--slices", "1")
    assert proc.returncode == 0, proc.stderr
    meta = zarr.open_group(str(tmp / "a-out.zarr"), mode="r").attrs["imaxt"]
    assert meta["complete"] is True and meta["slices_done"] == [0, 1]
    assert meta["owner"]["tool"] == "imaxt-pipeline run" and sorted(meta["owner"]["sections"]) == ["0", "1"]
    # what a clean verify prints, from main() in this interpreter (a fresh one's verify: the damaged-tile test)
    for store in ("a.zarr", "a-out.zarr"):
        proc = cli_in_process("verify", str(tmp / store))
        assert proc.returncode == 0 and proc.stderr == "" and " store ok (" in proc.stdout, proc.stdout + proc.stderr
