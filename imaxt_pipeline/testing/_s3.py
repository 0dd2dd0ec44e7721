"""A real S3 endpoint over HTTP for tests: moto's server mode on loopback."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest


class _OneAtATime:
    """A WSGI app that applies its requests one at a time.

    moto checks a conditional PUT (``If-Match`` / ``If-None-Match``) and then writes, in two steps: two racing
    writers can both win, where S3 itself decides atomically. The state store's compare-and-swap tests race
    writers on purpose, so the endpoint must be as atomic as S3 (moto builds every response in full inside
    the call, so holding the lock for the call covers the write).
    """

    def __init__(self, app: Any) -> None:
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        with self.lock:
            return self.app(environ, start_response)


def start_moto_server() -> tuple[Any, str]:
    """Start moto's S3 server on 127.0.0.1 (free port), with dummy credentials; (server, URL).

    The test fixture and the benchmarks that talk to a local S3 endpoint (``benchmarks/shards.py``) share it.
    Requests are served by threads but applied one at a time (:class:`_OneAtATime`).
    """
    from moto.moto_server.threaded_moto_server import MotoRequestHandler  # keeps S3 metadata headers as sent
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    os.environ.pop("AWS_PROFILE", None)
    app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True).start()
    port = server.server_address[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto server for the whole test session (:func:`start_moto_server`); yield its URL."""
    server, url = start_moto_server()
    yield url
    server.shutdown()


def create_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a bucket on ``endpoint_url`` (a fresh unique name when not given); return its name."""
    import uuid

    import boto3

    name = name or f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1").create_bucket(Bucket=name)
    return name
