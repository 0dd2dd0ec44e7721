"""Session fixtures shared by every test folder: a real multi-process Dask cluster and a local S3 endpoint.

Test modules never import each other (``--import-mode=importlib``, no ``__init__.py`` under ``tests/``):
helpers used by more than one module live in :mod:`imaxt_pipeline.testing`, among them
``processed_sample`` (synth -> upload -> run, written once).
"""

from __future__ import annotations

import os

import pytest

from imaxt_pipeline.testing._s3 import (
    create_bucket,
    s3_endpoint,  # noqa: F401  (session fixture: moto server over HTTP)
)

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _two_worker_client():
    """A client of a LocalCluster with two worker processes of one thread each.

    The dashboard listens on a free port (``":0"``): ``None`` means distributed's default 8787, and a
    second session on the machine would then warn "Port 8787 is already in use" (an error here).
    """
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="3GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def dask_client():
    """The two-worker cluster shared by the whole session."""
    yield from _two_worker_client()


@pytest.fixture
def fresh_dask_client():
    """A two-worker cluster of one test's own: for measuring the workers (their heaps hold no earlier test's)."""
    yield from _two_worker_client()


@pytest.fixture
def s3_bucket(s3_endpoint):  # noqa: F811
    """A fresh, empty bucket on the local S3 endpoint."""
    return create_bucket(s3_endpoint)
