"""A small, honest stand-in for a pipeline run, used by the watcher tests; and how to read its log.

``python tests/service/fake_run.py SAMPLE OUTPUT_URL LOG SECONDS``: appends ``start`` to LOG,
then a ``beat`` every 50 ms while it sleeps SECONDS; then

* a sample whose name starts with ``bad`` fails like a transient error (exit 3, retried);
* one that starts with ``cfg`` fails like a configuration error (exit 2, the ``imaxt`` CLI's
  status for errors the user must fix: permanent, not retried);
* any other writes ``OUTPUT_URL/DONE`` and appends ``done``.

Lines are ``<event> <sample> <pid> <parent pid> <unix time> <lease token>``; appends of short
lines with ``O_APPEND`` are atomic. An attempt is one pid: it started at its ``start`` stamp
and was certainly alive at its last stamp, so two attempts of one sample ran concurrently if
one started before the other's last stamp (:func:`concurrent_attempts`). A ``kill -9``
leaves no end stamp, but the beats stop within 50 ms of the kill.

The test modules load the helpers below by path (test modules never import each other).
"""

from __future__ import annotations

import collections
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BEAT_S = 0.05


def log(path: str, event: str, sample: str) -> None:
    token = os.environ.get("IMAXT_LEASE_TOKEN", "-")
    line = f"{event} {sample} {os.getpid()} {os.getppid()} {time.time():.6f} {token}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main(sample: str, output_url: str, log_path: str, seconds: str) -> int:
    log(log_path, "start", sample)
    end = time.monotonic() + float(seconds)
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(BEAT_S, left))
        log(log_path, "beat", sample)
    if sample.startswith("bad"):
        log(log_path, "fail", sample)
        print(f"{sample}: synthetic failure for the retry test", file=sys.stderr)
        return 3
    if sample.startswith("cfg"):
        log(log_path, "fail", sample)
        print(f"imaxt process: error: {sample}: steps.mosaic.levles: Extra inputs are not permitted", file=sys.stderr)
        return 2
    import fsspec

    opts = {"endpoint_url": os.environ["IMAXT_S3_ENDPOINT"]} if output_url.startswith("s3://") else {}
    fs, path = fsspec.core.url_to_fs(output_url, **opts)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/DONE", sample.encode())
    log(log_path, "done", sample)
    return 0


# -- reading the log ---------------------------------------------------------------------------
@dataclass
class Attempt:
    """One run of fake_run (one pid): first and last stamp, and how it ended (``None``: killed)."""

    sample: str
    pid: int
    token: str
    start: float
    last: float
    outcome: str | None = None


def read_events(path: str | Path) -> list[tuple[str, str, int, float, str]]:
    """``(event, sample, pid, time, token)`` for every line of the log."""
    out = []
    p = Path(path)
    if p.exists():
        for line in p.read_text().splitlines():
            event, sample, pid, _ppid, stamp, token = line.split()
            out.append((event, sample, int(pid), float(stamp), token))
    return out


def read_attempts(path: str | Path) -> dict[str, list[Attempt]]:
    """Attempts per sample, in order of start."""
    by_pid: dict[int, Attempt] = {}
    for event, sample, pid, stamp, token in read_events(path):
        att = by_pid.get(pid)
        if att is None:
            att = by_pid[pid] = Attempt(sample, pid, token, stamp, stamp)
        att.start, att.last = min(att.start, stamp), max(att.last, stamp)
        if event in ("done", "fail"):
            att.outcome = event
    out: dict[str, list[Attempt]] = collections.defaultdict(list)
    for att in sorted(by_pid.values(), key=lambda a: a.start):
        out[att.sample].append(att)
    return dict(out)


def concurrent_attempts(path: str | Path) -> list[tuple[Attempt, Attempt]]:
    """Pairs of attempts of the same sample whose lifetimes overlap (from their stamps)."""
    pairs = []
    for attempts in read_attempts(path).values():
        for i, a in enumerate(attempts):
            for b in attempts[i + 1 :]:
                if b.start <= a.last:
                    pairs.append((a, b))
    return pairs


def counts(path: str | Path) -> dict[str, collections.Counter[str]]:
    """``{event: Counter(sample)}`` (``start``, ``done``, ``fail``, ``beat``)."""
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for event, sample, *_ in read_events(path):
        out[event][sample] += 1
    for event in ("start", "done", "fail"):
        out.setdefault(event, collections.Counter())
    return out


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
