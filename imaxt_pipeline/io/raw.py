"""Reader and validator for the generic raw layout (``spec/raw-layout.md``).

Everything is checked before a single byte is written anywhere, so that bad
input fails with one line naming the file and the problem.
"""

from __future__ import annotations

import csv
import json
import posixpath
from typing import Iterator

import numpy as np
import tifffile
from pydantic import ValidationError

from ..errors import InputError
from ..acquisition import Acquisition, RawSample, TileRecord
from .urls import Location

REQUIRED_COLUMNS = ("slice", "channel", "row", "col", "x_um", "y_um", "file")


def read_raw_sample(url: str, *, storage_options: dict | None = None, check_tiles: bool = True) -> RawSample:
    """Read and validate a raw sample folder (local path or fsspec URL).

    Parameters
    ----------
    url : str
        The sample folder holding ``acquisition.json``, ``tiles.csv`` and ``tiles/``.
    storage_options : dict, optional
        Passed to fsspec (e.g. ``{"endpoint_url": ...}`` for S3).
    check_tiles : bool
        Also open every TIFF header to check dtype and shape (cheap: no pixel read).

    Raises
    ------
    InputError
        On the first contract violation, naming the file and the problem.
    """
    loc = Location(url, storage_options)
    acq = _read_acquisition(loc)
    records = _read_tile_table(loc, acq)
    if check_tiles:
        for rec in records:
            _check_tile_header(loc, rec, acq)
    stage = np.zeros((acq.slices, acq.optical_sections, acq.n_tiles, 2), dtype=np.float64)
    for rec in records:
        if rec.channel == 0:
            stage[rec.slice, rec.z, acq.tile_index(rec.row, rec.col)] = (rec.y_um, rec.x_um)
    return RawSample(root=loc.url, acquisition=acq, records=records, stage_um=stage)


def read_tile(loc: Location, rec: TileRecord, acq: Acquisition) -> np.ndarray:
    """Read one tile's pixels, checking dtype and shape."""
    path = loc.join(rec.file)
    try:
        with loc.fs.open(loc.path(rec.file), "rb") as fh:
            img = tifffile.imread(fh)
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise InputError(path, f"not a readable TIFF ({exc})") from None
    _check_array(path, img.dtype, img.shape, acq)
    return img


def _read_acquisition(loc: Location) -> Acquisition:
    path = loc.join("acquisition.json")
    try:
        text = loc.fs.cat_file(loc.path("acquisition.json")).decode()
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return Acquisition.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "object"
        raise InputError(path, f"key {where!r}: {err['msg']}") from None


def _read_tile_table(loc: Location, acq: Acquisition) -> list[TileRecord]:
    path = loc.join("tiles.csv")
    try:
        text = loc.fs.cat_file(loc.path("tiles.csv")).decode()
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    records = []
    seen: dict[tuple[int, int, int, int, int], int] = {}
    for lineno, row in enumerate(reader, start=2):
        rec = _parse_row(path, lineno, row)
        _check_ranges(path, lineno, rec, acq)
        key = (rec.slice, rec.z, rec.channel, rec.row, rec.col)
        if key in seen:
            raise InputError(path, f"line {lineno}: duplicated tile {_fmt(key)} (first on line {seen[key]})")
        seen[key] = lineno
        records.append(rec)
    for key in _expected_keys(acq):
        if key not in seen:
            raise InputError(path, f"missing tile {_fmt(key)}")
    return records


def _parse_row(path: str, lineno: int, row: dict[str, str]) -> TileRecord:
    try:
        rec = TileRecord(
            slice=int(row["slice"]),
            z=int(row.get("z") or 0),
            channel=int(row["channel"]),
            row=int(row["row"]),
            col=int(row["col"]),
            x_um=float(row["x_um"]),
            y_um=float(row["y_um"]),
            file=(row["file"] or "").strip(),
        )
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"line {lineno}: bad value ({exc})") from None
    if not np.isfinite([rec.x_um, rec.y_um]).all():
        raise InputError(path, f"line {lineno}: stage position is not finite")
    _check_relative_path(path, lineno, rec.file)
    return rec


def _check_relative_path(path: str, lineno: int, file: str) -> None:
    norm = posixpath.normpath(file.replace("\\", "/"))
    if not file or file.startswith(("/", "\\")) or "://" in file or norm == ".." or norm.startswith("../"):
        raise InputError(path, f"line {lineno}: file {file!r} escapes the sample folder")


def _check_ranges(path: str, lineno: int, rec: TileRecord, acq: Acquisition) -> None:
    limits = {
        "slice": (rec.slice, acq.slices),
        "z": (rec.z, acq.optical_sections),
        "channel": (rec.channel, len(acq.channels)),
        "row": (rec.row, acq.rows),
        "col": (rec.col, acq.cols),
    }
    for name, (value, n) in limits.items():
        if not 0 <= value < n:
            raise InputError(path, f"line {lineno}: {name}={value} outside 0..{n - 1}")


def _check_tile_header(loc: Location, rec: TileRecord, acq: Acquisition) -> None:
    path = loc.join(rec.file)
    try:
        with loc.fs.open(loc.path(rec.file), "rb") as fh, tifffile.TiffFile(fh) as tif:
            if len(tif.pages) != 1:
                raise InputError(path, f"expected a single-page TIFF, found {len(tif.pages)} pages")
            page = tif.pages[0]
            dtype, shape = page.dtype, page.shape
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"not a readable TIFF ({exc})") from None
    _check_array(path, dtype, shape, acq)


def _check_array(path: str, dtype: np.dtype, shape: tuple[int, ...], acq: Acquisition) -> None:
    if np.dtype(dtype) != np.uint16:
        raise InputError(path, f"dtype {np.dtype(dtype)} but uint16 is required")
    if tuple(shape) != tuple(acq.tile_shape):
        raise InputError(path, f"shape {tuple(shape)} but acquisition.json says tile_shape {tuple(acq.tile_shape)}")


def _expected_keys(acq: Acquisition) -> Iterator[tuple[int, int, int, int, int]]:
    for s in range(acq.slices):
        for z in range(acq.optical_sections):
            for c in range(len(acq.channels)):
                for r in range(acq.rows):
                    for col in range(acq.cols):
                        yield (s, z, c, r, col)


def _fmt(key: tuple[int, int, int, int, int]) -> str:
    s, z, c, r, col = key
    return f"slice={s} z={z} channel={c} row={r} col={col}"
