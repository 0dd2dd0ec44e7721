"""Options several ``imaxt`` sub-commands share, and their parsing (for :mod:`.cli`).

The storage flags (``--endpoint-url``, ``--storage-options``, resolved before any handler runs), slice and
section lists, destination checks, the run target and Kubernetes flags of the service commands, and the
raw-format flags of ``inspect`` and ``upload``. Bad values are :class:`~imaxt_pipeline.errors.ConfigError`
(one line, exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io.storage import ENDPOINT_ENV, resolve_storage_options
from ..io.urls import check_url

Handler = Callable[[argparse.Namespace], int]


SubParsers = Any  # argparse._SubParsersAction: private, and generic in typeshed


def _add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help=f"S3-compatible endpoint, e.g. http://127.0.0.1:9000 (env {ENDPOINT_ENV})")
    p.add_argument("--storage-options", help="fsspec storage options as a JSON object")


def _resolve_storage(args: argparse.Namespace) -> None:
    """Replace the raw storage flags by the resolved options, so handlers cannot read them another way."""
    if hasattr(args, "endpoint_url"):
        args.storage_options = resolve_storage_options(options=args.storage_options, endpoint_url=args.endpoint_url)
        del args.endpoint_url


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
