"""Structured log events of the watcher (logger ``imaxt.watcher``), shared by its modules."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("imaxt.watcher")


def emit(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """One structured log record: ``event`` plus fields (JSON lines: :class:`~.logs.EventJsonFormatter`)."""
    log.log(level, event, extra={"fields": {"event": event, **fields}})


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
