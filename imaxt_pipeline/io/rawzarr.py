"""The raw Zarr store written by the uploader, and read by the pipeline.

Layout (zarr v3)::

    <store>/zarr.json        root group; attrs["imaxt"] = {"acquisition": {...},
                             "upload": {"complete": bool, "source": url,
                             "tile_sha256": {"s/z/c/t": hex}, "stage_sha256": hex,
                             "missing_tiles": ["s/z/c/t", ...]},
                             "owner": {...}, "provenance": [...]}
    <store>/tiles            uint16 (slice, z, channel, tile, y, x), one chunk per tile image
    <store>/stage_um         float64 (slice, z, tile, 2): recorded (y, x) stage positions in µm

Reads are verified: opening a store checks its metadata against the acquisition (array
shapes, the owner record) and reads ``stage_um`` whole (every chunk present, its SHA-256
when recorded); :meth:`RawStore.read_tile` checks each tile image against the SHA-256 the
uploader recorded. Every problem is one :class:`~imaxt_pipeline.errors.StoreError` line
naming the store, the array and the tile. Tiles listed in ``upload.missing_tiles`` were
never acquired by the instrument: they read as the fill value (0) and are not corruption.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping
from typing import Any, cast

import numpy as np
import zarr
from pydantic import ValidationError
from zarr.codecs import BloscCodec, BloscShuffle

from ..acquisition import Acquisition
from ..errors import StoreError
from .ownership import read_owner, sample_identity, section_checksums
from .urls import Location

TILE_DIMS = ("slice", "z", "channel", "tile", "y", "x")
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle)
TILES, STAGE = "tiles", "stage_um"


def tile_key(slice_: int, z: int, channel: int, tile: int) -> str:
    """Key of one tile in checksum tables: ``"slice/z/channel/tile"``."""
    return f"{slice_}/{z}/{channel}/{tile}"


TILE_DTYPES = ("uint16", "float32")
"""Pixel types of raw tiles: uint16 (cameras, PMTs), float32 (imaging mass cytometry counts)."""


def tile_dtype(acq: Acquisition) -> np.dtype[Any]:
    """The tiles' pixel type: the acquisition's optional ``dtype`` (``float32`` for IMC), else uint16."""
    name = str(getattr(acq, "dtype", None) or "uint16")
    if name not in TILE_DTYPES:
        raise ValueError(f"acquisition dtype {name!r} is not one of {', '.join(TILE_DTYPES)}")
    return np.dtype(name)


def sha256(array: np.ndarray) -> str:
    """Checksum of an array's bytes in C order (dtype-exact); hashes the buffer without copying it."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


class RawStore:
    """Read access to an uploaded raw sample; picklable, so workers can read tiles.

    Parameters
    ----------
    url : str
        Location of the store (local path or fsspec URL).
    storage_options : dict, optional
        fsspec options (e.g. ``endpoint_url``).
    require_complete : bool
        Refuse a store whose upload did not finish.
    check_stage : bool
        Refuse a store whose ``stage_um`` is damaged; when false the problem is kept in
        ``stage_problem`` instead (for :mod:`.verify`, which reports every problem).

    Raises
    ------
    StoreError
        One line naming the store and the problem: no store, unreadable or missing
        metadata or arrays, acquisition attributes inconsistent with the arrays or the
        owner record, an incomplete upload, a missing or damaged ``stage_um`` chunk.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        require_complete: bool = True,
        check_stage: bool = True,
    ) -> None:
        self.location = Location(url, storage_options)
        self.require_complete, self.check_stage = require_complete, check_stage
        self.group = self._open_group()
        meta = self.group.attrs.get("imaxt", {})
        if not isinstance(meta, Mapping) or "acquisition" not in meta:
            raise StoreError(f"{self.url}: not an imaxt raw store (no imaxt.acquisition in attrs)")
        self.attrs = cast(dict[str, Any], dict(meta))
        upload = self.attrs.get("upload")
        self.upload: dict[str, Any] = dict(upload) if isinstance(upload, Mapping) else {}
        self.complete = self.upload.get("complete") is True
        if require_complete and not self.complete:
            raise StoreError(f"{self.url}: upload is not complete; re-run `imaxt upload` to finish it")
        try:
            self.acquisition = Acquisition.model_validate(self.attrs["acquisition"])
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "acquisition"
            raise StoreError(f"{self.url}: invalid imaxt.acquisition in attrs ({where}: {first['msg']})") from None
        self.sample_id = sample_identity(self.attrs["acquisition"])
        table = self.upload.get("tile_sha256") or {}
        self._checksums: dict[str, str] = dict(table) if isinstance(table, Mapping) else {}
        missing = self.upload.get("missing_tiles") or []
        self.missing_tiles: frozenset[str] = (
            frozenset(str(k) for k in missing) if isinstance(missing, list) else (frozenset())
        )
        self.tiles: zarr.Array[Any] = self._array(TILES)
        stage = self._array(STAGE)
        self._check_shapes(self.tiles, stage)
        self._check_owner()
        self.stage_um, self.stage_problem = self._read_stage(stage)
        if self.stage_problem is not None and check_stage:
            raise StoreError(f"{self.stage_problem}; re-upload the sample")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.location.url, self.location.storage_options, self.require_complete, self.check_stage))

    @property
    def url(self) -> str:
        return self.location.url

    # -- opening --------------------------------------------------------------
    def _open_group(self) -> zarr.Group:
        loc = self.location
        try:
            has_metadata = loc.exists("zarr.json")
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot read the store ({_one_line(exc)})") from None
        if not has_metadata:
            if loc.exists():
                raise StoreError(f"{self.url}: zarr.json is missing (not a raw Zarr store, or a damaged one)")
            raise StoreError(f"{self.url}: no raw Zarr store here (run `imaxt upload` first)")
        try:
            group = zarr.open_group(loc.zarr_store(read_only=True), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise StoreError(f"{self.url}: no raw Zarr store here (run `imaxt upload` first)") from None
        except Exception as exc:  # truncated or garbled JSON, a zarr.json that is not a group's
            raise StoreError(f"{self.url}: zarr.json cannot be read ({_one_line(exc)})") from None
        return group

    def _array(self, name: str) -> zarr.Array[Any]:
        try:
            node = self.group[name]
        except KeyError:
            raise StoreError(f"{self.url}: array {name!r} is missing") from None
        except Exception as exc:  # unreadable array metadata
            raise StoreError(f"{self.url}/{name}: zarr.json cannot be read ({_one_line(exc)})") from None
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self.url}: {name} is a group, not an array")
        return node

    def _check_owner(self) -> None:
        """The owner record (when there is one) must describe this acquisition and this checksum table."""
        owner = read_owner({"imaxt": self.attrs})
        if owner is None:
            return
        if owner.sample_id != self.sample_id:
            raise StoreError(
                f"{self.url}: imaxt.acquisition does not match the store's owner record (sample identity differs); "
                f"re-upload the sample"
            )
        if self.complete and owner.sections and owner.sections != section_checksums(self._checksums):
            raise StoreError(
                f"{self.url}: imaxt.upload.tile_sha256 does not match the store's owner record; re-upload the sample"
            )

    def _check_shapes(self, tiles: zarr.Array[Any], stage: zarr.Array[Any]) -> None:
        acq = self.acquisition
        h, w = acq.tile_shape
        want = (acq.slices, acq.optical_sections, len(acq.channels), acq.n_tiles, h, w)
        if tuple(tiles.shape) != want or tiles.dtype != tile_dtype(acq):
            raise StoreError(
                f"{self.url}: acquisition attrs do not match the tiles array "
                f"(expected {tile_dtype(acq)} {list(want)} from "
                f"slices, optical_sections, channels, rows x cols, tile_shape; found {tiles.dtype} {list(tiles.shape)})"
            )
        want_stage = (acq.slices, acq.optical_sections, acq.n_tiles, 2)
        if tuple(stage.shape) != want_stage:
            raise StoreError(
                f"{self.url}: acquisition attrs do not match the stage_um array (expected {list(want_stage)}, "
                f"found {list(stage.shape)})"
            )

    def _read_stage(self, stage: zarr.Array[Any]) -> tuple[np.ndarray, str | None]:
        """``stage_um`` whole, and what is wrong with it (``None``: verified).

        A chunk equal to the fill value may legitimately be absent (zarr does not write it), so
        an absent chunk is a problem only when the recorded ``upload.stage_sha256`` disagrees
        (or, in stores written before it was recorded, always).
        """
        where = f"{self.url}/{STAGE}"
        keys = [stage.metadata.encode_chunk_key(c) for c in itertools.product(*(range(n) for n in stage.cdata_shape))]
        absent = [k for k in keys if not self.location.exists(STAGE, k)]
        try:
            values = np.asarray(stage[...])
        except Exception as exc:  # CRC-32C or Blosc failure
            return np.full(stage.shape, np.nan), f"{where}: checksum mismatch (cannot decode: {_one_line(exc)})"
        expected = self.upload.get("stage_sha256")
        if isinstance(expected, str) and sha256(values) == expected:
            return values, None
        if absent:
            return values, f"{where}: chunk {absent[0]} is missing"
        if isinstance(expected, str):
            return values, f"{where}: checksum mismatch"
        return values, None

    # -- tiles ------------------------------------------------------------------
    def describe_tile(self, slice_: int, z: int, channel: int, tile: int) -> str:
        """``"<store>/tiles tile (slice s, channel c, row r, col k, z z)"`` for messages."""
        row, col = self.acquisition.tile_grid(tile)
        return f"{self.url}/{TILES} tile (slice {slice_}, channel {channel}, row {row}, col {col}, z {z})"

    def tile_checksums(self) -> dict[str, str]:
        return dict(self._checksums)

    def section_checksums(self) -> dict[str, str]:
        """One checksum per section (``{"<slice>": sha256}``, see :func:`.ownership.section_checksums`)."""
        return section_checksums(self._checksums)

    def _chunk_exists(self, slice_: int, z: int, channel: int, tile: int) -> bool:
        key = self.tiles.metadata.encode_chunk_key((slice_, z, channel, tile, 0, 0))
        return self.location.exists(self.tiles.path, key)

    def tile_problem(self, slice_: int, z: int, channel: int, tile: int, data: np.ndarray | None) -> str | None:
        """What is wrong with one tile image read as ``data`` (``None``: could not be decoded); ``None`` if fine."""
        key = tile_key(slice_, z, channel, tile)
        if key in self.missing_tiles:
            return None
        expected = self._checksums.get(key)
        if data is not None and expected is not None and sha256(data) == expected:
            return None
        if not self._chunk_exists(slice_, z, channel, tile):
            return "missing"
        if expected is None:
            return "no checksum recorded"
        return "checksum mismatch" if data is not None else "checksum mismatch (chunk cannot be decoded)"

    def _read_channel(self, slice_: int, z: int, channel: int, tile: int) -> np.ndarray | None:
        try:
            return np.asarray(self.tiles[slice_, z, channel, tile])
        except (ValueError, RuntimeError, TypeError):  # CRC-32C mismatch, Blosc failure, wrong size
            return None
        except OSError as exc:
            raise StoreError(
                f"{self.describe_tile(slice_, z, channel, tile)}: cannot read ({_one_line(exc)})"
            ) from None

    def read_tile(self, slice_: int, z: int, tile: int) -> np.ndarray:
        """One raw tile ``(C, H, W)`` of plane ``(slice_, z)``, every channel (uint16), verified.

        Steps read tiles only through this method (partials of it pickle, so
        workers read the tiles they need themselves).

        Raises
        ------
        StoreError
            ``<store>/tiles tile (slice, channel, row, col, z): checksum mismatch`` (or ``missing``)
            when a tile image differs from what the uploader recorded.
        """
        try:
            data: np.ndarray | None = np.asarray(self.tiles[slice_, z, :, tile])
        except (ValueError, RuntimeError, TypeError):
            data = None  # find the damaged channel below
        except OSError as exc:
            raise StoreError(
                f"{self.url}/{TILES}: cannot read slice {slice_} z {z} tile {tile} ({_one_line(exc)})"
            ) from None
        channels = []
        for c in range(len(self.acquisition.channels)):
            plane = data[c] if data is not None else self._read_channel(slice_, z, c, tile)
            problem = self.tile_problem(slice_, z, c, tile, plane)
            if problem is not None:
                raise StoreError(f"{self.describe_tile(slice_, z, c, tile)}: {problem}; re-upload the sample")
            zeros = np.zeros(self.acquisition.tile_shape, tile_dtype(self.acquisition))
            channels.append(plane if plane is not None else zeros)
        return data if data is not None else np.stack(channels)

    def iter_problems(self) -> Iterator[str]:
        """Every problem of every tile image, one line each (reads the whole store)."""
        acq = self.acquisition
        for s, z, t in itertools.product(range(acq.slices), range(acq.optical_sections), range(acq.n_tiles)):
            for c in range(len(acq.channels)):
                problem = self.tile_problem(s, z, c, t, self._read_channel(s, z, c, t))
                if problem is not None:
                    yield f"{self.describe_tile(s, z, c, t)}: {problem}"

    def stage_px(self, slice_: int, z: int = 0) -> np.ndarray:
        """Recorded (y, x) top-left of each tile of a plane, in pixels (T, 2); verified when the store opened."""
        return self.stage_um[slice_, z] / self.acquisition.pixel_size_um


def _reopen(url: str, storage_options: dict[str, Any], require_complete: bool, check_stage: bool) -> RawStore:
    return RawStore(url, storage_options, require_complete=require_complete, check_stage=check_stage)
