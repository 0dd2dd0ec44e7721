"""The watcher: finds samples that have landed in a bucket and processes each once.

A sample is a folder ``<bucket_url>/<sample>/`` in the raw layout
(``spec/raw-layout.md``). It has *landed* when it holds an ``_COMPLETE`` marker,
or ``acquisition.json``, ``tiles.csv`` and every file ``tiles.csv`` lists. Its
input checksum is a hash of the listing (names, sizes, ETags or mtimes), so a
sample whose inputs change is processed again.

The loop polls the bucket through fsspec every ``poll_interval`` seconds;
bucket notifications (:mod:`.notify`) wake it early for the samples they name.
Claims, leases, retries and back-off live in :class:`~.state.Ledger`.
Folders whose names start with ``_`` or ``.`` (``_imaxt/`` holds state and
outputs by default) are never samples.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..io.storage import protocols, url_to_fs
from .launcher import Action, Job
from .notify import ObjectEvent
from .state import Ledger, SampleState

log = logging.getLogger("imaxt.watcher")

MARKER = "_COMPLETE"


def emit(event: str, **fields: Any) -> None:
    """One structured log record: ``event`` plus fields (rendered as JSON by the CLI)."""
    log.info(event, extra={"fields": {"event": event, **fields}})


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object per line (``fields`` from :func:`emit`)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname, "logger": record.name}
        doc.update(getattr(record, "fields", None) or {"message": record.getMessage()})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


@dataclass(frozen=True)
class Landed:
    """A sample folder that is complete, with the checksum of its listing."""

    sample: str
    url: str
    checksum: str


def _tiles_listed(fs: Any, folder: str) -> list[str] | None:
    try:
        text = fs.cat_file(f"{folder}/tiles.csv").decode()
        rows = list(csv.DictReader(io.StringIO(text)))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    files = [r.get("file") for r in rows]
    if not files or any(not f for f in files):
        return None
    return [posixpath.normpath(str(f)) for f in files]


def sample_landed(fs: Any, folder: str, listing: dict[str, dict[str, Any]]) -> bool:
    """Whether the sample in ``folder`` is complete; ``listing`` maps relative paths to info."""
    if MARKER in listing:
        return True
    if "acquisition.json" not in listing or "tiles.csv" not in listing:
        return False
    files = _tiles_listed(fs, folder)
    return files is not None and all(f in listing for f in files)


def listing_checksum(listing: dict[str, dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for rel in sorted(listing):
        info = listing[rel]
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        h.update(f"{rel}\0{info.get('size')}\0{stamp}\n".encode())
    return h.hexdigest()


def find_landed(
    bucket_url: str, storage_options: dict[str, Any] | None = None, *, only: Iterable[str] | None = None
) -> list[Landed]:
    """List the landed samples under ``bucket_url`` (optionally only the named ones)."""
    fs, root = url_to_fs(bucket_url, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache()
    protocol = protocols(fs)[0]
    if only is not None:
        folders = [f"{root}/{name}" for name in sorted(set(only))]
    else:
        try:
            folders = [e["name"].rstrip("/") for e in fs.ls(root, detail=True) if e["type"] == "directory"]
        except FileNotFoundError:
            return []
    landed = []
    for folder in folders:
        name = folder.rsplit("/", 1)[-1]
        if not name or name[0] in "_.":
            continue
        try:
            found = fs.find(folder, detail=True)
        except FileNotFoundError:
            continue
        listing = {p[len(folder) + 1 :]: info for p, info in found.items() if p.startswith(folder + "/")}
        if listing and sample_landed(fs, folder, listing):
            url = folder if protocol in ("file", "local") else f"{protocol}://{folder}"
            landed.append(Landed(sample=name, url=url, checksum=listing_checksum(listing)))
    return landed


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Watcher:
    """Poll a bucket (and accept notifications); run ``action`` once per landed sample.

    Parameters
    ----------
    bucket_url : str
        Folder or ``s3://bucket/prefix`` holding one folder per sample.
    action : Action
        Called as ``action(job, cancel)``; raises on failure.
    ledger : Ledger
        Durable state, shared by every watcher of this bucket.
    output_prefix, raw_prefix : str, optional
        Where ``<sample>.zarr`` outputs and raw stores go; default
        ``<bucket_url>/_imaxt/processed`` and ``<bucket_url>/_imaxt/raw``.
    lease_ttl : float
        Seconds a claim stays valid without renewal; renewed every third of it.
    """

    def __init__(
        self,
        bucket_url: str,
        action: Action,
        ledger: Ledger,
        *,
        storage_options: dict[str, Any] | None = None,
        output_prefix: str | None = None,
        raw_prefix: str | None = None,
        owner: str | None = None,
        lease_ttl: float = 300.0,
        poll_interval: float = 30.0,
    ) -> None:
        if lease_ttl <= 0 or poll_interval <= 0:
            raise ValueError(f"lease_ttl and poll_interval must be > 0, got {lease_ttl}, {poll_interval}")
        self.bucket_url = bucket_url.rstrip("/")
        self.action = action
        self.ledger = ledger
        self.storage_options = storage_options or {}
        self.output_prefix = (output_prefix or f"{self.bucket_url}/_imaxt/processed").rstrip("/")
        self.raw_prefix = (raw_prefix or f"{self.bucket_url}/_imaxt/raw").rstrip("/")
        self.owner = owner or default_owner()
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self._wake = threading.Event()
        self._hints: set[str] = set()
        self._lock = threading.Lock()
        _, root = url_to_fs(self.bucket_url, self.storage_options)
        self._bucket, _, prefix = root.strip("/").partition("/")
        self._prefix = f"{prefix}/" if prefix else ""

    # -- notifications -----------------------------------------------------
    def on_events(self, events: list[ObjectEvent]) -> None:
        """Wake the loop for the samples named by bucket-notification events."""
        names = set()
        for ev in events:
            if ev.bucket != self._bucket or not ev.key.startswith(self._prefix):
                continue
            rest = ev.key[len(self._prefix) :]
            if "/" in rest and rest[0] not in "_.":
                names.add(rest.split("/", 1)[0])
        emit("notified", samples=sorted(names), records=len(events))
        if names:
            with self._lock:
                self._hints |= names
            self._wake.set()

    # -- one pass ----------------------------------------------------------
    def job_for(self, landed: Landed, state: SampleState) -> Job:
        return Job(
            sample=landed.sample,
            sample_url=landed.url,
            output_url=f"{self.output_prefix}/{landed.sample}.zarr",
            raw_store_url=f"{self.raw_prefix}/{landed.sample}.zarr",
            attempt=state.attempts,
        )

    def poll_once(self, only: Iterable[str] | None = None) -> list[SampleState]:
        """Observe landed samples and run every one that is due; return the final states."""
        landed = find_landed(self.bucket_url, self.storage_options, only=only)
        finished = []
        for item in landed:
            state = self.ledger.observe(item.sample, item.checksum)
            if not self.ledger.claimable(state):
                continue
            claimed = self.ledger.claim(item.sample, self.owner, ttl=self.lease_ttl)
            if claimed is None:
                continue
            if claimed.input_checksum != item.checksum:  # changed between observe and claim
                self.ledger.finish(item.sample, self.owner, error="inputs changed before start")
                continue
            result = self._run(item, claimed)
            if result is not None:
                finished.append(result)
        return finished

    def _run(self, item: Landed, state: SampleState) -> SampleState | None:
        job = self.job_for(item, state)
        emit("started", sample=job.sample, attempt=state.attempts, owner=self.owner, output=job.output_url)
        cancel = threading.Event()
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self.action(job, cancel)
            except BaseException as exc:  # reported through the ledger, never lost
                errors.append(exc)

        t0 = time.monotonic()
        worker = threading.Thread(target=target, name=f"imaxt-run-{job.sample}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(self.lease_ttl / 3)
            if worker.is_alive() and not self.ledger.renew(job.sample, self.owner, ttl=self.lease_ttl):
                emit("lease_lost", sample=job.sample, owner=self.owner)
                cancel.set()
                worker.join()
                return None
        error = None
        if errors:
            exc = errors[0]
            error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
        final = self.ledger.finish(job.sample, self.owner, error=error)
        emit(
            "finished" if error is None else "run_failed",
            sample=job.sample,
            status=final.status if final else "lease_lost",
            attempt=state.attempts,
            seconds=round(time.monotonic() - t0, 3),
            error=error,
            retry_at=final.next_attempt_at if final and final.status == "pending" else None,
        )
        return final

    # -- loop --------------------------------------------------------------
    def all_settled(self) -> bool:
        """True when every landed sample is done or failed."""
        landed = find_landed(self.bucket_url, self.storage_options)
        for item in landed:
            state, _ = self.ledger.store.get(item.sample)
            if state is None or state.status in ("pending", "running") or state.input_checksum != item.checksum:
                return False
        return True

    def run(self, stop: threading.Event | None = None, *, exit_when_settled: bool = False) -> None:
        """Poll until ``stop`` is set (or, optionally, until every sample is settled)."""
        stop = stop or threading.Event()
        emit("watching", bucket=self.bucket_url, owner=self.owner, output=self.output_prefix)
        while not stop.is_set():
            with self._lock:
                hints, self._hints = self._hints, set()
            self._wake.clear()
            try:
                if hints:
                    self.poll_once(only=hints)
                self.poll_once()
                if exit_when_settled and self.all_settled():
                    emit("settled", bucket=self.bucket_url)
                    return
            except Exception as exc:  # storage hiccups must not kill the watcher
                log.exception("poll failed", extra={"fields": {"event": "poll_error", "error": str(exc)}})
            self._wake.wait(self.poll_interval)
