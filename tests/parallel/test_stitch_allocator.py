"""Workers undo the allocator setting that made numpy-heavy tasks 2.5x slower there."""

from __future__ import annotations

import os
import sys

from imaxt_pipeline.config import ClusterConfig
from imaxt_pipeline.parallel.workers import roomy_allocator
from imaxt_pipeline.pipeline import dask_client as pipeline_client


def test_matching_workers_keep_their_freed_memory_for_the_next_pair(dask_client):
    env = list(dask_client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values())
    assert env == ["65536", "65536"]  # what the nanny starts every worker with (the cause of the slowdown)
    on_linux = sys.platform.startswith("linux")
    for _ in range(2):  # set once per process (glibc), then remembered
        assert list(dask_client.run(roomy_allocator).values()) == [on_linux, on_linux]


def test_the_pipeline_sets_up_every_worker_of_its_client():
    on_linux = sys.platform.startswith("linux")
    with pipeline_client(ClusterConfig(n_workers=2, threads_per_worker=1, processes=True)) as client:
        client.wait_for_workers(2)
        assert "imaxt-roomy-allocator" in client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.worker_plugins)
        )
        # the plugin ran at start: the call finds the thresholds already set (remembered per process)
        was_set = client.run(lambda: bool(sys.modules["imaxt_pipeline.parallel.workers"]._done))
        assert list(was_set.values()) == [True, True]
        assert list(client.run(roomy_allocator).values()) == [on_linux, on_linux]
