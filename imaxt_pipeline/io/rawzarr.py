"""The raw Zarr store written by the uploader, and read by the pipeline.

Layout (zarr v3)::

    <store>/zarr.json        root group; attrs["imaxt"] = {"acquisition": {...},
                             "upload": {"complete": bool, "source": url,
                             "tile_sha256": {"s/z/c/t": hex}}, "provenance": [...]}
    <store>/tiles            uint16 (slice, z, channel, tile, y, x), one chunk per tile image
    <store>/stage_um         float64 (slice, z, tile, 2): recorded (y, x) stage positions in µm
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from ..acquisition import Acquisition
from ..errors import StoreError
from .urls import Location

TILE_DIMS = ("slice", "z", "channel", "tile", "y", "x")
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle)


def tile_key(slice_: int, z: int, channel: int, tile: int) -> str:
    """Key of one tile in checksum tables: ``"slice/z/channel/tile"``."""
    return f"{slice_}/{z}/{channel}/{tile}"


def sha256(array: np.ndarray) -> str:
    """Checksum of an array's bytes in C order (dtype-exact)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


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
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, *, require_complete: bool = True
    ) -> None:
        self.location = Location(url, storage_options)
        try:
            self.group = zarr.open_group(self.location.zarr_store(read_only=True), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise StoreError(f"{url}: no raw Zarr store here (run `imaxt upload` first)") from None
        meta = cast(dict[str, Any], self.group.attrs.get("imaxt", {}))
        if "acquisition" not in meta:
            raise StoreError(f"{url}: not an imaxt raw store (no imaxt.acquisition in attrs)")
        if require_complete and not meta.get("upload", {}).get("complete"):
            raise StoreError(f"{url}: upload is not complete; re-run `imaxt upload` to finish it")
        self.acquisition = Acquisition.model_validate(meta["acquisition"])
        tiles, stage = self.group["tiles"], self.group["stage_um"]
        if not (isinstance(tiles, zarr.Array) and isinstance(stage, zarr.Array)):
            raise StoreError(f"{url}: tiles and stage_um must be arrays")
        self.tiles: zarr.Array[Any] = tiles
        self.stage_um = np.asarray(stage[...])
        self.attrs = meta

    def __reduce__(self) -> tuple[Any, ...]:
        return (RawStore, (self.location.url, self.location.storage_options))

    @property
    def url(self) -> str:
        return self.location.url

    def read_tile(self, slice_: int, z: int, tile: int) -> np.ndarray:
        """One raw tile ``(C, H, W)`` of plane ``(slice_, z)``, every channel (uint16).

        Steps read tiles only through this method (partials of it pickle, so
        workers read the tiles they need themselves).
        """
        return np.asarray(self.tiles[slice_, z, :, tile])

    def stage_px(self, slice_: int, z: int = 0) -> np.ndarray:
        """Recorded (y, x) top-left of each tile of a plane, in pixels (T, 2)."""
        return self.stage_um[slice_, z] / self.acquisition.pixel_size_um

    def tile_checksums(self) -> dict[str, str]:
        return dict(self.attrs.get("upload", {}).get("tile_sha256", {}))
