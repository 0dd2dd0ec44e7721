"""The watcher end to end: local folder and S3 over HTTP (moto server), real subprocesses.

Runs are counted by ``tests/service/fake_run.py``, which appends ``start``/``done`` lines
to a log; "processed exactly once" means exactly one ``done`` per sample.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest

from imaxt_pipeline.service.launcher import CommandAction
from imaxt_pipeline.service.state import Ledger, RetryPolicy, open_state_store
from imaxt_pipeline.service.watcher import Watcher, find_landed
from imaxt_pipeline.testing._faults import cli_in_process
from imaxt_pipeline.testing._s3 import create_bucket

REPO = Path(__file__).resolve().parents[2]
FAKE = str(REPO / "tests" / "service" / "fake_run.py")
pytestmark = pytest.mark.slow  # watcher subprocesses, against a folder and S3


# -- helpers -------------------------------------------------------------------
class Bucket:
    """A place where samples land: a local folder or an s3:// prefix."""

    def __init__(self, url: str, storage_options: dict) -> None:
        self.url = url
        self.opts = storage_options
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)

    def write_sample(
        self, name: str, *, complete: bool = True, tiles: int = 2, marker: bool = False, content: bytes = b"tile"
    ) -> None:
        base = f"{self.root}/{name}"
        self.fs.makedirs(f"{base}/tiles", exist_ok=True)
        self.fs.pipe_file(f"{base}/acquisition.json", json.dumps({"sample": name}).encode())
        rows = ["slice,channel,row,col,x_um,y_um,file"]
        rows += [f"0,0,0,{i},{i * 100},0,tiles/t{i}.tif" for i in range(tiles)]
        self.fs.pipe_file(f"{base}/tiles.csv", ("\n".join(rows) + "\n").encode())
        present = tiles if complete else tiles - 1
        for i in range(present):
            self.fs.pipe_file(f"{base}/tiles/t{i}.tif", content + bytes([i]))
        if marker:
            self.fs.pipe_file(f"{base}/_COMPLETE", b"")

    @property
    def env(self) -> dict[str, str]:
        return {"IMAXT_S3_ENDPOINT": self.opts["endpoint_url"]} if self.opts else {}

    def ledger(self, **retry) -> Ledger:
        return Ledger(open_state_store(f"{self.url}/_imaxt/state", self.opts), retry=RetryPolicy(**retry))

    def output_exists(self, sample: str) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(f"{self.root}/_imaxt/processed/{sample}.zarr/DONE")


@pytest.fixture(params=["local", "s3"])
def bucket(request, tmp_path):
    if request.param == "local":
        return Bucket(str(tmp_path / "bucket"), {})
    endpoint = request.getfixturevalue("s3_endpoint")
    name = create_bucket(endpoint)
    return Bucket(f"s3://{name}/incoming", {"endpoint_url": endpoint})


def read_log(path: Path) -> dict[str, collections.Counter]:
    counts = collections.defaultdict(collections.Counter)  # start, beat, fail, done
    if path.exists():
        for line in path.read_text().splitlines():
            event, sample, *_ = line.split()
            counts[event][sample] += 1
    return counts


def command(log: Path, seconds: float) -> str:
    return f"{sys.executable} {FAKE} {{sample}} {{output_url}} {log} {seconds}"


def watch_proc(bucket: Bucket, log: Path, seconds: float, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **bucket.env}
    argv = [
        sys.executable,
        "-m",
        "imaxt_pipeline.service.cli",
        "watch",
        bucket.url,
        "--command",
        command(log, seconds),
        "--poll",
        "0.2",
        "--settle",
        "0.3",
        *extra,
    ]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)


def finish(proc: subprocess.Popen, timeout: float = 90) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"watcher did not settle:\n{err.decode()[-3000:]}") from None
    assert proc.returncode == 0, err.decode()[-3000:]
    return err.decode()


# -- in-process: landing, half uploads, changed inputs --------------------------
def test_landing_processed_once_half_upload_waits(bucket, tmp_path):
    log = tmp_path / "runs.log"
    bucket.write_sample("s1")
    bucket.write_sample("s2", complete=False)  # one tile still missing
    bucket.write_sample("s3", complete=False, marker=True)  # uploader says it is complete
    watcher = Watcher(
        bucket.url,
        CommandAction(command(log, 0), env=bucket.env),
        bucket.ledger(),
        storage_options=bucket.opts,
        lease_ttl=30,
        poll_interval=1,
    )
    assert sorted(x.sample for x in find_landed(bucket.url, bucket.opts)) == ["s1", "s3"]

    done = watcher.poll_once()
    assert sorted(s.sample for s in done) == ["s1", "s3"]
    assert all(s.status == "done" for s in done)
    assert watcher.poll_once() == []  # nothing runs twice
    counts = read_log(log)
    assert counts["start"] == {"s1": 1, "s3": 1}
    assert bucket.output_exists("s1") and not bucket.output_exists("s2")
    assert bucket.ledger().store.get("s2")[0] is None  # never even recorded

    bucket.write_sample("s2")  # the last tile lands
    assert [s.sample for s in watcher.poll_once()] == ["s2"]
    bucket.write_sample("s1", content=b"new pixels")  # inputs of a done sample change
    again = watcher.poll_once()
    assert [(s.sample, s.status, s.runs) for s in again] == [("s1", "done", 2)]
    assert read_log(log)["done"] == {"s1": 2, "s2": 1, "s3": 1}
    assert watcher.all_settled()


def test_failing_sample_retried_then_failed(bucket, tmp_path):
    log = tmp_path / "runs.log"
    for name in ("bad1", "ok1", "ok2"):
        bucket.write_sample(name)
    proc = watch_proc(
        bucket, log, 0.05, "--max-attempts", "3", "--backoff", "0.2", "--lease-ttl", "10", "--exit-when-settled"
    )
    stderr = finish(proc)
    counts = read_log(log)
    assert counts["start"]["bad1"] == 3 and counts["done"]["bad1"] == 0
    assert counts["done"] == {"ok1": 1, "ok2": 1}
    state, _ = bucket.ledger().store.get("bad1")
    assert (state.status, state.attempts) == ("failed", 3)
    assert "status 3" in state.last_error and "synthetic failure" in state.last_error
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "run_failed" for e in events) == 3
    assert [e["status"] for e in events if e["event"] == "run_failed"] == ["pending", "pending", "failed"]

    # what status lists is tested here, not its process: main() in this interpreter
    out = cli_in_process(
        "status", bucket.url, "--json", *(["--endpoint-url", bucket.opts["endpoint_url"]] if bucket.opts else [])
    )
    assert out.returncode == 0, out.stderr
    listed = {d["sample"]: d["status"] for d in map(json.loads, out.stdout.splitlines())}
    assert listed == {"bad1": "failed", "ok1": "done", "ok2": "done"}


def test_sigkill_mid_run_then_restart_processes_each_once(bucket, tmp_path):
    log = tmp_path / "runs.log"
    names = ["a1", "a2", "a3"]
    for name in names:
        bucket.write_sample(name)
    args = ("--lease-ttl", "2", "--exit-when-settled")
    proc = watch_proc(bucket, log, 1.5, *args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the second run is under way
        counts = read_log(log)
        if sum(counts["start"].values()) == 2 and sum(counts["done"].values()) == 1:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError(f"no second run started: {read_log(log)}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reaps it and closes its pipes
    killed = next(s for s in read_log(log)["start"] if read_log(log)["done"][s] == 0)
    time.sleep(2.0)  # the orphaned run would have finished by now
    assert read_log(log)["done"][killed] == 0, "the run outlived its killed watcher"
    state, _ = bucket.ledger().store.get(killed)
    assert state.status == "running"  # the crash left a lease behind

    finish(watch_proc(bucket, log, 0.3, *args))
    counts = read_log(log)
    assert counts["done"] == {n: 1 for n in names}  # processed exactly once each
    assert counts["start"][killed] == 2 and sum(counts["start"].values()) == 4
    final = {s.sample: (s.status, s.attempts) for s in bucket.ledger().store.all()}
    assert final[killed] == ("done", 2)
    assert all(bucket.output_exists(n) for n in names)


def test_two_watchers_never_double_process(bucket, tmp_path):
    log = tmp_path / "runs.log"
    names = [f"c{i}" for i in range(4)]
    for name in names:
        bucket.write_sample(name)
    procs = [watch_proc(bucket, log, 0.3, "--lease-ttl", "5", "--exit-when-settled") for _ in range(2)]
    for p in procs:
        finish(p)
    counts = read_log(log)
    assert counts["start"] == {n: 1 for n in names}
    assert counts["done"] == {n: 1 for n in names}
    parents = {line.split()[3] for line in log.read_text().splitlines()}
    assert len(parents) >= 1 and all(s.status == "done" for s in bucket.ledger().store.all())


def test_notification_wakes_watcher_early(s3_endpoint, tmp_path):
    """A bucket event starts the run long before the next poll would."""
    import urllib.request

    from imaxt_pipeline.service.notify import NotificationServer

    name = create_bucket(s3_endpoint)
    bucket = Bucket(f"s3://{name}/incoming", {"endpoint_url": s3_endpoint})
    log = tmp_path / "runs.log"
    watcher = Watcher(
        bucket.url,
        CommandAction(command(log, 0), env=bucket.env),
        bucket.ledger(),
        storage_options=bucket.opts,
        lease_ttl=30,
        poll_interval=60,
    )
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    with NotificationServer(watcher.on_events, port=0) as server:
        thread.start()
        time.sleep(1.0)  # first (empty) poll is over
        bucket.write_sample("n1")
        event = {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": name}, "object": {"key": "incoming/n1/tiles.csv"}},
                }
            ]
        }
        req = urllib.request.Request(
            f"{server.url}/events", data=json.dumps(event).encode(), headers={"Content-Type": "application/json"}
        )
        t0 = time.monotonic()
        assert urllib.request.urlopen(req).status == 202
        while read_log(log)["done"]["n1"] == 0 and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        stop.set()
        watcher._wake.set()
        thread.join(timeout=30)  # let its last poll finish while the S3 endpoint is still up
    assert not thread.is_alive()
    assert read_log(log)["done"]["n1"] == 1
    assert time.monotonic() - t0 < 20  # well before the 60 s poll
