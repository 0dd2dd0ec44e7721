"""Shared fixtures: a real multi-process Dask cluster and a local S3 endpoint."""

from __future__ import annotations

import os
import uuid

import pytest

from imaxt_pipeline.testing._s3 import s3_endpoint  # noqa: F401  (session fixture: moto server over HTTP)

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def dask_client():
    """LocalCluster with two worker processes, shared by the whole session."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="3GiB") as cluster, Client(cluster) as client:
        yield client


@pytest.fixture
def s3_bucket(s3_endpoint):  # noqa: F811
    """A fresh, empty bucket on the local S3 endpoint."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name
