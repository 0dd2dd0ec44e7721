"""The ``imaxt`` command line: ``main(argv) -> int``.

Each sub-command is registered by a small ``add_<name>`` function and runs a
library function; failures the user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ImaxtError

Handler = Callable[[argparse.Namespace], int]


def _storage_options(args: argparse.Namespace) -> dict:
    opts = json.loads(args.storage_options) if getattr(args, "storage_options", None) else {}
    if getattr(args, "endpoint_url", None):
        opts["endpoint_url"] = args.endpoint_url
    return opts


def _add_storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    p.add_argument("--storage-options", help="fsspec storage options as JSON")


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic STPT sample with ground truth")
    p.add_argument("out", type=Path)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--rows", type=int, default=3)
    p.add_argument("--cols", type=int, default=3)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", default="synth")
    p.add_argument("--calibration", action="store_true",
                   help="a distortion-calibration acquisition instead (5x5 tiles, 45 %% overlap, 0.1 px stage, "
                        "dense tissue; same optics), for `imaxt calibrate-distortion`")
    p.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from ..synth import SynthParams, calibration_params, synthesize

    if args.calibration:
        params = calibration_params(seed=args.seed, tile_shape=(args.tile_size, args.tile_size))
    else:
        params = SynthParams(sample=args.sample, slices=args.slices, rows=args.rows, cols=args.cols,
                             seed=args.seed, tile_shape=(args.tile_size, args.tile_size))
    synthesize(args.out, params)
    print(f"wrote synthetic sample {args.sample!r} to {args.out} (truth in {args.out / 'truth'})")
    return 0


def add_upload(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upload", help="upload a raw sample folder to a Zarr store (resumable)")
    p.add_argument("raw_dir")
    p.add_argument("dest_url")
    p.add_argument("--workers", type=int, default=8, help="parallel tile uploads")
    p.add_argument("--no-progress", action="store_true")
    _add_storage_args(p)
    p.set_defaults(handler=_upload)


def _upload(args: argparse.Namespace) -> int:
    from ..io.upload import upload

    report = upload(args.raw_dir, args.dest_url, storage_options=_storage_options(args),
                    workers=args.workers, progress=not args.no_progress)
    print(report.summary())
    return 0


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline on an uploaded sample")
    p.add_argument("input_url")
    p.add_argument("--out", dest="output_url", required=True)
    p.add_argument("--config", type=Path)
    p.add_argument("--scheduler", help="address of a running Dask scheduler (default: LocalCluster)")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes")
    p.add_argument("--slices", help="comma-separated slice indices to process")
    _add_storage_args(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..pipeline import run_pipeline

    overrides = {
        "input_url": args.input_url,
        "output_url": args.output_url,
        "cluster.scheduler": args.scheduler,
        "cluster.n_workers": args.workers,
        "slices": [int(s) for s in args.slices.split(",")] if args.slices else None,
    }
    if args.endpoint_url or args.storage_options:
        overrides["storage_options"] = _storage_options(args)
    config = load_config(args.config, **overrides)
    summary = run_pipeline(config)
    print(summary.describe())
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic sample -> upload -> full pipeline, all local")
    p.add_argument("dir", nargs="?", type=Path, default=Path("demo-output"))
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..workflows.demo import run_demo

    print(run_demo(args.dir, n_workers=args.workers).describe())
    return 0


def _service_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    # The watcher and launchers live in their own modules; each exposes add_cli(sub).
    from . import commands

    return commands.ADDERS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imaxt", description="Serial-section microscopy: raw tiles -> stitched, registered OME-Zarr cubes with cells.")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_synth, add_upload, add_run, add_demo, *_service_commands()):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own progress (one line per step) at INFO; Dask's chatter only with -v.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("imaxt_pipeline").setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    if not args.verbose:
        # distributed sets its loggers from dask config when first imported (also in worker processes).
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    handler: Handler = args.handler
    try:
        return handler(args)
    except ImaxtError as exc:
        print(f"imaxt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
