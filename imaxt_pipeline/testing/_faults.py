"""Fault-injection helpers: run the real CLI, fingerprint folders and buckets before and after.

Used by ``tests/faults``: every hostile input must end in one line on stderr, exit code 2,
and no change to anything the tool did not write.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

CLI = (sys.executable, "-m", "imaxt_pipeline.service.cli")


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``imaxt ARGS`` in a fresh interpreter (so a crash or a traceback shows as it would to a user)."""
    full_env = {**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}
    full_env.pop("IMAXT_S3_ENDPOINT", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """Run ``imaxt ARGS`` through :func:`~imaxt_pipeline.service.cli.main` in this interpreter.

    For tests of what a command prints, not of how the process ends (that is :func:`run_cli`'s): it
    saves the fresh interpreter's imports (seconds each under load). The result reads like
    :func:`run_cli`'s: stdout, and stderr with every log record in the CLI's text format (pytest holds
    the root logger, so the CLI's own handler is not installed); ``$IMAXT_S3_ENDPOINT`` is unset, as there.
    """
    import contextlib
    import io
    import logging
    from unittest import mock

    from imaxt_pipeline.service.cli import main
    from imaxt_pipeline.service.logs import TEXT_FORMAT

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with mock.patch.dict(os.environ), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            os.environ.pop("IMAXT_S3_ENDPOINT", None)
            code = main(list(args))
    finally:
        root.removeHandler(handler)
    return subprocess.CompletedProcess(["imaxt", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, command: str = "upload") -> str:
    """Exit code 2, exactly one line on stderr (``imaxt <command>: error: ...``), no traceback; return it."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit code {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert err.startswith(f"imaxt {command}: error:"), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: fingerprint}`` of every entry under ``root`` (files by SHA-256, links by target).

    Symbolic links are not followed; an absent ``root`` gives ``{}``.
    """
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return {}
    if root.is_file():
        return {".": _file_digest(root)}
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            elif path.is_file():
                out[rel] = _file_digest(path)
            else:
                out[rel] = "special"
    return out


def _file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def bucket_digest(endpoint_url: str, bucket: str, prefix: str = "") -> dict[str, str]:
    """``{key: sha256}`` of every object of ``bucket`` under ``prefix`` (read over HTTP with boto3)."""
    s3 = _s3(endpoint_url)
    out: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return out


def put_objects(endpoint_url: str, bucket: str, objects: dict[str, bytes]) -> None:
    """Write ``{key: body}`` objects."""
    s3 = _s3(endpoint_url)
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def put_folder(endpoint_url: str, bucket: str, prefix: str, folder: Path) -> None:
    """Copy a local folder to ``s3://bucket/prefix/`` (files only)."""
    folder = Path(folder)
    put_objects(
        endpoint_url,
        bucket,
        {
            f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        },
    )


def _s3(endpoint_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


def chunk_files(store: Path, array: str = "tiles") -> list[Path]:
    """Chunk files of one array of a local Zarr 3 store, in key order."""
    base = Path(store) / array / "c"
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []


def write_tiles(root: Path, seed: int) -> None:
    """Give every tile of a raw sample written by ``write_raw_sample`` new pixels (same shape and dtype)."""
    import tifffile

    rng = np.random.default_rng(seed)
    for path in sorted((Path(root) / "tiles").glob("*.tif")):
        shape = tifffile.imread(path).shape
        tifffile.imwrite(path, rng.integers(0, 4000, shape, dtype=np.uint16))
