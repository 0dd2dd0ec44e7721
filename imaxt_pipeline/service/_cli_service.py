"""``imaxt`` sub-commands of the service: ``watch``, ``status``, ``submit`` and ``process`` (a job's entry
point), each an ``add_<name>`` parser and its handler (for :mod:`.cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time

from ..errors import ConfigError
from ..io.urls import check_url
from ._cli_options import (
    SubParsers,
    _action,
    _add_kube,
    _add_run_target,
    _add_storage,
    _default_raw_store,
    _output_url,
    _scheduler_client,
    _sections,
    _state_url,
)


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
