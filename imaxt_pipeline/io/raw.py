"""Reader and validator for the generic raw layout (``spec/raw-layout.md``).

Everything is checked before a single byte is written anywhere, so that bad
input fails with one line naming the file and the problem:

- ``acquisition.json`` and ``tiles.csv`` are UTF-8 text (a UTF-8 byte-order mark is
  accepted; UTF-16 and other encodings are errors), within a size limit;
- types and ranges: finite physical sizes, tile shape at most :data:`MAX_TILE_SIDE` px a
  side, grid indices inside the grid, stage positions finite, within
  :data:`MAX_STAGE_UM` and within :data:`STAGE_TOLERANCE_TILES` tile sizes of where
  the nominal grid puts the tile;
- every file is a regular file inside the sample folder (for local folders, also
  after resolving symbolic links), and a single-page 2-D uint16 TIFF of the declared
  shape whose image data lies inside the file. :func:`read_tile` decodes the pixels,
  so a full read (as the uploader does before writing) also catches corrupt data.

Messages never quote the content of a file that is not text we parse.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import posixpath
import stat
from collections.abc import Iterator

import numpy as np
import tifffile
from pydantic import ValidationError

from ..acquisition import Acquisition, RawSample, TileRecord
from ..errors import InputError
from .urls import Location

REQUIRED_COLUMNS = ("slice", "channel", "row", "col", "x_um", "y_um", "file")
MAX_TILE_SIDE = 32768
"""Largest tile height or width accepted, in px."""
MAX_STAGE_UM = 1e9
"""Largest stage coordinate magnitude accepted, in µm (1 km)."""
STAGE_TOLERANCE_TILES = 3.0
"""How far (in tile sizes, plus 10 % of the distance from the first tile) a recorded stage
position may lie from where the nominal grid puts it."""
MAX_JSON_BYTES = 1 << 20
MAX_CSV_BYTES = 1 << 30

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def read_raw_sample(url: str, *, storage_options: dict | None = None, check_tiles: bool = True) -> RawSample:
    """Read and validate a raw sample folder (local path or fsspec URL).

    Parameters
    ----------
    url : str
        The sample folder holding ``acquisition.json``, ``tiles.csv`` and ``tiles/``.
    storage_options : dict, optional
        Passed to fsspec (e.g. ``{"endpoint_url": ...}`` for S3).
    check_tiles : bool
        Also open every TIFF's header to check that it is a single-page 2-D TIFF of
        the declared dtype and shape whose data lies inside the file (no pixel read;
        :func:`read_tile` decodes).

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
    """Read and decode one tile's pixels, checking the file, its dtype and its shape.

    Raises
    ------
    InputError
        If the file is missing, outside the sample folder, not a regular file, not a
        single-page 2-D uint16 TIFF of the declared shape, truncated or corrupt.
    """
    return _open_tiff(loc, rec.file, acq, decode=True)


# -- files -------------------------------------------------------------------------
def _check_file(loc: Location, name: str) -> None:
    """A local file must be a regular file whose real path lies inside the real sample folder."""
    if not loc.is_local:
        return
    path = loc.join(name)
    full = loc.path(name)
    real, root = os.path.realpath(full), os.path.realpath(loc.root)
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        raise InputError(path, "is a symbolic link to a file outside the sample folder")
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    except NotADirectoryError:
        raise InputError(path, "file is missing (a parent is not a folder)") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(mode):
        raise InputError(path, "is not a regular file")


def _read_text(loc: Location, name: str, limit: int) -> str:
    path = loc.join(name)
    _check_file(loc, name)
    try:
        size = loc.fs.size(loc.path(name))
        if size is not None and size > limit:
            raise InputError(path, f"file is {size} bytes, more than the {limit} allowed")
        raw = loc.fs.cat_file(loc.path(name))
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    except IsADirectoryError:
        raise InputError(path, "is not a regular file") from None
    except InputError:
        raise
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > limit:
        raise InputError(path, f"file is more than the {limit} bytes allowed")
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise InputError(path, f"is {encoding} text; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"is not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise InputError(path, "contains NUL characters; is it really a text file?")
    return text


# -- acquisition.json ---------------------------------------------------------------
def _read_acquisition(loc: Location) -> Acquisition:
    path = loc.join("acquisition.json")
    text = _read_text(loc, "acquisition.json", MAX_JSON_BYTES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise InputError(path, "invalid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise InputError(path, f"must hold one JSON object, not {type(data).__name__}")
    try:
        acq = Acquisition.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "object"
        raise InputError(path, f"key {where!r}: {err['msg']}") from None
    for key in ("pixel_size_um", "slice_thickness_um", "overlap"):
        if not math.isfinite(getattr(acq, key)):
            raise InputError(path, f"key {key!r}: must be a finite number")
    if max(acq.tile_shape) > MAX_TILE_SIDE:
        raise InputError(path, f"key 'tile_shape': {list(acq.tile_shape)} is larger than {MAX_TILE_SIDE} px a side")
    return acq


# -- tiles.csv --------------------------------------------------------------------------
def _read_tile_table(loc: Location, acq: Acquisition) -> list[TileRecord]:
    path = loc.join("tiles.csv")
    text = _read_text(loc, "tiles.csv", MAX_CSV_BYTES)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records: list[TileRecord] = []
    lines: list[int] = []
    seen: dict[tuple[int, int, int, int, int], int] = {}
    try:
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(path, f"missing column(s) {', '.join(missing)}")
        for row in reader:
            lineno = reader.line_num
            rec = _parse_row(path, lineno, row)
            _check_ranges(path, lineno, rec, acq)
            key = (rec.slice, rec.z, rec.channel, rec.row, rec.col)
            if key in seen:
                raise InputError(path, f"line {lineno}: duplicated tile {_fmt(key)} (first on line {seen[key]})")
            seen[key] = lineno
            records.append(rec)
            lines.append(lineno)
    except csv.Error as exc:
        raise InputError(path, f"line {reader.line_num + 1}: not valid CSV ({exc})") from None
    for key in _expected_keys(acq):
        if key not in seen:
            raise InputError(path, f"missing tile {_fmt(key)}")
    _check_stage_grid(path, records, lines, acq)
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
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(path, f"line {lineno}: bad value ({_short(str(exc))})") from None
    if not np.isfinite([rec.x_um, rec.y_um]).all():
        raise InputError(path, f"line {lineno}: stage position is not finite")
    for name, value in (("x_um", rec.x_um), ("y_um", rec.y_um)):
        if abs(value) > MAX_STAGE_UM:
            raise InputError(path, f"line {lineno}: stage position {name}={value:g} is beyond ±{MAX_STAGE_UM:g} µm")
    _check_relative_path(path, lineno, rec.file)
    return rec


def _check_relative_path(path: str, lineno: int, file: str) -> None:
    norm = posixpath.normpath(file.replace("\\", "/"))
    if not file or file.startswith(("/", "\\")) or "://" in file or norm == ".." or norm.startswith("../"):
        raise InputError(path, f"line {lineno}: file {_short(file)!r} escapes the sample folder")
    if norm in (".", "acquisition.json", "tiles.csv") or any(ord(ch) < 32 for ch in file):
        raise InputError(path, f"line {lineno}: file {_short(file)!r} is not a tile file name")


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


def _check_stage_grid(path: str, records: list[TileRecord], lines: list[int], acq: Acquisition) -> None:
    """Every stage position lies within a few tile sizes of where the nominal grid puts it.

    The grid's origin is the median over all tiles (robust to a few wild values), and
    each axis' direction is that of the median step between neighbours, so stages
    whose axes run against the grid are accepted.
    """
    if not records:
        return
    idx = np.array([(r.row, r.col) for r in records], dtype=np.float64)
    pos = np.array([(r.y_um, r.x_um) for r in records], dtype=np.float64)
    tile_um = np.asarray(acq.tile_shape, dtype=np.float64) * acq.pixel_size_um
    step = tile_um * (1.0 - acq.overlap)
    sign = np.ones(2)
    for axis in (0, 1):
        other = 1 - axis
        order = np.lexsort((idx[:, axis], idx[:, other]))
        di = np.diff(idx[order, axis])
        same_line = (np.diff(idx[order, other]) == 0) & (di == 1)
        if same_line.any():
            sign[axis] = 1.0 if np.median(np.diff(pos[order, axis])[same_line]) >= 0 else -1.0
    nominal = idx * step * sign
    origin = np.median(pos - nominal, axis=0)
    deviation = np.abs(pos - origin - nominal)
    tolerance = STAGE_TOLERANCE_TILES * tile_um + 0.1 * np.abs(nominal)
    bad = np.flatnonzero((deviation > tolerance).any(axis=1))
    if bad.size:
        i = int(bad[0])
        rec = records[i]
        axis = int(np.argmax(deviation[i] / tolerance))
        name = ("y_um", "x_um")[axis]
        value = (rec.y_um, rec.x_um)[axis]
        raise InputError(
            path,
            f"line {lines[i]}: stage position {name}={value:g} is "
            f"{deviation[i, axis] / tile_um[axis]:.3g} tile sizes from where the grid puts row="
            f"{rec.row} col={rec.col} (at most {STAGE_TOLERANCE_TILES:g} allowed)",
        )


# -- TIFF files ---------------------------------------------------------------------
def _check_tile_header(loc: Location, rec: TileRecord, acq: Acquisition) -> None:
    _open_tiff(loc, rec.file, acq, decode=False)


def _open_tiff(loc: Location, name: str, acq: Acquisition, *, decode: bool) -> np.ndarray:
    path = loc.join(name)
    _check_file(loc, name)
    try:
        with loc.fs.open(loc.path(name), "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(0)
            with tifffile.TiffFile(fh) as tif:
                if len(tif.pages) != 1:
                    raise InputError(path, f"expected a single-page TIFF, found {len(tif.pages)} pages")
                page = tif.pages[0]
                series_shape = tuple(tif.series[0].shape) if tif.series else tuple(page.shape)
                if len(series_shape) != 2 or len(page.shape) != 2:
                    raise InputError(path, f"shape {series_shape} but a 2-D tile {tuple(acq.tile_shape)} is required")
                if page.dtype is None:
                    raise InputError(path, "TIFF page has no pixel data type")
                _check_array(path, page.dtype, page.shape, acq)
                ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
                if not ends or min(page.databytecounts) <= 0 or max(ends) > size:
                    raise InputError(path, f"truncated TIFF (image data ends past the file's {size} bytes)")
                img = page.asarray() if decode else np.empty(0, np.uint16)
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise InputError(path, f"not a readable TIFF ({_reason(exc)})") from None
    if decode:
        _check_array(path, img.dtype, img.shape, acq)
    return img


def _reason(exc: BaseException) -> str:
    """A short description of a reader error that never quotes file content."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    for marker in ("b'", 'b"', ": header", "\\x"):
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    text = text.strip(" :=,")
    text = "".join(ch for ch in text if ch.isprintable())[:80]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short(text: str, limit: int = 80) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


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
