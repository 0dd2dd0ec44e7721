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

S3 filesystems hold an aiohttp session each. s3fs closes those of its synchronous instances when
they are collected, not those of asynchronous ones (what zarr's ``FsspecStore`` opens), which
then print "Unclosed client session" errors. :func:`track_filesystem` closes them when collected,
and :func:`close_filesystems` (called when every command ends, and at exit) closes what is left.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import os
import re
import threading
import weakref
from collections.abc import Mapping, MutableMapping
from typing import Any

import fsspec

from ..errors import ConfigError
from .provenance import is_credential_key, redact

ENDPOINT_ENV = "IMAXT_S3_ENDPOINT"
_JSON_PAIR = re.compile(r'"(?P<key>[^"\\]*)"(?P<sep>\s*:\s*)"(?P<value>(?:[^"\\]|\\.)*)"')


def _redact_json_text(text: str) -> str:
    """``text`` (JSON, maybe broken) with the string values of credential keys replaced, for messages."""

    def sub(m: re.Match[str]) -> str:
        value = '"<redacted>"' if is_credential_key(m["key"]) else f'"{m["value"]}"'
        return f'"{m["key"]}"{m["sep"]}{value}'

    return _JSON_PAIR.sub(sub, text)


_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):(?P<rest>.*)$")
#: Protocols whose URLs are ``scheme://host-or-bucket/path`` (a missing bucket is an error).
_NEEDS_HOST = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "adl", "abfss", "http", "https", "ftp", "sftp", "hf"})


def check_url(url: object, what: str = "URL") -> str:
    """``url`` if it is a local path or a well-formed fsspec URL, else a one-line :class:`ConfigError`.

    Catches what fsspec would otherwise turn into a traceback or a folder with a strange name:
    an empty value, a scheme with one slash (``s3:/bucket``), an unknown protocol, a URL
    without a bucket (``s3://``) or with spaces around it.

    >>> check_url("s3://bucket/raw.zarr")
    's3://bucket/raw.zarr'
    >>> check_url("s3:/bucket", "--out")
    Traceback (most recent call last):
    ...
    imaxt_pipeline.errors.ConfigError: --out: 's3:/bucket' is not a valid URL (expected s3://bucket/path)
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{what}: must be a non-empty path or URL, got {url!r}")
    shown = redact(url)
    if url != url.strip() or "\n" in url:
        raise ConfigError(f"{what}: {shown!r} has leading or trailing white space")
    last = url.rsplit("::", 1)[-1]  # chained URLs (simplecache::s3://...): the target decides
    match = _SCHEME.match(last)
    if match is None:
        return url  # a local path (also C:\\... : one-letter schemes never match)
    scheme, rest = match["scheme"].lower(), match["rest"]
    if not rest.startswith("//"):
        raise ConfigError(f"{what}: {shown!r} is not a valid URL (expected {scheme}://bucket/path)")
    if scheme not in fsspec.available_protocols():
        raise ConfigError(f"{what}: {shown!r} has an unknown protocol {scheme!r}")
    host = rest[2:].split("/", 1)[0]
    if scheme in _NEEDS_HOST and not host:
        raise ConfigError(f"{what}: {shown!r} names no bucket or host (expected {scheme}://bucket/path)")
    return url


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
        shown = _redact_json_text(text)  # credentials never reach a message
        raise ConfigError(f"--storage-options is not valid JSON ({exc.msg} at column {exc.colno}): {shown!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--storage-options must be a JSON object, got {type(value).__name__}: {redact(value)!r}")
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


# -- closing S3 sessions -----------------------------------------------------------------------
#: id -> asynchronous S3 filesystem (by id: filesystems with the same options compare equal).
_TRACKED: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
#: Closes in flight: asyncio keeps only weak references to tasks, so these hold them until done.
_CLOSING: set[concurrent.futures.Future[Any]] = set()
_ATEXIT = threading.Lock()
_atexit_registered = False
_CLOSE_TIMEOUT_S = 5.0


def _is_s3(fs: Any) -> bool:
    return any(p in ("s3", "s3a") for p in protocols(fs))


def track_filesystem(fs: Any) -> Any:
    """Close the HTTP session of asynchronous S3 filesystem ``fs`` when it is collected; return ``fs``.

    The finalizer holds the instance's ``__dict__`` (where s3fs keeps its client once connected),
    not the instance, so it does not keep ``fs`` alive. Other filesystems are returned untouched.
    """
    global _atexit_registered
    if not getattr(fs, "asynchronous", False) or not _is_s3(fs):
        return fs
    _TRACKED[id(fs)] = fs
    weakref.finalize(fs, _close_client, fs.__dict__, False)
    with _ATEXIT:
        if not _atexit_registered:
            # Registered after zarr's own clean-up (atexit runs last-in first-out), so zarr's loop still runs.
            atexit.register(close_filesystems)
            _atexit_registered = True
    return fs


def _zarr_loop() -> tuple[asyncio.AbstractEventLoop | None, threading.Thread | None]:
    try:
        from zarr.core import sync as zsync
    except ImportError:  # pragma: no cover - zarr is a dependency
        return None, None
    return zsync.loop[0], zsync.iothread[0]


def _close_client(state: MutableMapping[str, Any], wait: bool) -> None:
    """Close the s3fs client kept in ``state`` (an asynchronous instance's ``__dict__``) on zarr's loop."""
    creator = state.get("_s3creator")
    if creator is None:
        return
    state["_s3creator"] = None
    state["_s3"] = None
    loop, thread = _zarr_loop()
    if loop is None or loop.is_closed() or not loop.is_running():
        with contextlib.suppress(Exception):  # the loop is gone: close the sockets at least
            creator._client._endpoint.http_session._connector._close()
        return
    future = asyncio.run_coroutine_threadsafe(creator.__aexit__(None, None, None), loop)
    _CLOSING.add(future)
    future.add_done_callback(_CLOSING.discard)
    if wait and threading.current_thread() is not thread:
        with contextlib.suppress(Exception):  # best effort: the command's outcome is already decided
            future.result(_CLOSE_TIMEOUT_S)


def close_filesystem(fs: Any) -> None:
    """Close the HTTP session of one asynchronous S3 filesystem now (others are left untouched)."""
    if getattr(fs, "asynchronous", False) and _is_s3(fs):
        _close_client(fs.__dict__, True)


def close_filesystems() -> None:
    """Close the HTTP session of every S3 filesystem this process opened, and empty s3fs's instance cache.

    Covers the asynchronous instances registered with :func:`track_filesystem` and every instance in
    s3fs's cache (synchronous ones on fsspec's loop). Safe to call more than once.
    """
    for fs in list(_TRACKED.values()):
        _close_client(fs.__dict__, True)
    _, thread = _zarr_loop()
    if _CLOSING and threading.current_thread() is not thread:
        concurrent.futures.wait(list(_CLOSING), timeout=_CLOSE_TIMEOUT_S)
    try:
        import s3fs
    except ImportError:  # pragma: no cover - s3fs is a dependency
        return
    from fsspec.asyn import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        if fs.asynchronous:
            _close_client(fs.__dict__, True)
            continue
        creator = getattr(fs, "_s3creator", None)
        if creator is None:
            continue
        with contextlib.suppress(Exception):
            sync(fs.loop, creator.__aexit__, None, None, None, timeout=_CLOSE_TIMEOUT_S)
        fs._s3creator = None
        fs._s3 = None
    s3fs.S3FileSystem.clear_instance_cache()
