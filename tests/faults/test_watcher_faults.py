"""Fault injection for the watcher: fencing, landing, error classes.

Runs are real subprocesses (``tests/service/fake_run.py``), which stamp their start, a beat
every 50 ms and their end into a log; "no concurrent attempts" is measured from those stamps
(an attempt's last stamp before the next attempt's first), not from provenance counts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imaxt_pipeline.errors import ConfigError
from imaxt_pipeline.service.launcher import Cancelled, CommandAction, Job, PipelineAction
from imaxt_pipeline.service.state import Ledger, LocalStateStore, RetryPolicy, SampleState
from imaxt_pipeline.service.watcher import Watcher, WatcherStopped

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "service" / "fake_run.py"
pytestmark = pytest.mark.slow  # watchers with real subprocesses and timed faults


def _load_fake_run():
    spec = importlib.util.spec_from_file_location("imaxt_fake_run", FAKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fake = _load_fake_run()


# -- helpers -------------------------------------------------------------------
def write_sample(bucket: Path, name: str, *, tiles: int = 2, marker: bool = False) -> Path:
    base = bucket / name
    (base / "tiles").mkdir(parents=True, exist_ok=True)
    for i in range(tiles):
        (base / "tiles" / f"t{i}.tif").write_bytes(b"tile" + bytes([i]))
    (base / "acquisition.json").write_text(json.dumps({"sample": name}))
    (base / "tiles.csv").write_text(csv_text(tiles))
    if marker:
        (base / "_COMPLETE").write_bytes(b"")
    return base


def csv_text(tiles: int) -> str:
    rows = ["slice,channel,row,col,x_um,y_um,file"] + [f"0,0,0,{i},{i * 100},0,tiles/t{i}.tif" for i in range(tiles)]
    return "\n".join(rows) + "\n"


def command(log: Path, seconds: float) -> str:
    return f"{sys.executable} {FAKE} {{sample}} {{output_url}} {log} {seconds}"


class FlakyStore(LocalStateStore):
    """A local store that raises ``make_error()`` on every read and write while a fault is on;
    optionally it hangs instead (a store that does not answer)."""

    def __init__(self, root, make_error=lambda: PermissionError(13, "Permission denied", "state")) -> None:
        super().__init__(root)
        self.make_error = make_error
        self.until = 0.0
        self.hang = False
        self.failures = 0

    def fail_for(self, seconds: float, *, hang: bool = False) -> None:
        self.hang = hang
        self.until = time.monotonic() + seconds

    def _fault(self) -> None:
        left = self.until - time.monotonic()
        if left > 0:
            self.failures += 1
            if self.hang:
                time.sleep(left)
                return
            raise self.make_error()

    def get(self, sample):
        self._fault()
        return super().get(sample)

    def put(self, state: SampleState, *, version, fence=None):
        self._fault()
        super().put(state, version=version, fence=fence)

    def samples(self):
        self._fault()
        return super().samples()


class Running:
    """A watcher's loop in a thread."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.watcher.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.watcher._wake.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "fields", {}).get("event") == name]


@pytest.fixture
def bucket(tmp_path) -> Path:
    path = tmp_path / "bucket"
    path.mkdir()
    return path


def make_watcher(bucket: Path, action, store=None, **kw) -> Watcher:
    store = store or LocalStateStore(bucket / "_imaxt" / "state")
    retry = kw.pop("retry", RetryPolicy(max_attempts=5, backoff_s=0.1))
    kw.setdefault("poll_interval", 0.1)
    return Watcher(str(bucket), action, Ledger(store, retry=retry), **kw)


# -- 1. fencing ----------------------------------------------------------------
def test_state_unreadable_during_renewal_stops_attempt_before_another_starts(bucket, tmp_path, caplog):
    """The measured case: state unreadable for 2.5 s while a run renews its lease, a second watcher
    waiting. The first attempt is killed before its lease can expire; the takeover starts after."""
    caplog.set_level(logging.INFO, logger="imaxt")
    log = tmp_path / "runs.log"
    write_sample(bucket, "s1", marker=True)
    flaky = FlakyStore(bucket / "_imaxt" / "state")
    w1 = make_watcher(bucket, CommandAction(command(log, 4.0)), flaky, lease_ttl=1.5, owner="w1")
    r1 = Running(w1)
    wait_for(lambda: fake.counts(log)["start"]["s1"] == 1, what="first attempt")
    flaky.fail_for(2.5)  # every read and write of w1's state store fails
    r2 = Running(make_watcher(bucket, CommandAction(command(log, 0.5)), lease_ttl=1.5, owner="w2"))
    try:
        wait_for(lambda: fake.counts(log)["done"]["s1"] == 1, what="takeover to finish")
    finally:
        r2.close()
        r1.close()
    attempts = fake.read_attempts(log)["s1"]
    assert fake.concurrent_attempts(log) == [], attempts
    assert len(attempts) == 2 and attempts[0].outcome is None and attempts[1].outcome == "done"
    assert [a.token for a in attempts] == ["1", "2"]  # each attempt ran under its own lease token
    assert flaky.failures > 0 and events(caplog, "renew_error") and events(caplog, "lease_lost")
    assert events(caplog, "cancelled")[0].fields["lease_token"] == 1
    state, _ = LocalStateStore(bucket / "_imaxt" / "state").get("s1")
    assert (state.status, state.runs, state.lease_token, state.attempts) == ("done", 1, 2, 2)
    assert r1.error is None and r2.error is None


def test_short_state_outage_is_ridden_out(bucket, tmp_path, caplog):
    """An outage shorter than the renewal window neither cancels the run nor lets anyone in."""
    caplog.set_level(logging.INFO, logger="imaxt")
    log = tmp_path / "runs.log"
    write_sample(bucket, "s1", marker=True)
    flaky = FlakyStore(bucket / "_imaxt" / "state")
    w1 = make_watcher(bucket, CommandAction(command(log, 3.0)), flaky, lease_ttl=6.0, owner="w1")
    r1 = Running(w1)
    wait_for(lambda: fake.counts(log)["start"]["s1"] == 1, what="first attempt")
    time.sleep(1.0)
    flaky.fail_for(1.5)
    r2 = Running(make_watcher(bucket, CommandAction(command(log, 0.5)), lease_ttl=6.0, owner="w2"))
    try:
        wait_for(lambda: fake.counts(log)["done"]["s1"] == 1, what="the run to finish")
        time.sleep(0.5)
    finally:
        r2.close()
        r1.close()
    assert len(fake.read_attempts(log)["s1"]) == 1 and fake.concurrent_attempts(log) == []
    assert flaky.failures > 0 and events(caplog, "renew_error") and not events(caplog, "lease_lost")


def test_stale_attempt_writes_are_refused(bucket, tmp_path, caplog):
    """A watcher whose state store hangs past its lease: its attempt is stopped, the sample is taken
    over, and when the store answers again the stale attempt's writes (token 1) change nothing."""
    caplog.set_level(logging.INFO, logger="imaxt")
    log = tmp_path / "runs.log"
    write_sample(bucket, "s1", marker=True)
    flaky = FlakyStore(bucket / "_imaxt" / "state")
    w1 = make_watcher(bucket, CommandAction(command(log, 3.0)), flaky, lease_ttl=1.5, owner="w1")
    r1 = Running(w1)
    wait_for(lambda: fake.counts(log)["start"]["s1"] == 1, what="first attempt")
    flaky.fail_for(4.0, hang=True)  # w1's renewal hangs, then goes through late
    r2 = Running(make_watcher(bucket, CommandAction(command(log, 0.3)), lease_ttl=1.5, owner="w2"))
    try:
        wait_for(lambda: fake.counts(log)["done"]["s1"] == 1, what="takeover to finish")
        wait_for(lambda: time.monotonic() > flaky.until + 0.5, what="the hang to end")
    finally:
        r2.close()
        r1.close()
    assert fake.concurrent_attempts(log) == []
    state, _ = LocalStateStore(bucket / "_imaxt" / "state").get("s1")
    assert (state.status, state.runs, state.lease_token) == ("done", 1, 2)  # w2's outcome stands
    assert w1.ledger.finish("s1", "w1", error="late", token=1) is None  # and stays
    assert w1.ledger.store.get("s1")[0] == state


def test_pipeline_action_cancel_kills_its_process_group(tmp_path):
    """The default action runs the pipeline in a child process group: cancelling kills all of it."""
    from imaxt_pipeline.testing._raw import write_raw_sample

    raw = write_raw_sample(tmp_path / "raw" / "p1", slices=2, rows=2, cols=2, tile=64)
    job = Job("p1", str(raw), str(tmp_path / "out" / "p1.zarr"), str(tmp_path / "rawz" / "p1.zarr"))
    action = PipelineAction("local", n_workers=1)
    cancel = threading.Event()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _call(action, job, cancel, errors), daemon=True)
    thread.start()
    pgid = None
    deadline = time.monotonic() + 30
    while pgid is None and time.monotonic() < deadline:
        pgid = next(
            (p for p, cmd in _processes() if "imaxt_pipeline.service.launcher" in cmd and job.output_url in cmd), None
        )
        time.sleep(0.05)
    assert pgid is not None, "pipeline child never started"
    time.sleep(1.0)
    t0 = time.monotonic()
    cancel.set()
    thread.join(20)
    assert not thread.is_alive() and time.monotonic() - t0 < 10
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert [p for p, _ in _processes() if _pgid(p) == pgid] == []  # nothing of the run is left


def _call(action, job, cancel, errors) -> None:
    try:
        action(job, cancel)
    except BaseException as exc:
        errors.append(exc)


def _processes() -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out.append((int(entry), cmd))
    return out


def _pgid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return None  # a zombie runs nothing
    return int(stat.rsplit(")", 1)[-1].split()[2])


# -- 2. landing ----------------------------------------------------------------
def test_tiles_csv_written_row_by_row_is_not_landed_until_settled(bucket, tmp_path):
    """Rows appended with pauses, the last one cut mid-path for a while: one attempt, after it settled."""
    log = tmp_path / "runs.log"
    tiles = 4
    base = bucket / "rows"
    (base / "tiles").mkdir(parents=True)
    for i in range(tiles):
        (base / "tiles" / f"t{i}.tif").write_bytes(b"tile" + bytes([i]))
    (base / "acquisition.json").write_text("{}")
    watcher = make_watcher(bucket, CommandAction(command(log, 0.1)), lease_ttl=10, settle_seconds=1.0)
    running = Running(watcher)
    try:
        lines = csv_text(tiles).splitlines(keepends=True)
        with open(base / "tiles.csv", "w") as fh:
            for line in lines:
                half = len(line) // 2 + 3  # a truncated row: cut inside the file name
                fh.write(line[:half])
                fh.flush()
                time.sleep(0.4)
                fh.write(line[half:])
                fh.flush()
                written = time.time()
                time.sleep(0.4)
        wait_for(lambda: fake.counts(log)["done"]["rows"] == 1, what="the sample to run")
        time.sleep(0.5)
    finally:
        running.close()
    attempts = fake.read_attempts(log)["rows"]
    assert len(attempts) == 1 and attempts[0].start >= written + 0.9  # taken only once settled
    state, _ = watcher.ledger.store.get("rows")
    assert (state.status, state.attempts) == ("done", 1)


def test_half_written_tile_is_not_landed_until_settled(bucket, tmp_path):
    log = tmp_path / "runs.log"
    base = write_sample(bucket, "half", tiles=2)
    (base / "tiles" / "t1.tif").write_bytes(b"")  # listed and present, still being written
    watcher = make_watcher(bucket, CommandAction(command(log, 0.1)), lease_ttl=10, settle_seconds=1.0)
    running = Running(watcher)
    try:
        with open(base / "tiles" / "t1.tif", "ab") as fh:
            for _ in range(6):
                fh.write(os.urandom(1024))
                fh.flush()
                written = time.time()
                time.sleep(0.3)
        wait_for(lambda: fake.counts(log)["done"]["half"] == 1, what="the sample to run")
        time.sleep(0.5)
    finally:
        running.close()
    attempts = fake.read_attempts(log)["half"]
    assert len(attempts) == 1 and attempts[0].start >= written + 0.9
    assert watcher.ledger.store.get("half")[0].attempts == 1


def test_marker_is_taken_without_settling(bucket, tmp_path):
    log = tmp_path / "runs.log"
    write_sample(bucket, "m1", marker=True)
    watcher = make_watcher(bucket, CommandAction(command(log, 0)), lease_ttl=10, settle_seconds=60)
    assert [s.sample for s in watcher.poll_once()] == ["m1"]
    write_sample(bucket, "n1")  # no marker: waits for the settle interval
    assert watcher.poll_once() == [] and watcher.ledger.store.get("n1") == (None, None)


# -- 3. error classes ----------------------------------------------------------
def test_permanent_config_error_fails_at_once_logged_at_error(bucket, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imaxt")
    write_sample(bucket, "c1", marker=True)
    calls = []

    def action(job, cancel):
        calls.append(job.sample)
        raise ConfigError("run.yaml: steps.mosaic.levles: Extra inputs are not permitted")

    watcher = make_watcher(bucket, action, lease_ttl=10, retry=RetryPolicy(max_attempts=3, backoff_s=0))
    for _ in range(3):
        watcher.poll_once()
    assert calls == ["c1"]  # not retried
    state, _ = watcher.ledger.store.get("c1")
    assert (state.status, state.attempts) == ("failed", 1) and "levles" in state.last_error
    (failed,) = events(caplog, "run_failed")
    assert failed.levelno == logging.ERROR and failed.fields["permanent"] is True


def test_config_error_in_pipeline_child_is_permanent(bucket, tmp_path):
    """The run configuration breaks after the watcher started (a ConfigMap edit): the pipeline child
    reports a ConfigError, and the sample fails at once."""
    config = tmp_path / "run.yaml"
    config.write_text("steps:\n  mosaic: {levels: 2}\n")
    action = PipelineAction("local", config_path=str(config), n_workers=1)
    action.check()  # valid at start-up
    config.write_text("steps:\n  mosaic: {levles: 2}\n")
    write_sample(bucket, "c2", marker=True)
    watcher = make_watcher(bucket, action, lease_ttl=30, retry=RetryPolicy(max_attempts=3, backoff_s=0))
    (final,) = watcher.poll_once()
    assert (final.status, final.attempts) == ("failed", 1)
    assert "ConfigError" in final.last_error and "levles" in final.last_error
    assert watcher.poll_once() == []


def test_command_exit_2_is_permanent_and_watcher_exits_0(bucket, tmp_path):
    """Through the CLI: a sample whose run reports a configuration error (exit 2) fails once and for all;
    the others carry on, and the watcher itself settles normally."""
    log = tmp_path / "runs.log"
    for name in ("cfg1", "ok1"):
        write_sample(bucket, name, marker=True)
    proc = _watch_cli(bucket, "--command", command(log, 0.05), "--max-attempts", "3", "--backoff", "0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = fake.counts(log)
    assert counts["start"] == {"cfg1": 1, "ok1": 1} and counts["done"] == {"ok1": 1}
    state, _ = LocalStateStore(bucket / "_imaxt" / "state").get("cfg1")
    assert (state.status, state.attempts) == ("failed", 1) and "status 2" in state.last_error
    failed = [e for e in _json_events(proc.stderr) if e["event"] == "run_failed"]
    assert [(e["sample"], e["level"], e["permanent"]) for e in failed] == [("cfg1", "ERROR", True)]


def test_watcher_own_config_error_exits_nonzero(bucket, tmp_path):
    config = tmp_path / "values.yaml"
    config.write_text("steps:\n  mosaic: {levles: 2}\n")  # a typo in the helm values
    write_sample(bucket, "s1", marker=True)
    proc = _watch_cli(bucket, "--config", str(config))
    assert proc.returncode == 2, proc.stderr[-3000:]
    stopped = [e for e in _json_events(proc.stderr) if e["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["level"] == "ERROR" and "levles" in stopped[0]["error"]
    assert "imaxt watch: error:" in proc.stderr
    assert LocalStateStore(bucket / "_imaxt" / "state").samples() == []  # nothing was started


def test_transient_run_error_is_retried(bucket, tmp_path, caplog):
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    caplog.set_level(logging.INFO, logger="imaxt")
    write_sample(bucket, "t1", marker=True)
    calls = []

    def action(job, cancel):
        calls.append(job.attempt)
        if len(calls) == 1:
            raise translate_boto_error(ClientError({"Error": {"Code": "SlowDown", "Message": "x"}}, "PutObject"))

    watcher = make_watcher(bucket, action, lease_ttl=10, retry=RetryPolicy(max_attempts=3, backoff_s=0.1))
    assert watcher.poll_once()[0].status == "pending"
    time.sleep(0.15)
    assert watcher.poll_once()[0].status == "done"
    assert calls == [1, 2]
    (failed,) = events(caplog, "run_failed")
    assert failed.levelno == logging.WARNING and failed.fields["permanent"] is False


def test_transient_state_error_retried_permanent_one_stops(bucket, tmp_path, caplog):
    """The watcher's own storage: a transient S3 code is retried with back-off, a permanent one stops it."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    caplog.set_level(logging.INFO, logger="imaxt")
    log = tmp_path / "runs.log"
    write_sample(bucket, "u1", marker=True)
    code = ["ServiceUnavailable"]

    def error():
        return translate_boto_error(ClientError({"Error": {"Code": code[0], "Message": "x"}}, "GetObject"))

    flaky = FlakyStore(bucket / "_imaxt" / "state", make_error=error)
    flaky.fail_for(1.0)
    watcher = make_watcher(bucket, CommandAction(command(log, 0)), flaky, lease_ttl=10)
    running = Running(watcher)
    try:
        wait_for(lambda: fake.counts(log)["done"]["u1"] == 1, what="the run after the outage")
        assert running.error is None and events(caplog, "storage_error")[0].fields["transient"] is True
        code[0] = "InvalidAccessKeyId"
        flaky.fail_for(30)
        write_sample(bucket, "u2", marker=True)
        running.thread.join(10)
    finally:
        running.close()
    assert isinstance(running.error, WatcherStopped)
    assert events(caplog, "stopped")[0].levelno == logging.ERROR
    assert fake.counts(log)["start"] == {"u1": 1}


def _watch_cli(bucket: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "imaxt_pipeline.service.cli", "watch", str(bucket), "--poll", "0.1"]
    argv += ["--settle", "0.2", "--lease-ttl", "10", "--exit-when-settled", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def _json_events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
