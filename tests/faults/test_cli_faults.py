"""Hostile command-line and configuration input: one line on stderr, exit code 2, nothing written.

Every case runs the real ``imaxt`` in a subprocess against a real raw store (local, or on the
moto S3 endpoint), and fingerprints everything the command could write to before and after.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.testing._faults import assert_one_line_error, bucket_digest, put_objects, run_cli, tree_digest
from imaxt_pipeline.testing._raw import write_raw_sample


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-faults")
    store = root / "raw.zarr"
    upload(str(write_raw_sample(root / "sample")), str(store), progress=False)
    return store


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, text: str | bytes) -> str:
    path = tmp / "run.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


# -- local cases: (name, argv builder, command, fragments) -----------------------------------------
def _slices_not_ints(tmp, raw):
    return ["run", str(raw), "--out", str(tmp / "out.zarr"), "--slices", "a,b"], ["--slices", "'a,b'"]


def _slices_empty_item(tmp, raw):
    return ["run", str(raw), "--out", str(tmp / "out.zarr"), "--slices", "0,,1"], ["--slices"]


def _out_is_a_file(tmp, raw):
    (tmp / "out.zarr").write_text("not a store")
    return ["run", str(raw), "--out", str(tmp / "out.zarr")], ["--out", "existing file"]


def _memory_limit_lots(tmp, raw):
    cfg = _config(tmp, "cluster:\n  memory_limit: lots\n")
    return ["run", str(raw), "--out", str(tmp / "out.zarr"), "--config", cfg], ["cluster.memory_limit", "'lots'"]


def _config_utf16(tmp, raw):
    cfg = _config(tmp, "cluster:\n  n_workers: 1\n".encode("utf-16"))
    return ["run", str(raw), "--out", str(tmp / "out.zarr"), "--config", cfg], ["not UTF-8"]


def _config_latin1(tmp, raw):
    cfg = _config(tmp, "# échantillon\ncluster:\n  n_workers: 1\n".encode("latin-1"))
    return ["run", str(raw), "--out", str(tmp / "out.zarr"), "--config", cfg], ["not UTF-8"]


def _config_is_a_folder(tmp, raw):
    (tmp / "conf.d").mkdir()
    return ["run", str(raw), "--out", str(tmp / "out.zarr"), "--config", str(tmp / "conf.d")], ["folder"]


def _scheduler_unreachable(tmp, raw):
    addr = f"tcp://127.0.0.1:{_closed_port()}"
    argv = ["run", str(raw), "--out", str(tmp / "out.zarr"), "--scheduler", addr, "--scheduler-timeout", "2"]
    return argv, ["cannot reach the Dask scheduler", addr]


def _out_url_one_slash(tmp, raw):
    return ["run", str(raw), "--out", "s3:/bucket/out.zarr"], ["--out", "not a valid URL"]


def _input_url_empty(tmp, raw):
    return ["run", "", "--out", str(tmp / "out.zarr")], ["INPUT_URL", "non-empty"]


def _input_url_no_bucket(tmp, raw):
    return ["run", "s3://", "--out", str(tmp / "out.zarr")], ["INPUT_URL", "no bucket"]


def _out_url_unknown_protocol(tmp, raw):
    return ["run", str(raw), "--out", "nosuchproto://x/out.zarr"], ["unknown protocol"]


def _upload_dest_one_slash(tmp, raw):
    sample = write_raw_sample(tmp / "sample")
    return ["upload", str(sample), "s3:/bucket/raw.zarr", "--no-progress"], ["DEST_URL", "not a valid URL"]


def _submit_out_empty(tmp, raw):
    return ["submit", str(tmp / "sample"), "--out", "", "--dry-run"], ["--out", "non-empty"]


LOCAL = [
    _slices_not_ints,
    _slices_empty_item,
    _out_is_a_file,
    _memory_limit_lots,
    _config_utf16,
    _config_latin1,
    _config_is_a_folder,
    _scheduler_unreachable,
    _out_url_one_slash,
    _input_url_empty,
    _input_url_no_bucket,
    _out_url_unknown_protocol,
    _upload_dest_one_slash,
    _submit_out_empty,
]


@pytest.mark.parametrize("case", LOCAL, ids=[c.__name__.lstrip("_") for c in LOCAL])
def test_hostile_local_input_is_one_line_and_writes_nothing(tmp_path, raw_store, case):
    argv, fragments = case(tmp_path, raw_store)
    before = (tree_digest(tmp_path), tree_digest(raw_store))
    t0 = time.monotonic()
    proc = run_cli(*argv, timeout=60)
    elapsed = time.monotonic() - t0
    assert_one_line_error(proc, *fragments, command=argv[0])
    assert (tree_digest(tmp_path), tree_digest(raw_store)) == before
    assert not (tmp_path / "out.zarr").is_dir()
    if case is _scheduler_unreachable:
        assert elapsed < 30, f"waited {elapsed:.0f} s for an unreachable scheduler"


# -- S3 cases ---------------------------------------------------------------------------------------
def _s3_out_is_an_object(bucket, endpoint, raw):
    put_objects(endpoint, bucket, {"out.zarr": b"not a store"})
    return ["run", str(raw), "--out", f"s3://{bucket}/out.zarr"], ["existing file"]


def _s3_upload_dest_no_bucket(bucket, endpoint, raw):
    return ["upload", str(raw.parent / "sample"), "s3://", "--no-progress"], ["no bucket"]


def _s3_upload_dest_one_slash(bucket, endpoint, raw):
    return ["upload", str(raw.parent / "sample"), f"s3:/{bucket}/raw.zarr", "--no-progress"], ["not a valid URL"]


S3 = [_s3_out_is_an_object, _s3_upload_dest_no_bucket, _s3_upload_dest_one_slash]


@pytest.mark.parametrize("case", S3, ids=[c.__name__.lstrip("_") for c in S3])
def test_hostile_s3_input_is_one_line_and_writes_nothing(s3_endpoint, s3_bucket, raw_store, case):
    put_objects(s3_endpoint, s3_bucket, {"keep/me.txt": b"untouched"})
    argv, fragments = case(s3_bucket, s3_endpoint, raw_store)
    before = bucket_digest(s3_endpoint, s3_bucket)
    proc = run_cli(*argv, "--endpoint-url", s3_endpoint, timeout=60)
    assert_one_line_error(proc, *fragments, command=argv[0])
    assert "Unclosed" not in proc.stderr
    assert bucket_digest(s3_endpoint, s3_bucket) == before
