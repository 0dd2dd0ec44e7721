"""fsspec locations: one object for "a folder somewhere" (local path or URL)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

import fsspec
import zarr.storage
from zarr.abc.store import Store

from ..errors import ConfigError
from .provenance import redact
from .storage import normalise_storage_options, protocols, track_filesystem, url_to_fs

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


class Location:
    """A folder addressed by a local path or an fsspec URL (``s3://bucket/prefix``).

    Parameters
    ----------
    url : str
        Local path, ``file://`` or any fsspec URL.
    storage_options : dict, optional
        Options for the filesystem, e.g. ``{"endpoint_url": "http://127.0.0.1:9000"}``
        for S3-compatible servers; ``endpoint_url`` is mapped to s3fs's
        ``client_kwargs`` for convenience.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(url, str) or not url:
            raise TypeError(f"'url' must be a non-empty string, got {url!r}")
        self.storage_options = normalise_storage_options(url, storage_options)
        self.fs, root = url_to_fs(url, self.storage_options)
        self.root = root.rstrip("/") or root
        self.url = url.rstrip("/") or url

    @property
    def is_local(self) -> bool:
        return "file" in protocols(self.fs)

    def path(self, *parts: str) -> str:
        """Filesystem path (without protocol) of a child of this folder."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def join(self, *parts: str) -> str:
        """URL of a child, for messages and provenance."""
        return posixpath.join(self.url, *parts) if parts else self.url

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def zarr_store(self, *, read_only: bool = False) -> Store:
        """A zarr 3 store rooted at this folder."""
        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        store = zarr.storage.FsspecStore.from_url(
            self.url, storage_options={**self.storage_options, "skip_instance_cache": True}, read_only=read_only
        )
        track_filesystem(store.fs)  # its HTTP session is closed when the store goes
        return store

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Location, (self.url, self.storage_options))
