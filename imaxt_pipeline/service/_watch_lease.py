"""Claiming for :mod:`.watcher`: the owner name of a watcher and the keeper of one attempt's lease.

The lease is renewed every third of its time, fenced by the attempt's token; when renewals fail for
two thirds of it the attempt is assumed to have lost it (the watcher then cancels it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Protocol

from ._watch_events import _describe, emit
from .state import Ledger


class _LeaseHolder(Protocol):
    """What the keeper needs of its watcher (:class:`.watcher.Watcher`)."""

    ledger: Ledger
    owner: str
    lease_ttl: float


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _LeaseKeeper:
    """Renews one attempt's lease in the background; says when it must be assumed lost.

    The lease is renewed every ``ttl/3`` (fenced by the attempt's token); a failed renewal is
    retried every ``retry_s``. The lease counts as lost when a renewal is refused, or when none
    has succeeded for ``2/3 ttl`` since the last good one (measured from the moment that
    renewal was sent, so conservatively): a third of the lease is left to stop the attempt.
    """

    def __init__(self, watcher: _LeaseHolder, sample: str, token: int, claimed_at: float) -> None:
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
