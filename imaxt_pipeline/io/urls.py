"""fsspec locations: one object for "a folder somewhere" (local path or URL)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import zarr.storage
from zarr.abc.store import Store

from .storage import check_url, normalise_storage_options, protocols, track_filesystem, url_to_fs

__all__ = ["Location", "check_url"]


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
