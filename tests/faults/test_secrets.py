"""Credentials given as storage options or configuration keys are never written down.

Not in the Kubernetes objects ``imaxt submit --dry-run`` prints (a Secret reference instead, or a
one-line refusal), not in error messages, not in a processed store's attributes or provenance.
Every check searches all the text produced for the secret values.
"""

from __future__ import annotations

import json

import pytest
import yaml

from imaxt_pipeline.io.provenance import REDACTED, credential_paths, is_credential_key, redact
from imaxt_pipeline.testing._faults import assert_one_line_error, cli_in_process, run_cli

KEY, SECRET, TOKEN = "AKIA-UNIQUE-KEY-5d1e", "SECRET-VALUE-8c2f", "SESSION-TOKEN-31ab"
VALUES = (KEY, SECRET, TOKEN)
OPTIONS = {"key": KEY, "secret": SECRET, "client_kwargs": {"aws_session_token": TOKEN, "region_name": "us-east-1"}}


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for value in VALUES:
            assert value not in text, f"{value!r} leaked:\n{text}"


def _submit(*extra: str, fresh_interpreter: bool = False):
    # One refusal runs in a fresh interpreter (one line, no traceback, as a user sees it); the other
    # cases check what submit prints, which main() in this interpreter prints alike, without the imports.
    return (run_cli if fresh_interpreter else cli_in_process)(
        "submit",
        "s3://raw/incoming/s1",
        "--out",
        "s3://raw/processed/s1.zarr",
        "--backend",
        "kubernetes",
        "--dry-run",
        *extra,
    )


@pytest.mark.parametrize("where", ["flag", "config"])
def test_submit_refuses_credentials_without_a_secret(tmp_path, where):
    if where == "flag":
        proc = _submit("--storage-options", json.dumps(OPTIONS), fresh_interpreter=True)
    else:
        cfg = tmp_path / "run.yaml"
        cfg.write_text(yaml.safe_dump({"storage_options": OPTIONS}))
        proc = _submit("--config", str(cfg))
    err = assert_one_line_error(proc, "kubectl create secret generic", "--credentials-secret", command="submit")
    assert "client_kwargs.aws_session_token" in err
    assert proc.stdout == ""
    _assert_no_secret(proc.stdout, proc.stderr)


@pytest.mark.parametrize("where", ["flag", "config"])
def test_submit_with_a_credentials_secret_prints_references_only(tmp_path, where):
    if where == "flag":
        proc = _submit("--credentials-secret", "creds", "--storage-options", json.dumps(OPTIONS))
    else:
        cfg = tmp_path / "run.yaml"
        cfg.write_text(yaml.safe_dump({"storage_options": OPTIONS}))
        proc = _submit("--credentials-secret", "creds", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    _assert_no_secret(proc.stdout, proc.stderr)
    docs = list(yaml.safe_load_all(proc.stdout))
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in docs[1]["spec"]["job"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    ]
    assert sorted(r["key"] for r in refs) == ["client_kwargs.aws_session_token", "key", "secret"]
    assert {r["name"] for r in refs} == {"creds"}


def test_invalid_storage_options_text_is_not_echoed(tmp_path):
    text = json.dumps(OPTIONS)[:-1]  # not JSON any more
    proc = run_cli("run", str(tmp_path / "raw.zarr"), "--out", str(tmp_path / "out.zarr"), "--storage-options", text)
    assert_one_line_error(proc, "--storage-options is not valid JSON", command="run")
    _assert_no_secret(proc.stderr)
    assert not (tmp_path / "out.zarr").exists()


def test_redact_replaces_credentials_at_any_depth():
    record = {
        "storage_options": {**OPTIONS, "endpoint_url": "http://minio:9000", "anon": False},
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "steps": [{"api_key": KEY, "password": None}],
        "url": f"s3://user:{SECRET}@minio/bucket",
    }
    out = redact(record)
    _assert_no_secret(json.dumps(out))
    assert out["storage_options"]["endpoint_url"] == "http://minio:9000"
    assert out["storage_options"]["client_kwargs"]["region_name"] == "us-east-1"
    assert out["storage_options"]["key"] == REDACTED
    assert out["steps"][0] == {"api_key": REDACTED, "password": None}
    assert record["storage_options"]["key"] == KEY  # a copy
    assert not is_credential_key("endpoint_url") and not is_credential_key("region_name")
    assert set(credential_paths(record["storage_options"])) == {
        ("key",),
        ("secret",),
        ("client_kwargs", "aws_session_token"),
    }


def _bucket_text(endpoint: str, bucket: str) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    parts = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            parts.append(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode("latin-1"))
    return "\n".join(parts)


@pytest.mark.slow
def test_processed_store_records_no_credentials(tmp_path, s3_endpoint, s3_bucket):
    from imaxt_pipeline.steps.params import STEP_PARAMS
    from imaxt_pipeline.testing._raw import write_raw_sample

    raw = write_raw_sample(tmp_path / "raw")
    # moto accepts any key pair: the run authenticates with the secret values themselves.
    options = json.dumps({"key": KEY, "secret": SECRET, "client_kwargs": {"region_name": "us-east-1"}})
    store = f"s3://{s3_bucket}/raw/tiny.zarr"
    up = run_cli(
        "upload", str(raw), store, "--no-progress", "--endpoint-url", s3_endpoint, "--storage-options", options
    )
    assert up.returncode == 0, up.stderr
    cfg = tmp_path / "run.yaml"
    steps = {name: {"enabled": name == "calibrate"} for name in STEP_PARAMS}
    cfg.write_text(yaml.safe_dump({"steps": steps, "cluster": {"n_workers": 1}}))
    out = f"s3://{s3_bucket}/processed/tiny.zarr"
    run = run_cli(
        "run", store, "--out", out, "--config", str(cfg), "--endpoint-url", s3_endpoint, "--storage-options", options
    )
    assert run.returncode == 0, run.stderr
    text = _bucket_text(s3_endpoint, s3_bucket)
    assert '"provenance"' in text and '"calibrate"' in text  # the attrs were searched
    _assert_no_secret(text, up.stdout, up.stderr, run.stdout, run.stderr)
    for proc in (up, run):
        assert "Unclosed" not in proc.stderr, proc.stderr
