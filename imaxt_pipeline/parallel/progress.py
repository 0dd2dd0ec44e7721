"""Run Dask work with a progress line every few seconds ("segment: 12/40 blocks, 31 s").

Long steps (fusion, cube, segmentation, catalogue) are otherwise silent for minutes.
:func:`compute_with_progress` submits lazy tasks (or takes futures), logs how many are done every
``every_s`` seconds until all are, and returns their results in order; the first failed task's
error is raised as soon as it is seen, as ``client.gather`` would raise it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["compute_with_progress", "wait_with_progress"]

log = logging.getLogger("imaxt_pipeline.progress")


def wait_with_progress(
    futures: Sequence[Any],
    label: str,
    *,
    unit: str = "tasks",
    every_s: float = 10.0,
    logger: logging.Logger | None = None,
    poll_s: float = 0.25,
) -> None:
    """Block until every future is done, logging ``"<label>: k/n <unit>, t s"`` every ``every_s`` s.

    Raises the exception of the first future seen to have failed.
    """
    out = logger or log
    n, t0 = len(futures), time.monotonic()
    last = t0
    pending = list(futures)
    while pending:
        still = []
        for f in pending:
            if f.status == "error":
                f.result()  # raises the task's own exception
            if not f.done():
                still.append(f)
        pending = still
        now = time.monotonic()
        if pending and now - last >= every_s:
            out.info("%s: %d/%d %s, %.0f s", label, n - len(pending), n, unit, now - t0)
            last = now
        if pending:
            time.sleep(poll_s)
    if n and time.monotonic() - t0 >= every_s:
        out.info("%s: %d/%d %s, %.0f s", label, n, n, unit, time.monotonic() - t0)


def compute_with_progress(
    client: Any,
    tasks: Sequence[Any],
    label: str,
    *,
    unit: str = "tasks",
    every_s: float = 10.0,
    logger: logging.Logger | None = None,
    **compute_kwargs: Any,
) -> list[Any]:
    """``client.gather(client.compute(tasks, **compute_kwargs))`` with progress lines (:func:`wait_with_progress`).

    ``tasks`` may be Dask collections / delayed objects or futures already submitted.
    """
    if not tasks:
        return []
    from distributed import Future

    futures = [t if isinstance(t, Future) else None for t in tasks]
    lazy = [t for t, f in zip(tasks, futures, strict=True) if f is None]
    submitted = iter(client.compute(lazy, **compute_kwargs) if lazy else [])
    futures = [f if f is not None else next(submitted) for f in futures]
    wait_with_progress(futures, label, unit=unit, every_s=every_s, logger=logger)
    return list(client.gather(futures))
