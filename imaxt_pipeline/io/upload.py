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
"""

from __future__ import annotations

import datetime as _dt
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numcodecs.blosc
import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from .. import __version__
from ..acquisition import Acquisition, TileRecord
from ..errors import ImaxtError, InputError, StoreError
from .formats import SourceSample, open_acquisition
from .ownership import Destination, Owner, check_apart, check_destination, sample_identity, section_checksums
from .provenance import redact, software_versions, utcnow
from .rawzarr import COMPRESSOR, TILE_DIMS, sha256, tile_dtype, tile_key
from .storage import close_filesystem
from .urls import Location

UPLOAD_TOOL = "imaxt-pipeline upload"
"""The ``tool`` recorded as owner of the raw stores this module writes."""
TILE_COMPRESSORS = (COMPRESSOR, Crc32cCodec())
"""Bytes-to-bytes codecs of new raw stores: Blosc/zstd, then a CRC-32C checksum."""
KEEP_IN_MEMORY = 512 << 20
"""Bytes of decoded tiles kept from the checking read for the write (the rest is read again)."""

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


class _Upload:
    """One upload: check (read only), then write."""

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

    def _key(self, rec: TileRecord) -> str:
        return tile_key(*self._index(rec))

    def _index(self, rec: TileRecord) -> tuple[int, int, int, int]:
        return (rec.slice, rec.z, rec.channel, self.acq.tile_index(rec.row, rec.col))

    def _shape(self) -> tuple[int, ...]:
        h, w = self.acq.tile_shape
        return (self.acq.slices, self.acq.optical_sections, len(self.acq.channels), self.acq.n_tiles, h, w)

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
        group.attrs["imaxt"] = self._base_meta(dict(group.attrs.get("imaxt", {})))

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
        meta = dict(group.attrs["imaxt"])
        table = dict(sorted(self.digests.items(), key=lambda kv: _key_order(kv[0])))
        report = self.report
        entry = {
            "name": "upload",
            "software": software_versions(),
            "parameters": {
                "compressor": "blosc-zstd-5-bitshuffle",
                "checksum": _checksum_name(group["tiles"]),
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
            "stage_sha256": sha256(np.asarray(group["stage_um"][...])),
        }
        meta["owner"] = self._owner(table).to_json()
        meta["provenance"] = [*meta.get("provenance", []), redact(entry)]
        group.attrs["imaxt"] = meta


def _key_order(key: str) -> tuple[int, ...]:
    return tuple(int(p) for p in key.split("/"))


def _checksum_name(array: zarr.Array) -> str:
    return "crc32c" if any(isinstance(c, Crc32cCodec) for c in array.metadata.codecs) else "none"


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
    table = up.get("tile_sha256") if isinstance(up.get("tile_sha256"), Mapping) else {}
    return Owner(UPLOAD_TOOL, acq["sample"], identity, section_checksums(table) if up.get("complete") else {})


# -- reading existing chunks without trusting them -------------------------------------
def _stored_digest(
    dest: Location, tiles: zarr.Array, index: tuple[int, ...], shape: tuple[int, int], zeros: str
) -> str | None:
    """SHA-256 of the tile stored at ``index``; ``None`` when absent or undecodable."""
    key = tiles.metadata.encode_chunk_key((*index, 0, 0))
    try:
        raw = dest.fs.cat_file(dest.path(tiles.path, key))
    except FileNotFoundError:
        # An absent chunk reads as the fill value (stores written before write_empty_chunks).
        return zeros if tiles.metadata.fill_value == 0 else None
    pixels = decode_chunk(bytes(raw), tiles.metadata.codecs, shape, tiles.dtype)
    return None if pixels is None else sha256(pixels)


def decode_chunk(
    raw: bytes, codecs: Iterable[Any], shape: tuple[int, ...], dtype: Any = np.uint16
) -> np.ndarray | None:
    """Decode one uint16 (or ``dtype``) chunk written with ``bytes [+ blosc] [+ crc32c]``; ``None`` if it is damaged.

    Unlike a zarr read, this checks the CRC-32C and Blosc's header (sizes) before
    decompressing, so truncated or garbled bytes are reported, not handed to the
    decompressor; any other codec chain is reported as undecodable (and rewritten).
    """
    chain = list(codecs)
    want = np.dtype(dtype)
    expected = int(np.prod(shape)) * want.itemsize
    if not chain or not isinstance(chain[0], BytesCodec):
        return None
    buf = raw
    for codec in reversed(chain[1:]):
        if isinstance(codec, Crc32cCodec):
            if len(buf) < 4 or np.array([_crc32c(buf[:-4])], dtype=np.uint32).tobytes() != buf[-4:]:
                return None
            buf = buf[:-4]
        elif isinstance(codec, BloscCodec):
            if len(buf) < 16:
                return None
            nbytes, cbytes = (int.from_bytes(buf[i : i + 4], "little") for i in (4, 12))
            if nbytes != expected or cbytes != len(buf):
                return None
            try:
                buf = bytes(numcodecs.blosc.decompress(buf))
            except Exception:  # any failure means "rewrite this chunk"
                return None
        else:
            return None
    if len(buf) != expected:
        return None
    endian = getattr(chain[0].endian, "value", chain[0].endian) or "little"
    stored = want.newbyteorder("<" if endian == "little" else ">")
    return np.frombuffer(buf, stored).reshape(shape).astype(want)


def _crc32c(data: bytes) -> int:
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - zarr < 3.1 used the crc32c package
        from crc32c import crc32c

        return int(crc32c(data))
    return int(google_crc32c.value(data))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
