"""Dispatch for :mod:`.watcher`: running one claimed attempt to its recorded outcome.

The action runs in a thread while :class:`._watch_lease._LeaseKeeper` renews the lease; a lost lease
cancels the attempt (and waits for it to stop), and the outcome is recorded fenced by the lease token,
retried while the lease is still safely ours.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from ._watch_discovery import Landed
from ._watch_events import _describe, emit
from ._watch_lease import _LeaseKeeper
from .launcher import Action, Job
from .state import Ledger, SampleState, is_permanent


class _AttemptRunner:
    """What :class:`.watcher.Watcher` does with a claimed sample: run it, cancel it, record its outcome."""

    owner: str
    ledger: Ledger
    action: Action
    lease_ttl: float

    def job_for(self, landed: Landed, state: SampleState) -> Job:
        """The job of a claimed sample: :meth:`.watcher.Watcher.job_for` (the watcher knows its prefixes)."""
        raise NotImplementedError

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
