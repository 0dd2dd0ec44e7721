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

This module holds the loop (notifications, settling, claiming, polling); discovery of landed samples
is :mod:`._watch_discovery`, running a claimed attempt :mod:`._watch_dispatch`, its lease
:mod:`._watch_lease`, the structured events :mod:`._watch_events`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError
from ..io.storage import url_to_fs

# Discovery, claiming (leases) and dispatch live in private modules; every name stays importable from here.
from ._watch_discovery import MARKER as MARKER
from ._watch_discovery import Landed as Landed
from ._watch_discovery import _tiles_listed as _tiles_listed
from ._watch_discovery import find_landed as find_landed
from ._watch_discovery import listing_checksum as listing_checksum
from ._watch_discovery import sample_landed as sample_landed
from ._watch_dispatch import _AttemptRunner
from ._watch_events import _describe as _describe
from ._watch_events import emit as emit
from ._watch_events import log as log
from ._watch_lease import _LeaseKeeper as _LeaseKeeper
from ._watch_lease import default_owner as default_owner
from .launcher import Action, Job
from .live import QuietClock
from .notify import ObjectEvent
from .slides import SlideStep
from .state import Ledger, SampleState, is_permanent, is_transient


class WatcherStopped(ConfigError):
    """The watcher stopped on a permanent error of its own (configuration, bucket, credentials)."""


class Watcher(_AttemptRunner):
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
