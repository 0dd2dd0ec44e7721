"""fsspec storage options: where they come from, how they combine, and the filesystem they open.

Storage options reach a run from four places. :func:`resolve_storage_options` combines them the
same way for every command, the watcher and the launchers; later sources win:

1. the run configuration's ``storage_options`` (YAML file or Kubernetes ConfigMap);
2. the environment variable ``IMAXT_S3_ENDPOINT`` (the endpoint the deployment sets);
3. ``--storage-options`` (a JSON object);
4. ``--endpoint-url``.

The endpoint is one setting wherever it is written: a later source's ``endpoint_url`` (top level
or under ``client_kwargs``) replaces an earlier one's, and the result always carries it at the top
level, which is what s3fs accepts and what :func:`normalise_storage_options` moves into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import fsspec

from ..errors import ConfigError

ENDPOINT_ENV = "IMAXT_S3_ENDPOINT"


def parse_storage_options(text: str) -> dict[str, Any]:
    """Parse ``--storage-options`` text: a JSON object.

    Raises
    ------
    ConfigError
        If ``text`` is not JSON or not an object (a one-line message for the command line).
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--storage-options is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--storage-options must be a JSON object, got {type(value).__name__}: {text!r}")
    return value


def resolve_storage_options(
    *,
    config: Mapping[str, Any] | None = None,
    options: str | Mapping[str, Any] | None = None,
    endpoint_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Combine storage options from configuration, environment and command line.

    Parameters
    ----------
    config : mapping, optional
        ``storage_options`` of the run configuration (lowest precedence).
    options : str or mapping, optional
        ``--storage-options``: JSON text (parsed by :func:`parse_storage_options`) or a mapping.
    endpoint_url : str, optional
        ``--endpoint-url`` (highest precedence).
    environ : mapping, optional
        Where ``IMAXT_S3_ENDPOINT`` is looked up; default ``os.environ``. Pass ``{}`` to ignore it.

    Returns
    -------
    dict
        A new dict; ``endpoint_url``, when any source sets one, at the top level.

    Raises
    ------
    ConfigError
        If ``options`` is text that is not a JSON object.
    """
    environ = os.environ if environ is None else environ
    if isinstance(options, str):
        options = parse_storage_options(options)
    env_endpoint = environ.get(ENDPOINT_ENV) or None
    layers = [
        config,
        {"endpoint_url": env_endpoint} if env_endpoint else None,
        options,
        {"endpoint_url": endpoint_url} if endpoint_url else None,
    ]
    merged: dict[str, Any] = {}
    endpoint: str | None = None
    for layer in layers:
        opts = dict(layer or {})
        client_kwargs = dict(opts.pop("client_kwargs", None) or {})
        # client_kwargs.endpoint_url wins over the top level inside one source, as in s3fs.
        endpoint = client_kwargs.pop("endpoint_url", None) or opts.pop("endpoint_url", None) or endpoint
        merged.update(opts)
        if client_kwargs:
            merged["client_kwargs"] = {**merged.get("client_kwargs", {}), **client_kwargs}
    if endpoint:
        merged["endpoint_url"] = endpoint
    return merged


def normalise_storage_options(url: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy ``options`` and move a top-level ``endpoint_url`` where s3fs expects it."""
    opts = dict(options or {})
    if url.startswith(("s3://", "s3a://")) and "endpoint_url" in opts:
        client_kwargs = dict(opts.get("client_kwargs") or {})
        client_kwargs.setdefault("endpoint_url", opts.pop("endpoint_url"))
        opts["client_kwargs"] = client_kwargs
    return opts


def url_to_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``url``, opened with normalised ``storage_options``."""
    fs, path = fsspec.core.url_to_fs(url, **normalise_storage_options(url, storage_options))
    return fs, path


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    """The protocol names of ``fs`` (fsspec gives a string or a tuple)."""
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
