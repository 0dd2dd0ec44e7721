"""Service sub-commands: ``watch``, ``status``, ``submit``, ``process`` and ``calibrate-distortion``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from ..errors import ConfigError

Handler = Any


def _storage_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = json.loads(args.storage_options) if getattr(args, "storage_options", None) else {}
    endpoint = getattr(args, "endpoint_url", None) or os.environ.get("IMAXT_S3_ENDPOINT")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def _add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (env IMAXT_S3_ENDPOINT)")
    p.add_argument("--storage-options", help="fsspec storage options as JSON")


def _state_url(args: argparse.Namespace) -> str:
    return args.state or f"{args.bucket_url.rstrip('/')}/_imaxt/state"


def _add_kube(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kubernetes backend (flags override --kube-settings)")
    g.add_argument("--kube-settings", help="YAML file of KubeSettings fields (resources, GPU group...)")
    g.add_argument("--image", default=os.environ.get("IMAXT_IMAGE"))
    g.add_argument("--gpu-image", default=os.environ.get("IMAXT_GPU_IMAGE"))
    g.add_argument("--namespace", default=os.environ.get("IMAXT_NAMESPACE"))
    g.add_argument("--k8s-workers", type=int, help="CPU Dask workers")
    g.add_argument("--gpu-workers", type=int, help="GPU Dask workers (nvidia.com/gpu)")
    g.add_argument("--s3-secret", help="Secret with AWS_ACCESS_KEY_ID/SECRET (default imaxt-s3)")
    g.add_argument("--service-account")


def _kube_settings(args: argparse.Namespace, storage: dict[str, Any]) -> Any:
    import dataclasses

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
    flags = {"image": args.image, "gpu_image": args.gpu_image, "namespace": args.namespace,
             "workers": args.k8s_workers, "gpu_workers": args.gpu_workers,
             "s3_secret": args.s3_secret, "service_account": args.service_account,
             "endpoint_url": storage.get("endpoint_url")}
    fields.update({k: v for k, v in flags.items() if v is not None})
    return KubeSettings(**fields)


def _action(args: argparse.Namespace, storage: dict[str, Any]) -> Any:
    from .launcher import CommandAction, PipelineAction

    if getattr(args, "command_template", None):
        return CommandAction(args.command_template)
    try:
        return PipelineAction(args.backend, config_path=args.config, storage_options=storage,
                              scheduler=args.scheduler, n_workers=args.workers,
                              kube=_kube_settings(args, storage))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _add_run_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "dask", "kubernetes"), default="local")
    p.add_argument("--config", help="run configuration YAML")
    p.add_argument("--scheduler", default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
                   help="Dask scheduler address for --backend dask")
    p.add_argument("--workers", type=int, help="LocalCluster workers for --backend local")


# -- watch -------------------------------------------------------------------
def add_watch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="process every sample that lands in a bucket, exactly once")
    p.add_argument("bucket_url", help="folder or s3://bucket/prefix with one folder per sample")
    p.add_argument("--output", help="output prefix (default BUCKET/_imaxt/processed)")
    p.add_argument("--raw-prefix", help="raw Zarr prefix (default BUCKET/_imaxt/raw)")
    p.add_argument("--state", help="state folder or s3:// prefix (default BUCKET/_imaxt/state)")
    p.add_argument("--command", dest="command_template",
                   help="run this command per sample instead of the pipeline; fields {sample} "
                        "{sample_url} {output_url} {raw_store_url} {attempt}")
    _add_run_target(p)
    _add_kube(p)
    p.add_argument("--poll", type=float, default=30.0, help="seconds between bucket polls")
    p.add_argument("--lease-ttl", type=float, default=300.0, help="seconds a claim lives unrenewed")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--backoff", type=float, default=60.0, help="first retry delay, doubled each time")
    p.add_argument("--notify-port", type=int, help="serve POST /events for S3/MinIO notifications")
    p.add_argument("--notify-host", default="0.0.0.0")
    p.add_argument("--notify-token", default=os.environ.get("IMAXT_NOTIFY_TOKEN"),
                   help="required bearer token for notifications (env IMAXT_NOTIFY_TOKEN)")
    p.add_argument("--exit-when-settled", action="store_true",
                   help="exit once every landed sample is done or failed")
    p.add_argument("--owner", help="lease owner id (default host:pid:random)")
    _add_storage(p)
    p.set_defaults(handler=_watch)


def _json_logging() -> None:
    from .watcher import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("imaxt")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _watch(args: argparse.Namespace) -> int:
    from .notify import NotificationServer
    from .state import Ledger, RetryPolicy, open_state_store
    from .watcher import Watcher

    _json_logging()
    storage = _storage_options(args)
    ledger = Ledger(open_state_store(_state_url(args), storage),
                    retry=RetryPolicy(max_attempts=args.max_attempts, backoff_s=args.backoff))
    watcher = Watcher(args.bucket_url, _action(args, storage), ledger, storage_options=storage,
                      output_prefix=args.output, raw_prefix=args.raw_prefix, owner=args.owner,
                      lease_ttl=args.lease_ttl, poll_interval=args.poll)
    server = None
    if args.notify_port is not None:
        server = NotificationServer(watcher.on_events, host=args.notify_host, port=args.notify_port,
                                    token=args.notify_token).start()
        print(f"notifications: POST {server.url}/events", file=sys.stderr, flush=True)
    try:
        watcher.run(threading.Event(), exit_when_settled=args.exit_when_settled)
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()
    return 0


# -- status ------------------------------------------------------------------
def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="list samples and their processing states")
    p.add_argument("bucket_url")
    p.add_argument("--state", help="state folder or s3:// prefix (default BUCKET/_imaxt/state)")
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
    _add_storage(p)
    p.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    import dataclasses

    from .state import open_state_store

    states = open_state_store(_state_url(args), _storage_options(args)).all()
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


# -- submit / process --------------------------------------------------------
def add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="process one raw sample now on a backend (or print k8s YAML)")
    p.add_argument("raw_url", help="raw sample folder")
    p.add_argument("--out", dest="output_url", required=True, help="output OME-Zarr store")
    p.add_argument("--raw-store", help="raw Zarr store (default: OUT with .raw.zarr)")
    p.add_argument("--dry-run", action="store_true", help="print what would run (k8s objects as YAML)")
    _add_run_target(p)
    _add_kube(p)
    _add_storage(p)
    p.set_defaults(handler=_submit)


def _default_raw_store(output_url: str) -> str:
    base = output_url.rstrip("/")
    return (base[:-5] if base.endswith(".zarr") else base) + ".raw.zarr"


def _submit(args: argparse.Namespace) -> int:
    from .k8s import to_yaml
    from .launcher import Job

    storage = _storage_options(args)
    action = _action(args, storage)
    sample = args.raw_url.rstrip("/").rsplit("/", 1)[-1]
    job = Job(sample=sample, sample_url=args.raw_url, output_url=args.output_url,
              raw_store_url=args.raw_store or _default_raw_store(args.output_url))
    if args.dry_run:
        if args.backend == "kubernetes":
            print(to_yaml(action.objects(job)), end="")
        else:
            print(f"# backend {args.backend}: upload {job.sample_url} -> {job.raw_store_url}; "
                  f"pipeline -> {job.output_url}")
        return 0
    action(job, threading.Event())
    print(f"{sample}: done -> {job.output_url}")
    return 0


def add_process(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("process", help="upload a raw sample and run the pipeline (a job's entry point)")
    p.add_argument("raw_url")
    p.add_argument("--out", dest="output_url", required=True)
    p.add_argument("--raw-store", help="raw Zarr store (default: OUT with .raw.zarr)")
    p.add_argument("--config")
    p.add_argument("--scheduler", default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
                   help="Dask scheduler (default $DASK_SCHEDULER_ADDRESS, else a LocalCluster)")
    p.add_argument("--workers", type=int)
    _add_storage(p)
    p.set_defaults(handler=_process)


def _process(args: argparse.Namespace) -> int:
    from .launcher import process_sample

    summary = process_sample(args.raw_url, args.raw_store or _default_raw_store(args.output_url),
                             args.output_url, config_path=args.config,
                             storage_options=_storage_options(args), scheduler=args.scheduler,
                             n_workers=args.workers)
    print(summary.describe())
    return 0


# -- calibrate-distortion ----------------------------------------------------
def add_calibrate_distortion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-distortion",
                       help="dark, flat, trim and distortion (± sigma) from a high-overlap calibration acquisition")
    p.add_argument("raw_dir", help="raw sample folder (spec/raw-layout.md) of the calibration acquisition")
    p.add_argument("out", help="calibration file to write (.npz, read by the calibrate step)")
    p.add_argument("--stage-sigma-px", type=float, required=True,
                   help="stated stage accuracy, px (1 sigma per axis): the ruler of the magnification")
    p.add_argument("--diagonal", action="store_true", help="also match diagonal neighbours")
    p.add_argument("--max-shift", type=int, default=15, help="search radius around the stage prediction, px")
    p.add_argument("--block", type=int, default=16,
                   help="block size of the correspondences, px (block averaging biases mag by ~1.3 k (B / W)**2)")
    p.add_argument("--max-tiles", type=int, default=64, help="tiles sampled for the dark/flat estimate")
    p.add_argument("--distortion-only", action="store_true",
                   help="write only the distortion (each sample's calibrate step then estimates dark and flat)")
    _add_storage(p)
    p.set_defaults(handler=_calibrate_distortion)


def _calibrate_distortion(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import InputError

    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(out, f"output folder {out.parent} does not exist")
    if not args.stage_sigma_px > 0:
        raise ConfigError(f"--stage-sigma-px must be > 0, got {args.stage_sigma_px}")
    from ..workflows.calibration_acquisition import calibrate_from_acquisition
    from ..io.calibration_file import write_calibration_file

    cal, fit = calibrate_from_acquisition(args.raw_dir, storage_options=_storage_options(args),
                                          stage_sigma_px=args.stage_sigma_px, diagonal=args.diagonal,
                                          max_shift=args.max_shift, block_size=args.block, max_tiles=args.max_tiles)
    write_calibration_file(out, cal, fit, distortion_only=args.distortion_only)
    if not args.distortion_only:
        print(f"dark {[round(float(d), 2) for d in cal.dark]} ({cal.source.get('dark')}), "
              f"trim {tuple(cal.trim.as_dict().values())} (top, bottom, left, right), flat from the data")
    print(fit.describe())
    print(f"wrote {out}")
    return 0


ADDERS: list = [add_watch, add_status, add_submit, add_process, add_calibrate_distortion]
