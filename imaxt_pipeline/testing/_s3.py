"""A real S3 endpoint over HTTP for tests: moto's server mode on loopback."""

from __future__ import annotations

import os
from typing import Any

import pytest


def start_moto_server() -> tuple[Any, str]:
    """Start ``moto.server.ThreadedMotoServer`` on 127.0.0.1 (free port), with dummy credentials; (server, URL).

    The test fixture and the benchmarks that talk to a local S3 endpoint (``benchmarks/shards.py``) share it.
    """
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    os.environ.pop("AWS_PROFILE", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto server for the whole test session (:func:`start_moto_server`); yield its URL."""
    server, url = start_moto_server()
    yield url
    server.stop()


def create_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a bucket on ``endpoint_url`` (a fresh unique name when not given); return its name."""
    import uuid

    import boto3

    name = name or f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1").create_bucket(Bucket=name)
    return name
