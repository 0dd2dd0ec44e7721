"""The ``imaxt`` command line: ``main(argv) -> int``.

Each sub-command is registered by a small ``add_<name>`` function and runs a library function.
What sub-commands share is written once here: the storage flags (``--endpoint-url``,
``--storage-options``, resolved by :func:`~imaxt_pipeline.io.storage.resolve_storage_options`
before any handler runs), logging set-up, and error reporting: failures the user can fix
(:class:`~imaxt_pipeline.errors.ImaxtError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import shtab

from .. import __version__
from ..errors import ConfigError, ImaxtError
from ..io.storage import ENDPOINT_ENV, close_filesystems, resolve_storage_options
from ..io.urls import check_url

Handler = Callable[[argparse.Namespace], int]
SubParsers = Any  # argparse._SubParsersAction: private, and generic in typeshed


# -- shared options ----------------------------------------------------------
def _add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help=f"S3-compatible endpoint, e.g. http://127.0.0.1:9000 (env {ENDPOINT_ENV})")
    p.add_argument("--storage-options", help="fsspec storage options as a JSON object")


def _resolve_storage(args: argparse.Namespace) -> None:
    """Replace the raw storage flags by the resolved options, so handlers cannot read them another way."""
    if hasattr(args, "endpoint_url"):
        args.storage_options = resolve_storage_options(options=args.storage_options, endpoint_url=args.endpoint_url)
        del args.endpoint_url


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


def _slices(text: str | None) -> list[int] | None:
    """``--slices 0,1,5`` as a list of non-negative ints (one-line error otherwise)."""
    if not text:
        return None
    try:
        slices = [int(s) for s in text.split(",")]
    except ValueError:
        slices = []
    if not slices or any(s < 0 for s in slices):
        raise ConfigError(f"--slices: expected comma-separated slice indices such as 0,1,5, got {text!r}")
    return slices


def _output_url(url: str, flag: str = "--out", storage: dict[str, Any] | None = None, *, remote: bool = True) -> str:
    """``url`` checked as a destination: a valid URL, and not an existing regular file (local, or remote
    unless ``remote`` is false: a dry run prints objects for a cluster whose credentials this machine
    may not hold, and an unreachable endpoint costs seconds of retries)."""
    check_url(url, flag)
    if "://" not in url and "::" not in url:
        is_file = Path(url).is_file()
    elif not remote:
        is_file = False
    else:
        from ..io.storage import url_to_fs

        try:
            fs, path = url_to_fs(url, storage)
            is_file = bool(fs.isfile(path.rstrip("/")))
        except (OSError, ValueError):  # unreachable or refused: the command itself will say so
            is_file = False
    if is_file:
        raise ConfigError(f"{flag}: {url} is an existing file, not a store (give a new or existing .zarr folder)")
    return url


def _scheduler_client(cluster: Any) -> contextlib.AbstractContextManager[Any]:
    """A client on ``cluster.scheduler`` (one-line error after ``cluster.connect_timeout_s``), else nothing:
    connected before anything is written."""
    if not cluster.scheduler:
        return contextlib.nullcontext()
    from ..pipeline import dask_client

    return dask_client(cluster)


def _state_url(args: argparse.Namespace) -> str:
    return args.state or f"{args.bucket_url.rstrip('/')}/_imaxt/state"


def _default_raw_store(output_url: str) -> str:
    base = output_url.rstrip("/")
    return (base[:-5] if base.endswith(".zarr") else base) + ".raw.zarr"


def _add_kube(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kubernetes backend (flags override --kube-settings)")
    g.add_argument("--kube-settings", help="YAML file of KubeSettings fields (resources, GPU group...)")
    g.add_argument("--image", default=os.environ.get("IMAXT_IMAGE"))
    g.add_argument("--gpu-image", default=os.environ.get("IMAXT_GPU_IMAGE"))
    g.add_argument("--namespace", default=os.environ.get("IMAXT_NAMESPACE"))
    g.add_argument("--k8s-workers", type=int, help="CPU Dask workers")
    g.add_argument("--gpu-workers", type=int, help="GPU Dask workers (nvidia.com/gpu)")
    g.add_argument("--s3-secret", help="Secret with AWS_ACCESS_KEY_ID/SECRET (default imaxt-s3)")
    g.add_argument(
        "--credentials-secret",
        help="Secret holding the credentials given as storage options, one key per option "
        "(key, secret, client_kwargs.aws_session_token...); they then never reach the ConfigMap",
    )
    g.add_argument("--service-account")


def _kube_settings(args: argparse.Namespace, storage: dict[str, Any]) -> Any:
    import yaml

    from .k8s import KubeSettings

    fields: dict[str, Any] = {}
    if args.kube_settings:
        with open(args.kube_settings) as fh:
            fields = yaml.safe_load(fh) or {}
        known = {f.name for f in dataclasses.fields(KubeSettings)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"{args.kube_settings}: unknown keys {unknown}")
    flags = {
        "image": args.image,
        "gpu_image": args.gpu_image,
        "namespace": args.namespace,
        "workers": args.k8s_workers,
        "gpu_workers": args.gpu_workers,
        "s3_secret": args.s3_secret,
        "credentials_secret": args.credentials_secret,
        "service_account": args.service_account,
        "endpoint_url": storage.get("endpoint_url"),
    }
    fields.update({k: v for k, v in flags.items() if v is not None})
    return KubeSettings(**fields)


def _action(args: argparse.Namespace, storage: dict[str, Any]) -> Any:
    from .launcher import CommandAction, PipelineAction

    if getattr(args, "command_template", None):
        return CommandAction(args.command_template)
    try:
        return PipelineAction(
            args.backend,
            config_path=args.config,
            storage_options=storage,
            scheduler=args.scheduler,
            n_workers=args.workers,
            kube=_kube_settings(args, storage),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _add_run_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "dask", "kubernetes"), default="local")
    p.add_argument("--config", help="run configuration YAML")
    p.add_argument(
        "--scheduler",
        default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
        help="Dask scheduler address for --backend dask",
    )
    p.add_argument("--workers", type=int, help="LocalCluster workers for --backend local")


# -- data: synth, upload, run, demo -------------------------------------------
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


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", dest="raw_format", help="raw layout (generic, tissuecyte); detected when omitted")
    p.add_argument("--pixel-size-um", type=float, help="tissuecyte: pixel size in µm, overriding xres")
    p.add_argument("--tile-orientation", help="tissuecyte: identity (default), flipud, fliplr, rot90, rot180, ...")


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """The reader options the format flags name; unknown formats and options are configuration errors."""
    from ..io.formats import get_reader

    options = {
        key: value
        for key, value in (("pixel_size_um", args.pixel_size_um), ("orientation", args.tile_orientation))
        if value is not None
    }
    if args.raw_format is not None:
        try:
            get_reader(args.raw_format).check_options(options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc)) from None
    return options


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


# -- open ----------------------------------------------------------------------
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


# -- service: watch, status, submit, process ----------------------------------
def add_watch(sub: SubParsers) -> None:
    p = sub.add_parser("watch", help="process every sample that lands in a bucket, exactly once")
    p.add_argument("bucket_url", help="folder or s3://bucket/prefix with one folder per sample")
    p.add_argument("--output", help="output prefix (default BUCKET/_imaxt/processed)")
    p.add_argument("--raw-prefix", help="raw Zarr prefix (default BUCKET/_imaxt/raw)")
    p.add_argument("--state", help="state folder or s3:// prefix (default BUCKET/_imaxt/state)")
    p.add_argument(
        "--command",
        dest="command_template",
        help="run this command per sample instead of the pipeline; fields {sample} "
        "{sample_url} {output_url} {raw_store_url} {attempt}",
    )
    _add_run_target(p)
    _add_kube(p)
    p.add_argument("--poll", type=float, default=30.0, help="seconds between bucket polls")
    p.add_argument("--lease-ttl", type=float, default=300.0, help="seconds a claim lives unrenewed")
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds a sample without _COMPLETE marker must stay unchanged (sizes, mtimes/ETags) before it is taken",
    )
    p.add_argument(
        "--section-quiet",
        type=float,
        default=600.0,
        help="TissueCyte: seconds an incomplete last section must stay unchanged before it counts as acquired",
    )
    p.add_argument(
        "--acquisition-quiet",
        type=float,
        default=4 * 3600.0,
        help="TissueCyte: seconds without any new file after which an acquisition that stopped short of its "
        "planned sections is complete with the sections it has (also ended by an _COMPLETE file); default 4 h",
    )
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--backoff", type=float, default=60.0, help="first retry delay, doubled each time")
    p.add_argument("--notify-port", type=int, help="serve POST /events for S3/MinIO notifications")
    p.add_argument("--notify-host", default="0.0.0.0")
    p.add_argument(
        "--notify-token",
        default=os.environ.get("IMAXT_NOTIFY_TOKEN"),
        help="required bearer token for notifications (env IMAXT_NOTIFY_TOKEN)",
    )
    p.add_argument("--exit-when-settled", action="store_true", help="exit once every landed sample is done or failed")
    p.add_argument(
        "--slides-prefix",
        default="slides",
        help="folder of the bucket whose SAMPLE/ subfolders receive slides (CZI, TIFF, IMC MCD/TXT) registered "
        "onto that sample's processed store once it is done (register-modality); '' turns this off",
    )
    p.add_argument("--owner", help="lease owner id (default host:pid:random)")
    _add_storage(p)
    p.set_defaults(handler=_watch, json_events=True)


def _watch(args: argparse.Namespace) -> int:
    from .notify import NotificationServer
    from .slides import SlideStep
    from .state import Ledger, RetryPolicy, open_state_store
    from .watcher import Watcher

    storage = args.storage_options
    ledger = Ledger(
        open_state_store(_state_url(args), storage),
        retry=RetryPolicy(max_attempts=args.max_attempts, backoff_s=args.backoff),
    )
    watcher = Watcher(
        args.bucket_url,
        _action(args, storage),
        ledger,
        storage_options=storage,
        output_prefix=args.output,
        raw_prefix=args.raw_prefix,
        owner=args.owner,
        lease_ttl=args.lease_ttl,
        poll_interval=args.poll,
        settle_seconds=args.settle,
        section_quiet_seconds=args.section_quiet,
        acquisition_quiet_seconds=args.acquisition_quiet,
        slides=SlideStep(args.slides_prefix) if args.slides_prefix else None,
    )
    server = None
    if args.notify_port is not None:
        server = NotificationServer(
            watcher.on_events, host=args.notify_host, port=args.notify_port, token=args.notify_token
        ).start()
        print(f"notifications: POST {server.url}/events", file=sys.stderr, flush=True)
    try:
        watcher.run(threading.Event(), exit_when_settled=args.exit_when_settled)
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()
    return 0


def add_status(sub: SubParsers) -> None:
    p = sub.add_parser("status", help="list samples and their processing states")
    p.add_argument("bucket_url")
    p.add_argument("--state", help="state folder or s3:// prefix (default BUCKET/_imaxt/state)")
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
    _add_storage(p)
    p.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from .state import open_state_store

    states = open_state_store(_state_url(args), args.storage_options).all()
    if args.json:
        for st in states:
            print(json.dumps(dataclasses.asdict(st), sort_keys=True))
        return 0
    now = time.time()
    print(f"{'SAMPLE':24} {'STATUS':8} {'ATTEMPTS':>8}  DETAIL")
    for st in states:
        detail = st.last_error or ""
        if st.status == "running":
            detail = f"lease {st.lease_owner} expires in {st.lease_expires - now:.0f}s"
        elif st.status == "pending" and st.next_attempt_at > now:
            detail = f"retry in {st.next_attempt_at - now:.0f}s; {detail}"
        print(f"{st.sample:24} {st.status:8} {st.attempts:>8}  {detail[:100]}")
    return 0


def add_submit(sub: SubParsers) -> None:
    p = sub.add_parser("submit", help="process one raw sample now on a backend (or print k8s YAML)")
    p.add_argument("raw_url", help="raw sample folder")
    p.add_argument("--out", dest="output_url", required=True, help="output OME-Zarr store")
    p.add_argument("--raw-store", help="raw Zarr store (default: OUT with .raw.zarr)")
    p.add_argument("--dry-run", action="store_true", help="print what would run (k8s objects as YAML)")
    _add_run_target(p)
    _add_kube(p)
    _add_storage(p)
    p.set_defaults(handler=_submit)


def _submit(args: argparse.Namespace) -> int:
    from .k8s import to_yaml
    from .launcher import Job

    storage = args.storage_options
    check_url(args.raw_url, "RAW_URL")
    _output_url(args.output_url, "--out", storage, remote=not args.dry_run)
    if args.raw_store:
        _output_url(args.raw_store, "--raw-store", storage, remote=not args.dry_run)
    action = _action(args, storage)
    sample = args.raw_url.rstrip("/").rsplit("/", 1)[-1]
    job = Job(
        sample=sample,
        sample_url=args.raw_url,
        output_url=args.output_url,
        raw_store_url=args.raw_store or _default_raw_store(args.output_url),
    )
    if args.dry_run:
        if args.backend == "kubernetes":
            print(to_yaml(action.objects(job)), end="")
        else:
            print(
                f"# backend {args.backend}: upload {job.sample_url} -> {job.raw_store_url}; "
                f"pipeline -> {job.output_url}"
            )
        return 0
    action(job, threading.Event())
    print(f"{sample}: done -> {job.output_url}")
    return 0


def add_process(sub: SubParsers) -> None:
    p = sub.add_parser("process", help="upload a raw sample and run the pipeline (a job's entry point)")
    p.add_argument("raw_url")
    p.add_argument("--out", dest="output_url", required=True)
    p.add_argument("--raw-store", help="raw Zarr store (default: OUT with .raw.zarr)")
    p.add_argument("--config")
    p.add_argument(
        "--scheduler",
        default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
        help="Dask scheduler (default $DASK_SCHEDULER_ADDRESS, else a LocalCluster)",
    )
    p.add_argument("--workers", type=int)
    p.add_argument(
        "--sections",
        help="TissueCyte acquisition still running: the section numbers landed so far (1-based, 1,2,3); "
        "only those are uploaded, only the ones not processed yet are run",
    )
    p.add_argument(
        "--acquisition-ended",
        action="store_true",
        help="with --sections: the acquisition ended short of its plan; mark the output complete with them",
    )
    _add_storage(p)
    p.set_defaults(handler=_process)


def _sections(text: str | None) -> list[int] | None:
    """``--sections 1,2,3`` as 1-based section numbers (one-line error otherwise)."""
    if text is None:
        return None
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise ConfigError(f"--sections: expected comma-separated section numbers from 1 such as 1,2,3, got {text!r}")
    return numbers


def _process(args: argparse.Namespace) -> int:
    from ..pipeline import STEP_SCOPE
    from .gpu import step_scope_from_env
    from .launcher import load_run_config, process_sample

    gpu_scope = step_scope_from_env()  # a Kubernetes job with a GPU group holds it for segmentation only
    if gpu_scope is not None:
        STEP_SCOPE.set(gpu_scope)

    check_url(args.raw_url, "RAW_URL")
    sections = _sections(args.sections)
    if args.acquisition_ended and sections is None:
        raise ConfigError("--acquisition-ended needs --sections (the sections the acquisition has)")
    storage = args.storage_options
    out = _output_url(args.output_url, "--out", storage)
    raw_store = _output_url(args.raw_store or _default_raw_store(out), "--raw-store", storage)
    config = load_run_config(
        args.config,
        storage_options=args.storage_options,
        input_url=raw_store,
        output_url=args.output_url,
        **{"cluster.scheduler": args.scheduler},
    )
    with _scheduler_client(config.cluster) as client:
        summary = process_sample(
            args.raw_url,
            raw_store,
            args.output_url,
            config_path=args.config,
            storage_options=args.storage_options,
            scheduler=args.scheduler,
            n_workers=args.workers,
            client=client,
            sections=sections,
            acquisition_ended=args.acquisition_ended,
        )
    print(summary.describe() if summary is not None else f"sections {args.sections}: nothing new to process")
    return 0


# -- calibrate-distortion ----------------------------------------------------
def add_calibrate_distortion(sub: SubParsers) -> None:
    p = sub.add_parser(
        "calibrate-distortion",
        help="dark, flat, trim and distortion (± sigma) from a high-overlap calibration acquisition",
    )
    p.add_argument("raw_dir", help="raw sample folder (spec/raw-layout.md) of the calibration acquisition")
    p.add_argument("out", help="calibration file to write (.npz, read by the calibrate step)")
    p.add_argument(
        "--stage-sigma-px",
        type=float,
        required=True,
        help="stated stage accuracy, px (1 sigma per axis): the ruler of the magnification",
    )
    p.add_argument("--diagonal", action="store_true", help="also match diagonal neighbours")
    p.add_argument("--max-shift", type=int, default=15, help="search radius around the stage prediction, px")
    p.add_argument(
        "--block",
        type=int,
        default=16,
        help="block size of the correspondences, px (block averaging biases mag by ~1.3 k (B / W)**2)",
    )
    p.add_argument("--max-tiles", type=int, default=64, help="tiles sampled for the dark/flat estimate")
    p.add_argument(
        "--distortion-only",
        action="store_true",
        help="write only the distortion (each sample's calibrate step then estimates dark and flat)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing calibration file at OUT")
    _add_storage(p)
    p.set_defaults(handler=_calibrate_distortion)


def _calibrate_distortion(args: argparse.Namespace) -> int:
    from ..errors import InputError

    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(out, f"output folder {out.parent} does not exist")
    if not args.stage_sigma_px > 0:
        raise ConfigError(f"--stage-sigma-px must be > 0, got {args.stage_sigma_px}")
    from ..io.calibration_file import write_calibration_file
    from ..workflows.calibration_acquisition import calibrate_from_acquisition

    cal, fit = calibrate_from_acquisition(
        args.raw_dir,
        storage_options=args.storage_options,
        stage_sigma_px=args.stage_sigma_px,
        diagonal=args.diagonal,
        max_shift=args.max_shift,
        block_size=args.block,
        max_tiles=args.max_tiles,
    )
    write_calibration_file(out, cal, fit, distortion_only=args.distortion_only, overwrite=args.overwrite)
    if not args.distortion_only:
        print(
            f"dark {[round(float(d), 2) for d in cal.dark]} ({cal.source.get('dark')}), "
            f"trim {tuple(cal.trim.as_dict().values())} (top, bottom, left, right), flat from the data"
        )
    print(fit.describe())
    print(f"wrote {out}")
    return 0


# -- register-modality --------------------------------------------------------
def add_register_modality(sub: SubParsers) -> None:
    p = sub.add_parser(
        "register-modality", help="register a slide-scanner slide or IMC acquisition onto an STPT cube by its beads"
    )
    p.add_argument(
        "slide",
        help="slide file: .czi, IMC .txt/.mcd, OME-TIFF or plain TIFF (with --pixel-size-um); "
        "with --refresh, a slide store written by this command",
    )
    p.add_argument("--reference", help="processed STPT store (cube, beads, register); required unless --refresh")
    p.add_argument(
        "--out",
        help="the slide's OME-Zarr store to write; a file of several scenes/ROIs writes one store per section, "
        "OUT with -sceneK / -roiK before .zarr (slide.zarr -> slide-scene0.zarr, slide-scene1.zarr, ...)",
    )
    p.add_argument("--via", help="registered Axioscan store to chain an IMC acquisition through")
    p.add_argument("--scene", type=int, help="CZI scene (0-based): register only this one (into OUT)")
    p.add_argument("--roi", type=int, help="MCD acquisition (0-based): register only this one (into OUT)")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="SLIDE is a registered slide store: follow its reference cube if re-made (moved by the change in "
        "padding/offset) or mark the mapping stale",
    )
    p.add_argument("--pixel-size-um", type=float, help="slide pixel size (a plain TIFF records none)")
    _add_storage(p)
    p.set_defaults(handler=_register_modality)


def _register_modality(args: argparse.Namespace) -> int:
    from ..workflows import federate

    if args.refresh:
        state, fed = federate.refresh_mapping(args.slide, storage_options=args.storage_options)
        print(federate.describe_refresh(args.slide, state, fed))
        return 1 if state == "stale" else 0
    if not args.reference or not args.out:
        raise ConfigError("register-modality: --reference and --out are required (unless --refresh)")
    outcomes = federate.register_sections(
        args.slide,
        args.reference,
        args.out,
        via=args.via,
        scene=args.scene,
        roi=args.roi,
        pixel_size_um=args.pixel_size_um,
        storage_options=args.storage_options,
    )
    for o in outcomes:
        if o.error is None:
            print(federate.describe_outcome(args.slide, o))
    error = federate.sections_error(args.slide, outcomes)
    if error is not None:
        raise error
    return 0


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
