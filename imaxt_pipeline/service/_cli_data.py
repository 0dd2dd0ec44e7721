"""``imaxt`` sub-commands on data: ``synth``, ``inspect``, ``upload``, ``run``, ``verify``,
``export-spatialdata``, ``open`` and ``demo`` (each an ``add_<name>`` parser and its handler, for :mod:`.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImaxtError
from ..io.urls import check_url
from ._cli_options import (
    SubParsers,
    _add_format,
    _add_storage,
    _output_url,
    _reader_options,
    _scheduler_client,
    _slices,
)


def add_synth(sub: SubParsers) -> None:
    p = sub.add_parser("synth", help="write a synthetic STPT sample with ground truth")
    p.add_argument("out", type=Path)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--rows", type=int, default=3)
    p.add_argument("--cols", type=int, default=3)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", default="synth")
    p.add_argument(
        "--calibration",
        action="store_true",
        help="a distortion-calibration acquisition instead (5x5 tiles, 45 %% overlap, 0.1 px stage, "
        "dense tissue; same optics), for `imaxt calibrate-distortion`",
    )
    p.add_argument(
        "--format",
        choices=("generic", "tissuecyte"),
        default="generic",
        help="raw layout to write: generic (acquisition.json + tiles.csv) or TissueVision TissueCyte (Mosaic_*.txt)",
    )
    p.add_argument("--missing-tiles", type=int, default=0, help="tissuecyte: leave out N tiles (never acquired)")
    p.add_argument("--restart", action="store_true", help="tissuecyte: restart half-way (new acqDate, tile prefix)")
    p.add_argument("--gzip", action="store_true", help="tissuecyte: write .tif.gz tiles")
    p.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from ..synth import SynthParams, calibration_params, synthesize

    if args.calibration:
        params = calibration_params(seed=args.seed, tile_shape=(args.tile_size, args.tile_size))
    else:
        params = SynthParams(
            sample=args.sample,
            slices=args.slices,
            rows=args.rows,
            cols=args.cols,
            seed=args.seed,
            tile_shape=(args.tile_size, args.tile_size),
        )
    if args.format == "tissuecyte":
        return _synth_tissuecyte(args, params)
    if args.missing_tiles or args.restart or args.gzip:
        raise ConfigError("--missing-tiles, --restart and --gzip need --format tissuecyte")
    synthesize(args.out, params)
    print(f"wrote synthetic sample {args.sample!r} to {args.out} (truth in {args.out / 'truth'})")
    return 0


def _synth_tissuecyte(args: argparse.Namespace, params: Any) -> int:
    from ..synth import synthesize_tissuecyte

    try:
        _, missing = synthesize_tissuecyte(
            args.out, params, missing_tiles=args.missing_tiles, restart=args.restart, compress=args.gzip
        )
    except (FileExistsError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    print(
        f"wrote synthetic TissueCyte acquisition {params.sample!r} to {args.out} "
        f"({len(missing)} tile images left out; truth in {args.out / 'truth'})"
    )
    return 0


def add_inspect(sub: SubParsers) -> None:
    p = sub.add_parser("inspect", help="describe a raw acquisition: format, grid, channels, missing tiles, oddities")
    p.add_argument("src")
    _add_format(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _add_storage(p)
    p.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from ..io.formats import describe, open_acquisition

    options = _reader_options(args)
    try:
        sample = open_acquisition(args.src, args.raw_format, storage_options=args.storage_options, **options)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ImaxtError):
            raise
        raise ConfigError(str(exc)) from None
    if args.json:
        out = {
            "source": sample.root,
            "format": sample.format,
            "acquisition": sample.acquisition.model_dump(mode="json"),
            "tile_images": len(sample.records),
            "missing_tiles": sample.missing_tiles,
            "suspicious": sample.notes,
            "details": sample.details,
        }
        print(json.dumps(out, indent=1))
    else:
        print(describe(sample))
    return 0


def add_upload(sub: SubParsers) -> None:
    p = sub.add_parser("upload", help="upload a raw sample folder to a Zarr store (resumable)")
    p.add_argument("raw_dir")
    p.add_argument("dest_url")
    _add_format(p)
    p.add_argument("--workers", type=int, default=8, help="parallel tile uploads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rewrite every tile of an existing store of the same sample (never another sample's)",
    )
    _add_storage(p)
    p.set_defaults(handler=_upload)


def _upload(args: argparse.Namespace) -> int:
    check_url(args.raw_dir, "RAW_DIR")
    _output_url(args.dest_url, "DEST_URL", args.storage_options)
    from ..io.upload import upload

    options = _reader_options(args)
    try:
        report = upload(
            args.raw_dir,
            args.dest_url,
            storage_options=args.storage_options,
            workers=args.workers,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            format=args.raw_format,
            reader_options=options,
        )
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ImaxtError):
            raise
        raise ConfigError(str(exc)) from None
    print(report.summary())
    return 0


def add_run(sub: SubParsers) -> None:
    p = sub.add_parser("run", help="run the pipeline on an uploaded sample")
    p.add_argument("input_url")
    p.add_argument("--out", dest="output_url", required=True)
    p.add_argument("--config", type=Path)
    p.add_argument("--scheduler", help="address of a running Dask scheduler (default: LocalCluster)")
    p.add_argument(
        "--scheduler-timeout",
        type=float,
        help="seconds to wait for --scheduler before giving up (cluster.connect_timeout_s, default 10)",
    )
    p.add_argument("--workers", type=int, help="LocalCluster worker processes")
    p.add_argument("--slices", help="comma-separated slice indices to process")
    _add_storage(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ..pipeline import run_pipeline
    from .launcher import load_run_config

    check_url(args.input_url, "INPUT_URL")
    overrides = {
        "input_url": args.input_url,
        "output_url": _output_url(args.output_url, "--out", args.storage_options),
        "cluster.scheduler": args.scheduler,
        "cluster.connect_timeout_s": args.scheduler_timeout,
        "cluster.n_workers": args.workers,
        "slices": _slices(args.slices),
    }
    config = load_run_config(args.config, storage_options=args.storage_options, **overrides)
    with _scheduler_client(config.cluster) as client:
        summary = run_pipeline(config, client=client)
    print(summary.describe())
    return 0


def add_verify(sub: SubParsers) -> None:
    p = sub.add_parser("verify", help="check every tile of a raw store (or an output store's metadata and owner)")
    p.add_argument("store_url")
    _add_storage(p)
    p.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from ..io.verify import verify_store

    report = verify_store(args.store_url, args.storage_options)
    for line in report.problems:
        print(line)
    if report.ok:
        print(report.summary())
        return 0
    print(f"imaxt verify: {report.summary()}", file=sys.stderr)
    return 1


def add_export_spatialdata(sub: SubParsers) -> None:
    p = sub.add_parser(
        "export-spatialdata",
        help="write the image, labels and cells table as a SpatialData store beside a processed store (needs [export])",
    )
    p.add_argument("store_url", help="processed output store")
    p.add_argument("out_url", help="new SpatialData store (outside the processed store)")
    p.add_argument("--overwrite", action="store_true", help="replace out_url if it exists")
    _add_storage(p)
    p.set_defaults(handler=_export_spatialdata)


def _export_spatialdata(args: argparse.Namespace) -> int:
    from ..io.export import export_spatialdata

    out = export_spatialdata(args.store_url, args.out_url, args.storage_options, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def add_open(sub: SubParsers) -> None:
    p = sub.add_parser("open", help="open a processed store in napari: the cube with its labels (needs [viewer])")
    p.add_argument("store_url", help="processed output store (its root)")
    p.add_argument("--list", action="store_true", help="only print the layers napari would show")
    p.set_defaults(handler=_open)


#: How to get the viewer when napari is missing.
VIEWER_INSTALL = "pip install 'imaxt-pipeline[viewer]' (napari and napari-ome-zarr)"


def _open(args: argparse.Namespace) -> int:
    from ..io.export import viewer_layers

    layers = viewer_layers(args.store_url)
    for layer in layers:
        extra = f", channels {', '.join(layer['channels'])}" if layer.get("channels") else ""
        print(f"{layer['kind']} {layer['name']}: {' '.join('x'.join(map(str, s)) for s in layer['shapes'])}{extra}")
    if args.list:
        return 0
    try:
        import napari
    except ImportError:
        raise ConfigError(f"napari is not installed: {VIEWER_INSTALL}") from None
    viewer = napari.Viewer(title=args.store_url)  # pragma: no cover - needs napari and a display
    viewer.open(args.store_url, plugin="napari-ome-zarr")  # pragma: no cover
    napari.run()  # pragma: no cover
    return 0


def add_demo(sub: SubParsers) -> None:
    p = sub.add_parser("demo", help="synthetic sample -> upload -> full pipeline, all local")
    p.add_argument("dir", nargs="?", type=Path, default=Path("demo-output"))
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..workflows.demo import run_demo

    print(run_demo(args.dir, n_workers=args.workers).describe())
    return 0
