"""Provenance entries: who made a result, from what, with which software."""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata

_PACKAGES = (
    "imaxt-pipeline",
    "numpy",
    "scipy",
    "scikit-image",
    "dask",
    "distributed",
    "zarr",
    "ome-zarr",
    "fsspec",
    "s3fs",
    "tifffile",
    "pandas",
    "pyarrow",
    "torch",
    "cellpose",
)


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def utcnow(when: _dt.datetime | None = None) -> str:
    """UTC ISO-8601 timestamp, e.g. ``2026-11-23T08:00:00.123456+00:00``."""
    when = when or _dt.datetime.now(_dt.UTC)
    return when.astimezone(_dt.UTC).isoformat()
