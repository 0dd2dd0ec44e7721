"""The notebooks run headless against a sample processed by the watcher's real default action.

The demo output is made end to end: a tiny raw sample (2x2 tiles of 128 px,
2 slices) lands in a local bucket, the watcher claims it and runs the default
action (upload + pipeline) on the session's multi-process LocalCluster.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import zarr
from nbclient import NotebookClient

from imaxt_pipeline.service.launcher import PipelineAction
from imaxt_pipeline.service.state import Ledger, open_state_store
from imaxt_pipeline.service.watcher import Watcher
from imaxt_pipeline.testing._raw import write_raw_sample

pytestmark = pytest.mark.slow  # the watcher's pipeline action, then notebooks

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# Steps after bead detection need real beads; random tiles have none.
CONFIG = """steps:
  register: {enabled: false}
  cube: {enabled: false}
  segment: {enabled: false}
  catalogue: {enabled: false}
  crops: {enabled: false}
"""


@pytest.fixture(scope="module")
def processed(tmp_path_factory, dask_client):
    base = tmp_path_factory.mktemp("svc-demo")
    bucket = base / "bucket"
    write_raw_sample(bucket / "tiny", slices=2, rows=2, cols=2, tile=128)
    (base / "config.yaml").write_text(CONFIG)
    action = PipelineAction("dask", scheduler=dask_client.scheduler.address, config_path=str(base / "config.yaml"))
    ledger = Ledger(open_state_store(str(bucket / "_imaxt" / "state")))
    watcher = Watcher(str(bucket), action, ledger, lease_ttl=60, poll_interval=1)
    first = watcher.poll_once()
    second = watcher.poll_once()
    return bucket, first, second, ledger


def test_watcher_default_action_processes_real_sample_once(processed):
    bucket, first, second, ledger = processed
    assert [(s.sample, s.status, s.runs) for s in first] == [("tiny", "done", 1)], first
    assert second == []
    out = zarr.open_group(str(bucket / "_imaxt" / "processed" / "tiny.zarr"), mode="r")
    imaxt = out.attrs["imaxt"]
    assert imaxt["sample"] == "tiny" and sorted(imaxt["slices_done"]) == [0, 1]
    assert [p["name"] for p in imaxt["provenance"]][:3] == ["calibrate", "stitch", "mosaic"]
    assert out["mosaic"]["0"].shape[:2] == (2, 2)  # 2 channels, 2 planes
    assert (bucket / "_imaxt" / "raw" / "tiny.zarr" / "zarr.json").exists()


def run_notebook(name: str, tmp_path: Path, monkeypatch, **env: str) -> nbformat.NotebookNode:
    # The kernel must draw figures inline even when the caller exports MPLBACKEND=Agg (as CI may).
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def outputs_text(nb) -> str:
    return "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def test_explore_notebook_runs(processed, tmp_path, monkeypatch):
    bucket = processed[0]
    nb = run_notebook(
        "01_explore_sample.ipynb",
        tmp_path,
        monkeypatch,
        IMAXT_OUTPUT=str(bucket / "_imaxt" / "processed" / "tiny.zarr"),
    )
    text = outputs_text(nb)
    assert "sample: tiny" in text and "'mosaic'" in text
    assert "mosaic level shape (c, z, y, x): (2, 2," in text
    assert "'beads'" in text and "stitch.png" in text
    assert (
        sum(o.get("output_type") == "display_data" for c in nb.cells if c.cell_type == "code" for o in c.outputs) >= 3
    )  # mosaic channels + QC figure(s)


def test_attach_notebook_computes_on_running_cluster(processed, dask_client, tmp_path, monkeypatch):
    bucket = processed[0]
    scheduler = dask_client.cluster.scheduler  # in-process scheduler of the LocalCluster
    before = scheduler.transition_counter
    nb = run_notebook(
        "02_attach_dask_cluster.ipynb",
        tmp_path,
        monkeypatch,
        DASK_SCHEDULER_ADDRESS=dask_client.scheduler.address,
        IMAXT_OUTPUT=str(bucket / "_imaxt" / "processed" / "tiny.zarr"),
    )
    text = outputs_text(nb)
    assert f"workers: {len(dask_client.scheduler_info()['workers'])}" in text
    assert "mean intensity per (channel, plane)" in text
    assert scheduler.transition_counter > before + 10  # the tasks ran on *this* cluster
