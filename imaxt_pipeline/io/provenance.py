"""Provenance entries: who made a result, from what, with which software.

Whatever records a configuration (provenance, attributes, logs, Kubernetes ConfigMaps) passes it
through :func:`redact` first, so that credentials given as storage options or configuration keys
are never written down.
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any

#: What replaces a credential's value.
REDACTED = "<redacted>"
#: Keys whose values are credentials, whatever their case (fsspec/s3fs/botocore spellings, and the pattern).
CREDENTIAL_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "session_token",
        "access_key",
        "secret_key",
        "account_key",
        "sas_token",
        "client_secret",
    }
)
#: Keys that match the pattern but hold no secret.
NON_SECRET_KEYS = frozenset({"endpoint_url", "region_name", "signature_version", "key_prefix"})
_CREDENTIAL_RE = re.compile(r"secret|token|password|passwd|credential|key$", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]+)@", re.IGNORECASE)

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


def is_credential_key(key: object) -> bool:
    """Whether a mapping key names a credential (``secret``, ``aws_session_token``, ``api_key``, ...).

    >>> [is_credential_key(k) for k in ("key", "AWS_SECRET_ACCESS_KEY", "endpoint_url", "anon")]
    [True, True, False, False]
    """
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    if lowered in NON_SECRET_KEYS:
        return False
    return lowered in CREDENTIAL_KEYS or bool(_CREDENTIAL_RE.search(lowered))


def redact(value: Any) -> Any:
    """A copy of ``value`` with every credential replaced by :data:`REDACTED`.

    Mappings are searched at any depth (``client_kwargs.aws_secret_access_key`` too) and lists
    and tuples element by element; the password of a URL (``scheme://user:password@host``) is
    replaced as well. Empty credentials (``None``, ``""``) are kept, they tell nothing.

    >>> redact({"key": "AKIA", "client_kwargs": {"endpoint_url": "http://minio:9000", "aws_session_token": "t"}})
    {'key': '<redacted>', 'client_kwargs': {'endpoint_url': 'http://minio:9000', 'aws_session_token': '<redacted>'}}
    >>> redact("s3://user:pw@host/bucket")
    's3://user:<redacted>@host/bucket'
    """
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_credential_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str) and "@" in value:
        return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
    return value


def credential_paths(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """``{key path: value}`` of every non-empty credential in nested mapping ``value``.

    >>> credential_paths({"key": "k", "anon": False, "client_kwargs": {"aws_session_token": "t"}})
    {('key',): 'k', ('client_kwargs', 'aws_session_token'): 't'}
    """
    found: dict[tuple[str, ...], Any] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            path = (*prefix, str(k))
            if is_credential_key(k) and v not in (None, ""):
                found[path] = v
            else:
                found.update(credential_paths(v, path))
    return found
