"""Writing a raw store for :mod:`.upload`: the keys it owns, its arrays, metadata and completion.

The state of one upload (:class:`_StoreWriter`, which :class:`.upload._Upload` extends with the
read-only checking phase), the arrays it creates or recreates, the owner record written first, the
``incomplete`` mark set before anything changes and the per-tile SHA-256 table written last; and
:func:`_adopt_legacy`, which recognises raw stores from before ownership was recorded.
"""

from __future__ import annotations

import datetime as _dt
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from .. import __version__
from ..acquisition import Acquisition, TileRecord
from .formats import SourceSample
from .ownership import Destination, Owner, sample_identity, section_checksums
from .provenance import redact, software_versions, utcnow
from .rawzarr import COMPRESSOR, TILE_DIMS, sha256, tile_dtype, tile_key
from .storage import close_filesystem
from .urls import Location

UPLOAD_TOOL = "imaxt-pipeline upload"
"""The ``tool`` recorded as owner of the raw stores this module writes."""
TILE_COMPRESSORS = (COMPRESSOR, Crc32cCodec())
"""Bytes-to-bytes codecs of new raw stores: Blosc/zstd, then a CRC-32C checksum."""

_HEX = r"[0-9a-f]{32}"
_STORE_KEY = re.compile(
    rf"zarr\.json|zarr\.{_HEX}\.partial"
    rf"|(?:tiles|stage_um)(?:/zarr\.json|/zarr\.{_HEX}\.partial)?"
    rf"|(?:tiles|stage_um)/c(?:/\d+)*(?:\.{_HEX}\.partial)?"
)


def is_store_key(key: str) -> bool:
    """Whether ``key`` (relative to the store) is one the uploader writes (zarr's ``.partial`` files included)."""
    return _STORE_KEY.fullmatch(key) is not None


@dataclass
class UploadReport:
    """What an upload did: tiles written, tiles verified in place, totals."""

    dest: str
    written: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)
    """Tiles of sections verified by an earlier upload, neither read nor checked again (``new_sections_only``)."""
    nbytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        mb = self.nbytes / 1e6
        rate = mb / self.seconds if self.seconds else float("nan")
        earlier = f", {len(self.trusted)} in sections verified earlier" if self.trusted else ""
        return (
            f"uploaded to {self.dest}: {len(self.written)} tiles written, {len(self.verified)} already "
            f"present and verified{earlier}, {mb:.1f} MB in {self.seconds:.1f} s ({rate:.1f} MB/s)"
        )


class _StoreWriter:
    """The state of one upload and everything that writes the store (see :class:`.upload._Upload`)."""

    def __init__(
        self,
        src: Location,
        dest: Location,
        sample: SourceSample,
        *,
        workers: int,
        progress: bool,
        on_tile: Callable[[str], None] | None,
        overwrite: bool,
        start: _dt.datetime,
        new_sections_only: bool = False,
    ) -> None:
        self.src, self.dest, self.sample = src, dest, sample
        self.acq: Acquisition = sample.acquisition
        self.acq_json = self.acq.model_dump(mode="json")
        self.dtype = tile_dtype(self.acq)
        self.owner = Owner(UPLOAD_TOOL, self.acq.sample, sample_identity(self.acq_json))
        self.workers, self.progress, self.on_tile = workers, progress, on_tile
        self.overwrite, self.start = overwrite, start
        self.new_sections_only = new_sections_only
        self.report = UploadReport(dest=dest.url)
        self.digests: dict[str, str] = {}
        self.cache: dict[str, np.ndarray] = {}
        self.cached_bytes = 0
        self.lock = threading.Lock()
        self.stores: list[Any] = []

    def store(self) -> Any:
        """A zarr store on the destination, closed by :meth:`close`."""
        store = self.dest.zarr_store()
        self.stores.append(store)
        return store

    def close(self) -> None:
        for store in self.stores:
            close_filesystem(getattr(store, "fs", None))
        self.stores.clear()

    def _key(self, rec: TileRecord) -> str:
        return tile_key(*self._index(rec))

    def _index(self, rec: TileRecord) -> tuple[int, int, int, int]:
        return (rec.slice, rec.z, rec.channel, self.acq.tile_index(rec.row, rec.col))

    def _shape(self) -> tuple[int, ...]:
        h, w = self.acq.tile_shape
        return (self.acq.slices, self.acq.optical_sections, len(self.acq.channels), self.acq.n_tiles, h, w)

    def _owner(self, table: Mapping[str, str] | None = None) -> Owner:
        return Owner(self.owner.tool, self.owner.sample, self.owner.sample_id, section_checksums(table or {}))

    def _base_meta(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **meta,
            "acquisition": self.acq_json,
            "owner": self._owner().to_json(),
            "upload": {"complete": False, "source": self.sample.root, **self._source_meta()},
        }

    def _source_meta(self) -> dict[str, Any]:
        """The source's format and the tiles it never acquired (absent from the store: they read as zeros)."""
        return {"format": self.sample.format, "missing_tiles": list(self.sample.missing_tiles)}

    def _create(self) -> zarr.Group:
        # The ownership record is the first thing written: an upload stopped at any point leaves a store of ours.
        meta = self._base_meta({"provenance": []})
        group = zarr.create_group(self.store(), attributes={"imaxt": meta}, zarr_format=3)
        self._create_arrays(group)
        return group

    def _create_arrays(self, group: zarr.Group) -> None:
        h, w = self.acq.tile_shape
        group.create_array(
            "tiles",
            shape=self._shape(),
            chunks=(1, 1, 1, 1, h, w),
            dtype=self.dtype,
            compressors=list(TILE_COMPRESSORS),
            fill_value=0,
            dimension_names=TILE_DIMS,
            config={"write_empty_chunks": True},
        )
        group.create_array(
            "stage_um",
            data=self.sample.stage_um,
            compressors=list(TILE_COMPRESSORS),
            dimension_names=("slice", "z", "tile", "yx"),
        )

    def _invalidate(self, group: zarr.Group) -> None:
        """Mark the store incomplete and drop its checksum tables before changing anything else."""
        group.attrs["imaxt"] = self._base_meta(dict(cast(Mapping[str, Any], group.attrs.get("imaxt", {}))))

    def _replace_arrays(self, group: zarr.Group, found: Destination) -> None:
        """Delete the arrays the uploader wrote (only keys it owns, checked by ``check_destination``) and recreate."""
        ours = [k for k in found.keys if k.startswith(("tiles/", "stage_um/")) and is_store_key(k)]
        files = [self.dest.path(k) for k in ours if self.dest.fs.isfile(self.dest.path(k))]
        if files:
            self.dest.fs.rm(files)
        self.dest.fs.invalidate_cache()
        group = zarr.open_group(self.store(), mode="r+")
        self._create_arrays(group)

    def _finish(self, group: zarr.Group, *, mark: bool) -> UploadReport:
        end = _dt.datetime.now(_dt.UTC)
        self.report.seconds = (end - self.start).total_seconds()
        self.report.written.sort(key=_key_order)
        self.report.verified.sort(key=_key_order)
        self.report.trusted.sort(key=_key_order)
        if mark:
            self._mark_complete(group, end)
        return self.report

    def _mark_complete(self, group: zarr.Group, end: _dt.datetime) -> None:
        meta: dict[str, Any] = dict(cast(Mapping[str, Any], group.attrs["imaxt"]))
        table = dict(sorted(self.digests.items(), key=lambda kv: _key_order(kv[0])))
        report = self.report
        entry = {
            "name": "upload",
            "software": software_versions(),
            "parameters": {
                "compressor": "blosc-zstd-5-bitshuffle",
                "checksum": _checksum_name(cast(zarr.Array, group["tiles"])),
                "chunks": "one per tile",
                "overwrite": self.overwrite,
            },
            "inputs": {"source": self.sample.root, "n_tiles": len(table)},
            "outputs": ["tiles", "stage_um"],
            "metrics": {
                "written": len(report.written),
                "verified": len(report.verified),
                "verified_earlier": len(report.trusted),
                "bytes": report.nbytes,
            },
            "start": utcnow(self.start),
            "end": utcnow(end),
            "host": socket.gethostname(),
            "version": __version__,
        }
        meta["upload"] = {
            "complete": True,
            "source": self.sample.root,
            **self._source_meta(),
            "tile_sha256": table,
            "stage_sha256": sha256(np.asarray(cast(zarr.Array, group["stage_um"])[...])),
        }
        meta["owner"] = self._owner(table).to_json()
        meta["provenance"] = [*meta.get("provenance", []), redact(entry)]
        group.attrs["imaxt"] = meta


def _key_order(key: str) -> tuple[int, ...]:
    return tuple(int(p) for p in key.split("/"))


def _checksum_name(array: zarr.Array) -> str:
    return "crc32c" if any(isinstance(c, Crc32cCodec) for c in cast(Any, array.metadata).codecs) else "none"


def _adopt_legacy(attrs: Mapping[str, Any]) -> Owner | None:
    """Recognise a raw store written before ownership was recorded (``imaxt.acquisition`` and ``imaxt.upload``)."""
    meta = attrs.get("imaxt")
    if not isinstance(meta, Mapping):
        return None
    acq, up = meta.get("acquisition"), meta.get("upload")
    if not isinstance(acq, Mapping) or not isinstance(up, Mapping) or not isinstance(acq.get("sample"), str):
        return None
    try:
        identity = sample_identity(dict(acq))
    except (TypeError, ValueError):
        return None
    table = cast(Mapping[str, str], up.get("tile_sha256") if isinstance(up.get("tile_sha256"), Mapping) else {})
    return Owner(UPLOAD_TOOL, acq["sample"], identity, section_checksums(table) if up.get("complete") else {})
