"""Upload a raw sample folder into a raw Zarr store (see :mod:`.rawzarr`).

Nothing is lost, nothing corrupt is processed:

- **Destination.** The uploader writes only into an empty (or new) folder or prefix, or
  into a store it wrote itself for the same sample (:mod:`.ownership`): never into the
  source, a folder inside or around it, a folder holding anything else, or another
  sample's store. ``overwrite`` rewrites a store of ours for the same sample from
  scratch; it deletes only the keys the uploader wrote there.
- **Input.** Every tile is read and decoded (and its SHA-256 computed) before a single
  byte is written, so a truncated or wrong TIFF fails with one line and leaves nothing
  behind; a tile that changes between that read and the write is an error too.
- **Store.** Chunks carry a CRC-32C checksum after the compressor, so a flipped bit fails
  on read. A resumed or repeated upload reads each existing chunk back (a chunk whose
  bytes cannot be decoded is rewritten, never trusted or crashed on) and writes only
  missing or different tiles. Before changing anything in an existing store it marks
  the store incomplete and drops its checksum table; it marks it complete again with
  the new per-tile SHA-256 table only after every tile is in place.
- **Sections as they land.** With ``new_sections_only`` (an acquisition still running, one
  more section landed), a section the store already holds complete and verified (its tiles'
  SHA-256 in the table of a complete upload, matching the owner record's section checksum, the
  same tiles as the source lists now) is neither read nor verified again: only the new sections
  are. What the pipeline reads is still checked against the table (:mod:`.rawzarr`), so a chunk
  damaged since is caught there; a tile *file* rewritten in a section that had already landed is
  not noticed (the instrument writes each section once).

This module holds the entry point and the read-only checking phase; writing the store (its arrays,
metadata, completion) is :mod:`._upload_store`, reading stored chunks back without trusting them
:mod:`._upload_chunks`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr
from tqdm.auto import tqdm

from ..acquisition import TileRecord
from ..errors import ImaxtError, InputError, StoreError

# The store writing and the chunk verification live in private modules; every name stays importable from here.
from ._upload_chunks import _crc32c as _crc32c
from ._upload_chunks import _stored_digest as _stored_digest  # looked up here at call time: tests patch it
from ._upload_chunks import decode_chunk as decode_chunk
from ._upload_store import _HEX as _HEX
from ._upload_store import _STORE_KEY as _STORE_KEY
from ._upload_store import TILE_COMPRESSORS as TILE_COMPRESSORS
from ._upload_store import UPLOAD_TOOL as UPLOAD_TOOL
from ._upload_store import UploadReport as UploadReport
from ._upload_store import _adopt_legacy as _adopt_legacy
from ._upload_store import _checksum_name as _checksum_name
from ._upload_store import _key_order as _key_order
from ._upload_store import _StoreWriter
from ._upload_store import is_store_key as is_store_key
from .formats import open_acquisition
from .ownership import Destination, check_apart, check_destination, section_checksums
from .rawzarr import sha256
from .urls import Location

KEEP_IN_MEMORY = 512 << 20
"""Bytes of decoded tiles kept from the checking read for the write (the rest is read again)."""


def upload(
    raw_url: str,
    dest_url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    raw_storage_options: dict[str, Any] | None = None,
    workers: int = 8,
    progress: bool = True,
    on_tile: Callable[[str], None] | None = None,
    overwrite: bool = False,
    format: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    new_sections_only: bool = False,
) -> UploadReport:
    """Upload the raw sample at ``raw_url`` to a Zarr store at ``dest_url``.

    Parameters
    ----------
    raw_url : str
        Raw acquisition folder in any registered format (:mod:`.formats`), local or fsspec URL.
    dest_url : str
        Destination store, e.g. ``/data/raw/s1.zarr`` or ``s3://bucket/raw/s1.zarr``: a new
        or empty folder or prefix, or a store this function wrote for the same sample.
    storage_options : dict, optional
        fsspec options for the destination (``endpoint_url`` for S3-compatible stores).
    raw_storage_options : dict, optional
        fsspec options for the source; defaults to ``storage_options`` when the
        source uses the same protocol.
    workers : int
        Tiles read and uploaded concurrently (I/O bound, so threads).
    progress : bool
        Show a progress bar.
    on_tile : callable, optional
        Called with the tile key after each tile is written (used to test
        interruption and resumption).
    overwrite : bool
        Rewrite every tile of an existing store of this sample (recreating its arrays
        with the current codecs) instead of verifying tiles in place.
    format : str, optional
        The source's format (``generic``, ``tissuecyte``); detected when omitted.
    reader_options : dict, optional
        Options of that format's reader, e.g. ``{"pixel_size_um": 0.56}`` for TissueCyte.
        Tiles the reader reports as never acquired are not written (they read as zeros) and
        are listed under ``imaxt.upload.missing_tiles``.
    new_sections_only : bool
        Read and verify only the sections the store does not hold complete and verified yet
        (sections landing one by one, see the module docstring); ignored with ``overwrite``.

    Raises
    ------
    InputError
        If the raw sample breaks the layout contract (nothing is written).
    StoreError
        If the destination is the source or inside or around it, holds anything the
        uploader did not write or a different sample (nothing is written), or cannot
        be written.
    """
    start = _dt.datetime.now(_dt.UTC)
    if raw_storage_options is None and raw_url.split("://")[0] == dest_url.split("://")[0]:
        raw_storage_options = storage_options
    src = Location(raw_url, raw_storage_options)
    dest = Location(dest_url, storage_options)
    check_apart(dest, src)
    sample = open_acquisition(raw_url, format, storage_options=raw_storage_options, **dict(reader_options or {}))
    job = _Upload(
        src,
        dest,
        sample,
        workers=max(1, workers),
        progress=progress,
        on_tile=on_tile,
        overwrite=overwrite,
        start=start,
        new_sections_only=new_sections_only,
    )
    try:
        return job.run()
    except ImaxtError:
        raise
    except OSError as exc:
        raise StoreError(f"{dest.url}: cannot write the store ({_one_line(exc)})") from None
    finally:
        job.close()


class _Upload(_StoreWriter):
    """One upload: check (read only), then write."""

    # -- phase 1: read only ----------------------------------------------------------
    def run(self) -> UploadReport:
        found = check_destination(
            self.dest,
            tool=UPLOAD_TOOL,
            sample=self.acq.sample,
            sample_id=self.owner.sample_id,
            owns=is_store_key,
            adopt=_adopt_legacy,
        )
        group = tiles = None
        if not found.empty:
            try:
                group = zarr.open_group(self.store(), mode="r+")
            except Exception as exc:  # a store of ours whose metadata zarr cannot read
                raise StoreError(
                    f"{self.dest.url}: cannot open the store ({_one_line(exc)}); re-run with --overwrite to rewrite it"
                ) from None
            tiles = self._existing_tiles(group)
        verify = tiles is not None and not self.overwrite
        zeros = sha256(np.zeros(self.acq.tile_shape, self.dtype))
        to_write: list[TileRecord] = []
        trusted = self._verified_sections(group, found) if verify and self.new_sections_only else {}
        for table in trusted.values():
            self.digests.update(table)
            self.report.trusted.extend(table)
        records = [rec for rec in self.sample.records if rec.slice not in trusted]

        def check(rec: TileRecord) -> None:
            key = self._key(rec)
            data = self.sample.read_tile(rec)
            digest = sha256(data)
            same = verify and _stored_digest(self.dest, tiles, self._index(rec), self.acq.tile_shape, zeros) == digest
            with self.lock:
                self.digests[key] = digest
                if same:
                    self.report.verified.append(key)
                else:
                    to_write.append(rec)
                    if self.cached_bytes + data.nbytes <= KEEP_IN_MEMORY:
                        self.cache[key] = data
                        self.cached_bytes += data.nbytes

        self._map(check, records, f"check {self.acq.sample}")
        if group is not None and not to_write and self._unchanged(group, found):
            return self._finish(group, mark=False)

        # -- phase 2: write --------------------------------------------------------------
        if group is None:
            group = self._create()
        else:
            self._invalidate(group)
            if tiles is None or self.overwrite:
                self._replace_arrays(group, found)
            else:
                group["stage_um"][...] = self.sample.stage_um
        tiles = group["tiles"]
        order = {id(rec): i for i, rec in enumerate(self.sample.records)}
        to_write.sort(key=lambda rec: order[id(rec)])

        def write(rec: TileRecord) -> None:
            key = self._key(rec)
            data = self.cache.pop(key, None)
            if data is None:
                data = self.sample.read_tile(rec)
                if sha256(data) != self.digests[key]:
                    raise InputError(
                        self.src.join(rec.file),
                        "changed while it was being uploaded; re-run the upload once the sample folder is final",
                    )
            tiles[self._index(rec)] = data
            with self.lock:
                self.report.written.append(key)
                self.report.nbytes += data.nbytes
            if self.on_tile is not None:
                self.on_tile(key)

        self._map(write, to_write, f"upload {self.acq.sample}")
        return self._finish(group, mark=True)

    def _map(self, fn: Callable[[TileRecord], None], records: Iterable[TileRecord], desc: str) -> None:
        records = list(records)
        if not records:
            return
        with (
            ThreadPoolExecutor(max_workers=self.workers) as pool,
            tqdm(total=len(records), disable=not self.progress, unit="tile", desc=desc) as bar,
        ):
            futures = [pool.submit(fn, rec) for rec in records]
            try:
                for fut in futures:
                    fut.result()
                    bar.update()
            except BaseException:
                # Stop at once: what was written stays valid (the store is marked incomplete), a re-run resumes.
                for fut in futures:
                    fut.cancel()
                raise

    def _existing_tiles(self, group: zarr.Group) -> zarr.Array | None:
        """The store's tile array; ``None`` when it was never created (an upload stopped at once) or is replaced."""
        try:
            tiles, stage = group["tiles"], group["stage_um"]
        except KeyError:
            return None
        except Exception:  # unreadable array metadata
            tiles = stage = None
        h, w = self.acq.tile_shape
        if (
            not isinstance(tiles, zarr.Array)
            or not isinstance(stage, zarr.Array)
            or tiles.shape != self._shape()
            or tiles.dtype != self.dtype
            or tuple(tiles.chunks) != (1, 1, 1, 1, h, w)
        ):
            if self.overwrite:
                return None
            raise StoreError(
                f"{self.dest.url}: the store's arrays do not match this sample's acquisition; "
                f"re-run with --overwrite to rewrite the store"
            )
        return tiles

    def _verified_sections(self, group: zarr.Group | None, found: Destination) -> dict[int, dict[str, str]]:
        """``{slice: {tile key: sha256}}`` of the sections a complete upload of ours already verified.

        A section counts when its entries of ``imaxt.upload.tile_sha256`` give the owner record's
        checksum of that section and name exactly the tiles the source lists for it now (a tile
        that appeared or went means it is checked again, whole).
        """
        meta = group.attrs.get("imaxt", {}) if group is not None else {}
        upload_meta = meta.get("upload") if isinstance(meta, Mapping) else None
        if found.owner is None or not isinstance(upload_meta, Mapping) or upload_meta.get("complete") is not True:
            return {}
        table = upload_meta.get("tile_sha256")
        if not isinstance(table, Mapping):
            return {}
        stored: dict[int, dict[str, str]] = {}
        for key, digest in table.items():
            stored.setdefault(int(str(key).split("/", 1)[0]), {})[str(key)] = str(digest)
        listed: dict[int, set[str]] = {}
        for rec in self.sample.records:
            listed.setdefault(rec.slice, set()).add(self._key(rec))
        recorded = found.owner.sections
        verified = {}
        for s, entries in stored.items():
            checksum = recorded.get(str(s))
            if (
                checksum is not None
                and section_checksums(entries).get(str(s)) == checksum
                and set(entries) == listed.get(s)
            ):
                verified[s] = entries
        return verified

    def _unchanged(self, group: zarr.Group, found: Destination) -> bool:
        """Whether a store of ours already holds exactly this upload, marked complete."""
        meta = dict(group.attrs.get("imaxt", {}))
        upload_meta = meta.get("upload") or {}
        table = dict(sorted(self.digests.items()))
        try:
            stage_same = np.array_equal(np.asarray(group["stage_um"][...]), self.sample.stage_um)
        except Exception:  # unreadable (e.g. a failed checksum): rewrite it
            stage_same = False
        return (
            not self.overwrite
            and upload_meta.get("complete") is True
            and upload_meta.get("tile_sha256") == table
            and meta.get("acquisition") == self.acq_json
            and stage_same
            and found.owner is not None
            and meta.get("owner") == self._owner(table).to_json()
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
