"""Log output of the CLI: text for people, or one JSON object per line for log collectors.

``imaxt --log-format json ...`` (or ``IMAXT_LOG_FORMAT=json``) puts the JSON formatter of
``python-json-logger`` on the root handler, so every logger comes out as JSON: ours
(``imaxt_pipeline.*``, the watcher's ``imaxt.*`` events with their fields at the top level),
Dask's, botocore's, and warnings routed through :mod:`logging`. Keys: ``time``, ``level``,
``logger``, ``message``, then any ``extra`` fields (``exc_info`` for tracebacks).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from ..errors import ConfigError

__all__ = ["FORMATS", "LOG_FORMAT_ENV", "EventJsonFormatter", "configure_logging"]

LOG_FORMAT_ENV = "IMAXT_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class EventJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with our keys; a record's ``fields`` (``watcher.emit``) go top level."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        fields = log_data.pop("fields", None)
        if isinstance(fields, dict):
            log_data.update(fields)


def configure_logging(verbose: int = 0, log_format: str | None = None) -> str:
    """Configure the root logger once for the CLI; return the format used (``text`` or ``json``).

    ``log_format`` defaults to ``$IMAXT_LOG_FORMAT``, else ``text``. Our loggers log at INFO
    (DEBUG with ``-vv``); other libraries at WARNING.

    Raises
    ------
    ConfigError
        For a format other than :data:`FORMATS`.
    """
    fmt = (log_format or os.environ.get(LOG_FORMAT_ENV) or "text").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r} (${LOG_FORMAT_ENV})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventJsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    # like basicConfig: a root that already has handlers (a host application, pytest) keeps them
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    if fmt == "json":
        logging.captureWarnings(True)  # warnings.warn(...) too, as JSON records of logger py.warnings
    logging.getLogger("imaxt_pipeline").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    return fmt
