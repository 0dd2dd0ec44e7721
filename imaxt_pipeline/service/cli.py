"""The ``imaxt`` command line: ``main(argv) -> int``.

Each sub-command is registered by a small ``add_<name>`` function and runs a library function.
What sub-commands share is written once here: the storage flags (``--endpoint-url``,
``--storage-options``, resolved by :func:`~imaxt_pipeline.io.storage.resolve_storage_options`
before any handler runs), logging set-up, and error reporting: failures the user can fix
(:class:`~imaxt_pipeline.errors.ImaxtError`) print one line and exit 2.

This module builds the parser and runs a command (:func:`main`); the shared options and their
parsing are :mod:`._cli_options`, the sub-commands live by family in :mod:`._cli_data` (synth,
inspect, upload, run, verify, export-spatialdata, open, demo), :mod:`._cli_service` (watch,
status, submit, process) and :mod:`._cli_calibrate_register` (calibrate-distortion,
register-modality).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

import shtab

from .. import __version__
from ..errors import ImaxtError
from ..io.storage import close_filesystems

# The sub-commands live in private modules by family; every name stays importable from here.
from ._cli_calibrate_register import _calibrate_distortion as _calibrate_distortion
from ._cli_calibrate_register import _register_modality as _register_modality
from ._cli_calibrate_register import add_calibrate_distortion as add_calibrate_distortion
from ._cli_calibrate_register import add_register_modality as add_register_modality
from ._cli_data import VIEWER_INSTALL as VIEWER_INSTALL
from ._cli_data import _demo as _demo
from ._cli_data import _export_spatialdata as _export_spatialdata
from ._cli_data import _inspect as _inspect
from ._cli_data import _open as _open
from ._cli_data import _run as _run
from ._cli_data import _synth as _synth
from ._cli_data import _synth_tissuecyte as _synth_tissuecyte
from ._cli_data import _upload as _upload
from ._cli_data import _verify as _verify
from ._cli_data import add_demo as add_demo
from ._cli_data import add_export_spatialdata as add_export_spatialdata
from ._cli_data import add_inspect as add_inspect
from ._cli_data import add_open as add_open
from ._cli_data import add_run as add_run
from ._cli_data import add_synth as add_synth
from ._cli_data import add_upload as add_upload
from ._cli_data import add_verify as add_verify
from ._cli_options import Handler as Handler
from ._cli_options import SubParsers as SubParsers
from ._cli_options import _action as _action
from ._cli_options import _add_format as _add_format
from ._cli_options import _add_kube as _add_kube
from ._cli_options import _add_run_target as _add_run_target
from ._cli_options import _add_storage as _add_storage
from ._cli_options import _default_raw_store as _default_raw_store
from ._cli_options import _kube_settings as _kube_settings
from ._cli_options import _output_url as _output_url
from ._cli_options import _reader_options as _reader_options
from ._cli_options import _resolve_storage as _resolve_storage
from ._cli_options import _scheduler_client as _scheduler_client
from ._cli_options import _sections as _sections
from ._cli_options import _slices as _slices
from ._cli_options import _state_url as _state_url
from ._cli_service import _process as _process
from ._cli_service import _status as _status
from ._cli_service import _submit as _submit
from ._cli_service import _watch as _watch
from ._cli_service import add_process as add_process
from ._cli_service import add_status as add_status
from ._cli_service import add_submit as add_submit
from ._cli_service import add_watch as add_watch


def _configure_logging(args: argparse.Namespace) -> None:
    # Our own progress (one line per step) at INFO; Dask's chatter only with -v. JSON for every logger
    # with --log-format json (service.logs).
    from .logs import configure_logging

    configure_logging(args.verbose, getattr(args, "log_format", None))
    if not args.verbose:
        # distributed sets its loggers from dask config when first imported (also in worker processes).
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if getattr(args, "json_events", False):
        # Service events (imaxt.watcher) as one JSON object per line, for log collectors: the same
        # python-json-logger formatter as --log-format json, the event's fields at the top level.
        from .logs import EventJsonFormatter

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EventJsonFormatter())
        logger = logging.getLogger("imaxt")
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


COMMANDS: tuple[Callable[[SubParsers], None], ...] = (
    add_synth,
    add_upload,
    add_inspect,
    add_run,
    add_verify,
    add_export_spatialdata,
    add_open,
    add_demo,
    add_watch,
    add_status,
    add_submit,
    add_process,
    add_calibrate_distortion,
    add_register_modality,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imaxt",
        description="Serial-section microscopy: raw tiles -> stitched, registered OME-Zarr cubes with cells.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text, or JSON for every logger (env IMAXT_LOG_FORMAT)",
    )
    shtab.add_argument_to(parser, "--print-completion", help="print a shell completion script (bash, zsh, tcsh)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        _resolve_storage(args)
        _configure_logging(args)
        return handler(args)
    except ImaxtError as exc:
        message = " ".join(str(exc).split())  # one line, whatever a library put in the message
        print(f"imaxt {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        close_filesystems()  # S3 sessions closed here, not reported as "Unclosed" at exit


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
