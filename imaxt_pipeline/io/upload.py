"""Upload a raw sample folder into a raw Zarr store (see :mod:`.rawzarr`).

The upload is resumable: on a re-run, tiles already in the store are read
back and compared by SHA-256 with the source; only missing or different
tiles are written. The store is marked complete only after every tile has
been verified, so readers never see a half-upload as finished.
"""

from __future__ import annotations

import datetime as _dt
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zarr
from tqdm.auto import tqdm

from .. import __version__
from ..errors import StoreError
from ..acquisition import RawSample, TileRecord
from .provenance import software_versions, utcnow
from .raw import read_raw_sample, read_tile
from .rawzarr import COMPRESSOR, TILE_DIMS, sha256, tile_key
from .urls import Location


@dataclass
class UploadReport:
    """What an upload did: tiles written, tiles verified in place, totals."""

    dest: str
    written: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    nbytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        mb = self.nbytes / 1e6
        rate = mb / self.seconds if self.seconds else float("nan")
        return (f"uploaded to {self.dest}: {len(self.written)} tiles written, {len(self.verified)} already "
                f"present and verified, {mb:.1f} MB in {self.seconds:.1f} s ({rate:.1f} MB/s)")


def upload(
    raw_url: str,
    dest_url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    raw_storage_options: dict[str, Any] | None = None,
    workers: int = 8,
    progress: bool = True,
    on_tile: Callable[[str], None] | None = None,
) -> UploadReport:
    """Upload the raw sample at ``raw_url`` to a Zarr store at ``dest_url``.

    Parameters
    ----------
    raw_url : str
        Raw sample folder (generic layout), local or fsspec URL.
    dest_url : str
        Destination store, e.g. ``/data/raw/s1.zarr`` or ``s3://bucket/raw/s1.zarr``.
    storage_options : dict, optional
        fsspec options for the destination (``endpoint_url`` for S3-compatible stores).
    raw_storage_options : dict, optional
        fsspec options for the source; defaults to ``storage_options`` when the
        source uses the same protocol.
    workers : int
        Tiles uploaded concurrently (I/O bound, so threads).
    progress : bool
        Show a progress bar.
    on_tile : callable, optional
        Called with the tile key after each tile is written (used to test
        interruption and resumption).

    Raises
    ------
    InputError
        If the raw sample breaks the layout contract (nothing is written).
    StoreError
        If the destination holds a different sample.
    """
    start = _dt.datetime.now(_dt.timezone.utc)
    if raw_storage_options is None and raw_url.split("://")[0] == dest_url.split("://")[0]:
        raw_storage_options = storage_options
    sample = read_raw_sample(raw_url, storage_options=raw_storage_options)
    dest = Location(dest_url, storage_options)
    group = _open_or_create(dest, sample)
    tiles = group["tiles"]
    src = Location(raw_url, raw_storage_options)
    report = UploadReport(dest=dest.url)
    checksums: dict[str, str] = {}
    acq = sample.acquisition

    def transfer(rec: TileRecord) -> None:
        t = acq.tile_index(rec.row, rec.col)
        key = tile_key(rec.slice, rec.z, rec.channel, t)
        data = read_tile(src, rec, acq)
        digest = sha256(data)
        index = (rec.slice, rec.z, rec.channel, t)
        if _chunk_exists(dest, tiles, index) and sha256(np.asarray(tiles[index])) == digest:
            report.verified.append(key)
        else:
            tiles[index] = data
            report.written.append(key)
            report.nbytes += data.nbytes
            if on_tile is not None:
                on_tile(key)
        checksums[key] = digest

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, tqdm(
        total=len(sample.records), disable=not progress, unit="tile", desc=f"upload {acq.sample}"
    ) as bar:
        futures = [pool.submit(transfer, rec) for rec in sample.records]
        try:
            for fut in futures:
                fut.result()
                bar.update()
        except BaseException:
            # Stop at once: what was written stays valid, and a re-run resumes from it.
            for fut in futures:
                fut.cancel()
            raise

    end = _dt.datetime.now(_dt.timezone.utc)
    report.seconds = (end - start).total_seconds()
    _mark_complete(group, sample, checksums, start, end, report)
    return report


def _open_or_create(dest: Location, sample: RawSample) -> zarr.Group:
    acq = sample.acquisition
    store = dest.zarr_store()
    try:
        group = zarr.open_group(store, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        group = None
    if group is not None:
        existing = group.attrs.get("imaxt", {}).get("acquisition")
        if existing != acq.model_dump(mode="json"):
            raise StoreError(f"{dest.url}: store already holds a different sample; choose another destination")
        return group
    group = zarr.open_group(store, mode="w")
    h, w = acq.tile_shape
    shape = (acq.slices, acq.optical_sections, len(acq.channels), acq.n_tiles, h, w)
    group.create_array("tiles", shape=shape, chunks=(1, 1, 1, 1, h, w), dtype="uint16",
                       compressors=[COMPRESSOR], fill_value=0, dimension_names=TILE_DIMS)
    group.create_array("stage_um", data=sample.stage_um, dimension_names=("slice", "z", "tile", "yx"))
    group.attrs["imaxt"] = {"acquisition": acq.model_dump(mode="json"),
                            "upload": {"complete": False, "source": sample.root}, "provenance": []}
    return group


def _chunk_exists(dest: Location, array: zarr.Array, index: tuple[int, ...]) -> bool:
    key = array.metadata.encode_chunk_key((*index, 0, 0))
    return dest.fs.exists(dest.path(array.path, key))


def _mark_complete(group: zarr.Group, sample: RawSample, checksums: dict[str, str],
                   start: _dt.datetime, end: _dt.datetime, report: UploadReport) -> None:
    meta = dict(group.attrs["imaxt"])
    entry = {
        "name": "upload",
        "software": software_versions(),
        "parameters": {"compressor": "blosc-zstd-5-bitshuffle", "chunks": "one per tile"},
        "inputs": {"source": sample.root, "n_tiles": len(checksums)},
        "outputs": ["tiles", "stage_um"],
        "metrics": {"written": len(report.written), "verified": len(report.verified), "bytes": report.nbytes},
        "start": utcnow(start), "end": utcnow(end), "host": socket.gethostname(),
        "version": __version__,
    }
    meta["upload"] = {"complete": True, "source": sample.root, "tile_sha256": dict(sorted(checksums.items()))}
    meta["provenance"] = [*meta.get("provenance", []), entry]
    group.attrs["imaxt"] = meta
