"""Watcher soak: two watchers, random ``kill -9`` of watchers and of runs, state-read faults.

Six small samples are processed by ``tests/service/fake_run.py`` (1.5 s each) under two
``imaxt watch`` processes at once, while a seeded random schedule kills a watcher (restarted
at once with a new owner id), kills a running attempt, or makes one sample's state record
unreadable for a moment. At the end every sample must be done exactly once, with no two
attempts of one sample alive at the same time (from the start/beat/end stamps of the runs).

Kills are aimed at runs in progress: a crash in the few tens of milliseconds between a run's
end and the recording of its outcome necessarily runs the sample again (the outcome was never
recorded; see deploy/README.md), so the schedule waits until no run is within that window.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imaxt_pipeline.service.state import LocalStateStore

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "service" / "fake_run.py"
pytestmark = pytest.mark.slow

SAMPLES = 6
RUN_S = 1.5  # each run
LEASE_TTL = 3.0
CHAOS_S = 25.0  # faults are injected for this long
DEADLINE_S = 80.0
SEED = 20240612


def _load_fake_run():
    spec = importlib.util.spec_from_file_location("imaxt_fake_run_soak", FAKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fake = _load_fake_run()


def write_sample(bucket: Path, name: str) -> None:
    base = bucket / name
    (base / "tiles").mkdir(parents=True)
    rows = ["slice,channel,row,col,x_um,y_um,file"]
    for i in range(2):
        (base / "tiles" / f"t{i}.tif").write_bytes(b"tile" + bytes([i]))
        rows.append(f"0,0,0,{i},{i * 100},0,tiles/t{i}.tif")
    (base / "acquisition.json").write_text("{}")
    (base / "tiles.csv").write_text("\n".join(rows) + "\n")


class Watchers:
    def __init__(self, bucket: Path, log: Path, logs: Path) -> None:
        self.bucket, self.log, self.logs = bucket, log, logs
        self.procs: list[subprocess.Popen] = []
        self.started = 0

    def start(self) -> subprocess.Popen:
        self.started += 1
        argv = [
            sys.executable,
            "-m",
            "imaxt_pipeline.service.cli",
            "watch",
            str(self.bucket),
            "--command",
            f"{sys.executable} {FAKE} {{sample}} {{output_url}} {self.log} {RUN_S}",
            "--poll",
            "0.1",
            "--settle",
            "0.2",
            "--lease-ttl",
            str(LEASE_TTL),
            "--max-attempts",
            "50",
            "--backoff",
            "0.1",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.logs / f"watcher-{self.started}.log", "wb") as err:  # the child keeps its own copy
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, env=env)
        self.procs.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for p in self.alive():
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def quiet_moment(log: Path) -> bool:
    """No run is within its last 0.35 s or finished less than 0.35 s ago (outcome being recorded)."""
    now = time.time()
    for attempts in fake.read_attempts(log).values():
        for a in attempts:
            if a.outcome is None and alive(a.pid) and a.start + RUN_S - now < 0.35:
                return False
            if a.outcome is not None and now - a.last < 0.35:
                return False
    return True


def unreadable_for(state_dir: Path, sample: str, seconds: float) -> bool:
    """Make one state record unreadable (invalid JSON) for ``seconds``, under the store's own lock,
    so no writer can change it meanwhile; then put it back byte for byte."""
    path = state_dir / f"{sample}.json"
    if not path.exists():
        return False
    lock = os.open(state_dir / f".{sample}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        original = path.read_bytes()
        path.write_bytes(b"{not json")
        fcntl.flock(lock, fcntl.LOCK_UN)
        time.sleep(seconds)
        fcntl.flock(lock, fcntl.LOCK_EX)
        path.write_bytes(original)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    return True


def test_soak_kills_two_watchers_state_faults(tmp_path):
    rng = random.Random(SEED)
    bucket = tmp_path / "bucket"
    names = [f"k{i}" for i in range(SAMPLES)]
    for name in names:
        write_sample(bucket, name)
    log = tmp_path / "runs.log"
    state_dir = bucket / "_imaxt" / "state"
    store = LocalStateStore(state_dir)
    watchers = Watchers(bucket, log, tmp_path)
    figures = {"watcher_kills": 0, "attempt_kills": 0, "state_faults": 0}

    def done() -> set[str]:
        out = set()
        for name in names:
            try:
                state, _ = store.get(name)
            except ValueError:  # a record made unreadable on purpose
                continue
            if state is not None and state.status == "done":
                out.add(name)
        return out

    t0 = time.monotonic()
    try:
        watchers.start()
        watchers.start()
        while time.monotonic() - t0 < DEADLINE_S and done() != set(names):
            time.sleep(rng.uniform(0.3, 1.2))
            if time.monotonic() - t0 > CHAOS_S:
                continue
            fault = rng.choice(["watcher", "attempt", "state", "state", "none"])
            if figures["attempt_kills"] == 0 and rng.random() < 0.6:
                fault = "attempt"  # samples finish in seconds: make sure one attempt dies before they all do
            elif figures["watcher_kills"] < 2 and rng.random() < 0.6:
                fault = "watcher"  # likewise two watcher kills (a CI run once finished all six after one)
            if fault in ("watcher", "attempt"):
                wait_until = time.monotonic() + 3
                while not quiet_moment(log) and time.monotonic() < wait_until:
                    time.sleep(0.02)
                if not quiet_moment(log):
                    continue
            if fault == "watcher" and watchers.alive():
                victim = rng.choice(watchers.alive())
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                figures["watcher_kills"] += 1
                watchers.start()
            elif fault == "attempt":
                running = [
                    a
                    for attempts in fake.read_attempts(log).values()
                    for a in attempts
                    if a.outcome is None and alive(a.pid)
                ]
                if running:
                    with_pid = rng.choice(running).pid
                    try:
                        os.kill(with_pid, signal.SIGKILL)
                        figures["attempt_kills"] += 1
                    except ProcessLookupError:
                        pass
            elif fault == "state":
                figures["state_faults"] += unreadable_for(state_dir, rng.choice(names), 0.8)
        finished = done()
    finally:
        watchers.stop()
    elapsed = time.monotonic() - t0

    counts = fake.counts(log)
    attempts = fake.read_attempts(log)
    concurrent = fake.concurrent_attempts(log)
    lost = sorted(set(names) - finished)
    duplicated = sorted(n for n in names if counts["done"][n] > 1)
    records = {n: store.get(n)[0] for n in names}
    summary = {
        "samples": SAMPLES,
        "watchers_started": watchers.started,
        **figures,
        "attempts": sum(len(a) for a in attempts.values()),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "concurrent": len(concurrent),
        "seconds": round(elapsed, 1),
    }
    print("\nwatcher soak:", " ".join(f"{k}={v}" for k, v in summary.items()))

    assert figures["watcher_kills"] >= 2 and figures["attempt_kills"] >= 1 and figures["state_faults"] >= 1, summary
    assert lost == [], (summary, {n: records[n] for n in lost})
    assert duplicated == [], (summary, {n: attempts[n] for n in duplicated})
    assert concurrent == [], (summary, concurrent)
    assert all(r is not None and r.runs == 1 for r in records.values()), records
    for name in names:
        assert (bucket / "_imaxt" / "processed" / f"{name}.zarr" / "DONE").read_bytes() == name.encode()
