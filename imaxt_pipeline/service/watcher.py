"""The watcher: finds samples that have landed in a bucket and processes each once.

A sample is a folder ``<bucket_url>/<sample>/`` in the raw layout
(``spec/raw-layout.md``). It has *landed* when it holds an ``_COMPLETE`` marker
(taken at once: the uploader writes it last), or when ``acquisition.json``,
``tiles.csv`` and every file ``tiles.csv`` lists are present *and unchanged over
the settle interval*: the listing (names, sizes, ETags or mtimes) must be the same
in two polls at least ``settle_seconds`` apart, so that a ``tiles.csv`` still being
written row by row, or a tile still being written, is "not landed yet" and costs no
attempt. The checksum of that listing is the sample's input checksum, so a sample
whose inputs change is processed again.

A TissueCyte acquisition folder (a root ``Mosaic_*.txt``, no ``acquisition.json``) is taken
section by section while the instrument runs (:mod:`.live`): its input checksum covers only the
sections landed so far, so each newly landed section starts one more run, which uploads the new
section into the same raw store and processes only the sections not processed yet. The sample
is complete (``acquisition_complete`` event, the output's ``complete`` flag) once every section
the root Mosaic file requested has been processed, or once the acquisition ended short of them (an
``_COMPLETE`` file, or ``acquisition_quiet_seconds`` without a new file: one more run marks the
output complete with the sections it has, and the event is a warning naming how many never came).

The loop polls the bucket through fsspec every ``poll_interval`` seconds;
bucket notifications (:mod:`.notify`) wake it early for the samples they name.
Claims, leases, retries and back-off live in :class:`~.state.Ledger`.
Folders whose names start with ``_`` or ``.`` (``_imaxt/`` holds state and
outputs by default) are never samples.

Fencing: each claim carries a lease token; the attempt's renewals and its outcome are
written fenced by it (refused once the lease was taken over). The lease is renewed every
third of its time; when a renewal fails (state unreadable, store down) it is retried, and if
no renewal succeeds within two thirds of the lease time after the last good one, the watcher
assumes the lease lost: it cancels the attempt and waits until it has stopped, a third of the
lease time before any other watcher may claim the sample.

Errors: a configuration or input error of a run (:func:`~.state.is_permanent`) fails its
sample at once (logged at ERROR); other failures are retried with back-off. A permanent
error of the watcher's own (its run configuration, its bucket or credentials) stops it
with :class:`WatcherStopped` (``imaxt watch`` exits 2); transient storage errors while
polling are retried with back-off.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
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

from ..errors import ConfigError
from ..io.storage import protocols, url_to_fs
from .launcher import Action, Job
from .live import QuietClock, is_tissuecyte, landed_sections
from .notify import ObjectEvent
from .slides import SlideStep
from .state import Ledger, SampleState, is_permanent, is_transient

log = logging.getLogger("imaxt.watcher")

MARKER = "_COMPLETE"


class WatcherStopped(ConfigError):
    """The watcher stopped on a permanent error of its own (configuration, bucket, credentials)."""


def emit(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """One structured log record: ``event`` plus fields (JSON lines: :class:`~.logs.EventJsonFormatter`)."""
    log.log(level, event, extra={"fields": {"event": event, **fields}})


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]


@dataclass(frozen=True)
class Landed:
    """A sample folder that is complete, with the checksum of its listing."""

    sample: str
    url: str
    checksum: str
    marker: bool = False
    sections: tuple[int, ...] | None = None
    """TissueCyte acquisitions: the section numbers landed so far (else ``None``: the whole sample)."""
    planned: int | None = None
    """TissueCyte acquisitions: the sections requested (the root ``sections`` key)."""
    ended: str | None = None
    """TissueCyte acquisitions that ended short of ``planned``: why (``marker``, ``quiet``; :mod:`.live`)."""
    action: Action | None = None
    """Run instead of the watcher's action (a landed slide: :mod:`.slides`)."""

    @property
    def acquiring(self) -> bool:
        """Whether sections are still to come (a TissueCyte acquisition not complete yet)."""
        if self.sections is None or self.ended is not None:
            return False
        return self.planned is None or not set(range(1, self.planned + 1)) <= set(self.sections)


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
    bucket_url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    only: Iterable[str] | None = None,
    quiet: QuietClock | None = None,
    quiet_seconds: float = 600.0,
    acquisition_quiet_seconds: float | None = None,
) -> list[Landed]:
    """List the landed samples under ``bucket_url`` (optionally only the named ones).

    TissueCyte folders are listed as soon as one section has landed (:func:`.live.landed_sections`,
    ``quiet``/``quiet_seconds`` for a last section with a missing tile); one whose first section is
    still being written is listed with ``sections=()``: not taken, but keeping the bucket unsettled.
    """
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
        url = folder if protocol in ("file", "local") else f"{protocol}://{folder}"
        if listing and is_tissuecyte(listing):  # an _COMPLETE marker too: it ends the acquisition (.live)
            sections = landed_sections(
                fs,
                folder,
                listing,
                quiet=quiet,
                quiet_seconds=quiet_seconds,
                acquisition_quiet_seconds=acquisition_quiet_seconds,
            )
            if sections is not None and sections.landed:
                checksum = listing_checksum({k: listing[k] for k in sections.files})
                if sections.ended is not None:  # one more run, which marks the output complete
                    checksum = hashlib.sha256(f"{checksum}\0ended".encode()).hexdigest()
                landed.append(
                    Landed(
                        name,
                        url,
                        checksum,
                        sections=sections.landed,
                        planned=sections.planned,
                        ended=sections.ended,
                    )
                )
            elif sections is not None:  # started, no section landed yet: nothing to take, but not settled either
                landed.append(Landed(name, url, "", sections=(), planned=sections.planned))
            continue
        if listing and sample_landed(fs, folder, listing):
            landed.append(Landed(sample=name, url=url, checksum=listing_checksum(listing), marker=MARKER in listing))
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
        Seconds a claim stays valid without renewal; renewed every third of it. An attempt
        whose lease could not be renewed for two thirds of it is cancelled.
    settle_seconds : float
        A sample without ``_COMPLETE`` marker is taken once its listing is unchanged over
        this many seconds (two polls at least this far apart); 0 takes it at once.
    section_quiet_seconds : float
        A TissueCyte section that is not complete (a missing tile), with no later section and
        no trigger file, lands once nothing in its folder changed for this long.
    acquisition_quiet_seconds : float or None
        A TissueCyte acquisition ends (complete with the sections it has) once nothing in its
        folder changed for this long; ``None``: only an ``_COMPLETE`` marker or the requested
        section count ends it.
    slides : SlideStep, optional
        Also register slides landing under ``<bucket_url>/<slides.prefix>/<sample>/`` onto their
        processed sample, each once (:mod:`.slides`); that folder is then never a sample.
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
        settle_seconds: float = 0.0,
        section_quiet_seconds: float = 600.0,
        acquisition_quiet_seconds: float | None = 4 * 3600.0,
        slides: SlideStep | None = None,
    ) -> None:
        if lease_ttl <= 0 or poll_interval <= 0:
            raise ValueError(f"lease_ttl and poll_interval must be > 0, got {lease_ttl}, {poll_interval}")
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds}")
        self.settle_seconds = float(settle_seconds)
        self.section_quiet_seconds = float(section_quiet_seconds)
        self.acquisition_quiet_seconds = acquisition_quiet_seconds
        self.slides = slides  # slides landing under <bucket>/<slides.prefix>/<sample>/ (.slides)
        self._quiet = QuietClock()
        self._seen: dict[str, tuple[str, float]] = {}  # sample -> (listing checksum, first seen, monotonic)
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
        # a landed slide's action writes its own store: log that, not a processed/<key>.zarr it never makes
        output = getattr(landed.action, "out_url", None) or f"{self.output_prefix}/{landed.sample}.zarr"
        return Job(
            sample=landed.sample,
            sample_url=landed.url,
            output_url=output,
            raw_store_url=f"{self.raw_prefix}/{landed.sample}.zarr",
            attempt=state.attempts,
            lease_token=state.lease_token,
            sections=landed.sections,
            acquisition_ended=landed.ended is not None,
        )

    def _find(self, only: Iterable[str] | None = None) -> list[Landed]:
        found = self._find_samples(only)
        if self.slides is None:
            return found
        found = [x for x in found if not self.slides.is_slides_folder(x.sample)]
        return found if only is not None else found + self.slides.find(self)

    def _find_samples(self, only: Iterable[str] | None = None) -> list[Landed]:
        return find_landed(
            self.bucket_url,
            self.storage_options,
            only=only,
            quiet=self._quiet,
            quiet_seconds=self.section_quiet_seconds,
            acquisition_quiet_seconds=self.acquisition_quiet_seconds,
        )

    def settled(self, item: Landed) -> bool:
        """Whether ``item`` may be taken: a marker, or a listing unchanged over ``settle_seconds``."""
        if item.marker or self.settle_seconds == 0:
            return True
        now = time.monotonic()
        seen = self._seen.get(item.sample)
        if seen is None or seen[0] != item.checksum:
            self._seen[item.sample] = (item.checksum, now)
            # Inputs already recorded unchanged (e.g. by a watcher before a restart) have settled.
            state, _ = self.ledger.store.get(item.sample)
            if state is not None and state.input_checksum == item.checksum:
                return True
            emit("settling", sample=item.sample, settle_seconds=self.settle_seconds)
            return False
        return now - seen[1] >= self.settle_seconds

    def poll_once(self, only: Iterable[str] | None = None) -> list[SampleState]:
        """Observe landed samples and run every one that is due; return the final states.

        Raises
        ------
        WatcherStopped
            On a permanent error of the watcher's own storage (bucket, state store, credentials).
        """
        landed = self._find(only)
        finished = []
        for item in landed:
            if item.sections == ():  # an acquisition whose first section is still being written
                continue
            try:
                if not self.settled(item):
                    continue
                state = self.ledger.observe(item.sample, item.checksum)
                if not self.ledger.claimable(state):
                    continue
                claimed_at = time.monotonic()
                claimed = self.ledger.claim(item.sample, self.owner, ttl=self.lease_ttl)
            except Exception as exc:  # one sample's state must not stall the others
                self._storage_error(exc, sample=item.sample)
                continue
            if claimed is None:
                continue
            if claimed.input_checksum != item.checksum:  # changed between observe and claim
                with contextlib.suppress(Exception):
                    self.ledger.finish(
                        item.sample, self.owner, error="inputs changed before start", token=claimed.lease_token
                    )
                continue
            result = self._run(item, claimed, claimed_at)
            if result is not None:
                finished.append(result)
        return finished

    def _storage_error(self, exc: Exception, **fields: Any) -> None:
        """Log a storage error of the watcher's own; stop on a permanent one."""
        if is_permanent(exc):
            emit("stopped", level=logging.ERROR, error=_describe(exc), **fields)
            raise WatcherStopped(f"{self.bucket_url}: {_describe(exc)}") from exc
        emit("storage_error", level=logging.WARNING, error=_describe(exc), transient=is_transient(exc), **fields)

    def _run(self, item: Landed, state: SampleState, claimed_at: float) -> SampleState | None:
        job = self.job_for(item, state)
        token = state.lease_token
        emit(
            "started",
            sample=job.sample,
            attempt=state.attempts,
            lease_token=token,
            owner=self.owner,
            output=job.output_url,
            sections=list(job.sections) if job.sections is not None else None,
        )
        cancel = threading.Event()
        errors: list[BaseException] = []

        def target() -> None:
            try:
                (item.action or self.action)(job, cancel)
            except BaseException as exc:  # reported through the ledger, never lost
                errors.append(exc)

        t0 = time.monotonic()
        lease = _LeaseKeeper(self, job.sample, token, claimed_at)
        worker = threading.Thread(target=target, name=f"imaxt-run-{job.sample}", daemon=True)
        worker.start()
        lease.start()
        try:
            while worker.is_alive():
                worker.join(0.05)
                if worker.is_alive() and lease.lost():
                    self._cancel(job, worker, cancel, lease, state)
                    return None
            error = _describe(errors[0]) if errors else None
            permanent = bool(errors) and is_permanent(errors[0])
            final = self._finish(job, lease, error=error, permanent=permanent)
        finally:
            lease.stop()
        if final is None:
            emit("lease_lost", level=logging.WARNING, sample=job.sample, lease_token=token, reason=lease.reason)
            return None
        if error is None:
            level = logging.INFO
        elif final.status == "failed":
            level = logging.ERROR
        else:
            level = logging.WARNING
        emit(
            "finished" if error is None else "run_failed",
            level=level,
            sample=job.sample,
            status=final.status,
            attempt=state.attempts,
            lease_token=token,
            seconds=round(time.monotonic() - t0, 3),
            error=error,
            permanent=permanent if error is not None else None,
            retry_at=final.next_attempt_at if final.status == "pending" else None,
        )
        if error is None and item.sections is not None and not item.acquiring:
            never = max((item.planned or 0) - len(item.sections), 0)  # planned sections that never came
            emit(
                "acquisition_complete",
                level=logging.WARNING if never else logging.INFO,
                sample=job.sample,
                sections=len(item.sections),
                planned=item.planned,
                never_acquired=never,
                ended=item.ended,
                output=job.output_url,
            )
        return final

    def _cancel(
        self, job: Job, worker: threading.Thread, cancel: threading.Event, lease: _LeaseKeeper, state: SampleState
    ) -> None:
        """Stop the attempt (the action returns once it is dead), then give the lease back if still ours."""
        emit("lease_lost", level=logging.WARNING, sample=job.sample, lease_token=lease.token, reason=lease.reason)
        cancel.set()
        worker.join()
        emit("cancelled", level=logging.WARNING, sample=job.sample, attempt=state.attempts, lease_token=lease.token)
        lease.stop()
        with contextlib.suppress(Exception):  # fenced: refused if another watcher took the sample over
            self.ledger.finish(job.sample, self.owner, error=f"attempt cancelled: {lease.reason}", token=lease.token)

    def _finish(self, job: Job, lease: _LeaseKeeper, *, error: str | None, permanent: bool) -> SampleState | None:
        """Record the outcome, retrying storage errors while the lease is still safely ours."""
        while True:
            try:
                return self.ledger.finish(job.sample, self.owner, error=error, permanent=permanent, token=lease.token)
            except Exception as exc:
                emit("finish_error", level=logging.WARNING, sample=job.sample, error=_describe(exc))
                if lease.lost():
                    lease.reason = f"outcome not recorded: {_describe(exc)}"
                    return None
                time.sleep(lease.retry_s)

    # -- loop --------------------------------------------------------------
    def all_settled(self) -> bool:
        """True when every landed sample is done or failed (and no acquisition is still adding sections)."""
        landed = self._find()
        for item in landed:
            if item.acquiring:
                return False
            state, _ = self.ledger.store.get(item.sample)
            if state is None or state.status in ("pending", "running") or state.input_checksum != item.checksum:
                return False
        return True

    def run(self, stop: threading.Event | None = None, *, exit_when_settled: bool = False) -> None:
        """Poll until ``stop`` is set (or, optionally, until every sample is settled).

        Raises
        ------
        WatcherStopped
            On a permanent error of the watcher's own: its run configuration (checked before the
            first poll), its bucket or its credentials. Transient errors are retried with back-off.
        """
        stop = stop or threading.Event()
        check = getattr(self.action, "check", None)
        if callable(check):
            try:
                check()
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                emit("stopped", level=logging.ERROR, error=_describe(exc))
                raise WatcherStopped(_describe(exc)) from exc
        emit("watching", bucket=self.bucket_url, owner=self.owner, output=self.output_prefix)
        failures = 0
        while not stop.is_set():
            with self._lock:
                hints, self._hints = self._hints, set()
            self._wake.clear()
            delay = self.poll_interval
            try:
                if hints:
                    self.poll_once(only=hints)
                self.poll_once()
                if exit_when_settled and self.all_settled():
                    emit("settled", bucket=self.bucket_url)
                    return
                failures = 0
            except WatcherStopped:
                raise
            except Exception as exc:  # storage hiccups must not kill the watcher
                if is_permanent(exc):
                    emit("stopped", level=logging.ERROR, error=_describe(exc))
                    raise WatcherStopped(f"{self.bucket_url}: {_describe(exc)}") from exc
                failures += 1
                delay = min(self.poll_interval * 2**failures, max(self.poll_interval, 60.0))
                emit(
                    "poll_error",
                    level=logging.WARNING,
                    error=_describe(exc),
                    transient=is_transient(exc),
                    retry_in=round(delay, 3),
                )
            self._wake.wait(delay)


class _LeaseKeeper:
    """Renews one attempt's lease in the background; says when it must be assumed lost.

    The lease is renewed every ``ttl/3`` (fenced by the attempt's token); a failed renewal is
    retried every ``retry_s``. The lease counts as lost when a renewal is refused, or when none
    has succeeded for ``2/3 ttl`` since the last good one (measured from the moment that
    renewal was sent, so conservatively): a third of the lease is left to stop the attempt.
    """

    def __init__(self, watcher: Watcher, sample: str, token: int, claimed_at: float) -> None:
        self.watcher = watcher
        self.sample = sample
        self.token = token
        ttl = watcher.lease_ttl
        self.every = ttl / 3
        self.retry_s = min(1.0, ttl / 10)
        self.safe_for = ttl - ttl / 3
        self._renewed_at = claimed_at
        self._refused = False
        self.reason = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"imaxt-lease-{sample}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def lost(self) -> bool:
        if self._refused:
            self.reason = self.reason or "lease taken over"
            return True
        if time.monotonic() >= self._renewed_at + self.safe_for:
            self.reason = self.reason or f"lease not renewed for {self.safe_for:.3g} s"
            return True
        return False

    def _loop(self) -> None:
        wait = self.every
        while not self._stop.wait(wait):
            sent = time.monotonic()
            try:
                ok = self.watcher.ledger.renew(
                    self.sample, self.watcher.owner, ttl=self.watcher.lease_ttl, token=self.token
                )
            except Exception as exc:
                emit("renew_error", level=logging.WARNING, sample=self.sample, error=_describe(exc))
                wait = self.retry_s
                continue
            if self._stop.is_set():
                return
            if not ok:
                self.reason = "lease taken over (renewal refused)"
                self._refused = True
                return
            self._renewed_at = sent
            wait = self.every
