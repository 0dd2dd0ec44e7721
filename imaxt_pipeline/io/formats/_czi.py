"""Zeiss Axioscan slide-scanner mosaics: one ``.czi`` (ZISRAW) file, read through ``aicspylibczi``.

The reader maps a CZI mosaic onto the generic acquisition model:

- every scene (``S``) is one section (a slice), in scene order; channels (``C``) and focal
  planes (``Z``) are the acquisition's channels and optical sections;
- every mosaic tile (``M``) is one tile; its stage position is the ``StageXPosition`` /
  ``StageYPosition`` (µm, the tile's centre, as ZEN records it) of its subblock metadata, so the
  generic top-left is ``(y, x) = (StageY, StageX) - tile size / 2``; a CZI without them is refused;
- the grid indices come from the positions: ``row = (y - min y) / step_y`` with the step the median
  difference of neighbouring distinct positions (jitter below a quarter tile ignored), per scene;
- pixel size from ``Metadata/Scaling/Items/Distance[@Id='X']`` (metres), channel names from
  ``Information/Image/Dimensions/Channels/Channel/@Name``; the section thickness is not in a CZI
  (``slice_thickness_um``, default 1 µm, noted);
- ``Gray16`` pixels as they are, ``Gray8`` widened to uint16; colour (brightfield ``Bgr24``) is refused;
- grid places without a tile are tiles never acquired (``missing_tiles``), not errors.

``aicspylibczi`` (the ``formats`` extra) is imported only when a CZI file is read.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import defaultdict
from typing import Any

import numpy as np

from ...acquisition import Acquisition, TileRecord
from ...errors import InputError
from ..rawzarr import tile_key
from ..urls import Location
from ._base import Reader, SourceSample, file_stem, first_error

MAGIC = b"ZISRAWFILE"
"""First bytes of every CZI file."""
DEFAULT_THICKNESS_UM = 1.0
"""Section thickness assumed when none is given (a CZI does not record it)."""
_PIXEL_TYPES = {"gray16": np.uint16, "gray8": np.uint8}
_SINGLE_DIMS = ("T", "R", "I", "H", "V", "B")
"""CZI dimensions that must have a single index (no time series, rotations, illuminations, ...)."""


class CziReader(Reader):
    """Zeiss Axioscan CZI mosaics (a ``.czi`` file: scenes = sections, mosaic tiles with stage positions)."""

    name = "czi"
    summary = "a Zeiss .czi file (ZISRAW)"
    options = {
        "pixel_size_um": "pixel size in µm, overriding the CZI's Scaling",
        "slice_thickness_um": f"section thickness in µm (not recorded in a CZI; default {DEFAULT_THICKNESS_UM:g})",
        "channel_names": "channel names in channel order (default: the CZI's channel names)",
        "sample": "sample name (default: the file name without .czi)",
        "check_tiles": "accepted for symmetry with the generic reader; tiles are checked when decoded",
    }

    def detect(self, location: Location) -> bool:
        return _is_czi(location)

    def read(self, location: Location, **options: Any) -> SourceSample:
        self.check_options(options)
        if not _is_czi(location):
            raise InputError(location.url, "is not a CZI file (no ZISRAWFILE header)")
        return _read(self, location, options)

    def read_tile(self, sample: SourceSample, record: TileRecord) -> np.ndarray:
        assert sample.location is not None
        loc = sample.location
        dims = dict(sample.details["subblock_dims"][record.file])
        shape = sample.acquisition.tile_shape
        try:
            with loc.fs.open(loc.root, "rb") as fh:
                image, _ = _czi_file(fh).read_image(**dims)
        except FileNotFoundError:
            raise InputError(loc.url, "file is missing") from None
        except Exception as exc:  # libCZI raises many types for corrupt files
            raise InputError(loc.url, f"subblock {record.file} cannot be decoded ({_one_line(exc)})") from None
        pixels = np.asarray(image)
        if pixels.size != shape[0] * shape[1] or pixels.dtype not in (np.uint16, np.uint8):
            raise InputError(
                loc.url, f"subblock {record.file} decodes to {pixels.dtype} {pixels.shape}, not a {shape} grey tile"
            )
        return np.ascontiguousarray(pixels.reshape(shape).astype(np.uint16, copy=False))


def _is_czi(loc: Location) -> bool:
    try:
        if not loc.fs.isfile(loc.root):
            return False
        with loc.fs.open(loc.root, "rb") as fh:
            return bytes(fh.read(len(MAGIC))) == MAGIC
    except (OSError, ValueError):
        return False


def _czi_file(fh: Any) -> Any:
    try:
        from aicspylibczi import CziFile
    except ImportError:  # pragma: no cover - the formats extra is not installed
        raise ImportError("reading CZI files needs aicspylibczi: pip install 'imaxt-pipeline[formats]'") from None
    return CziFile(fh)


def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


def _read(reader: CziReader, loc: Location, options: dict[str, Any]) -> SourceSample:
    where = loc.url
    notes: list[str] = []
    try:
        with loc.fs.open(loc.root, "rb") as fh:
            czi = _czi_file(fh)
            shapes = czi.get_dims_shape()
            pixel_type = str(czi.pixel_type).lower()
            meta = czi.meta
            subblocks = czi.read_subblock_metadata(unified_xml=False)
    except InputError:
        raise
    except ImportError:
        raise
    except Exception as exc:  # libCZI raises many types for truncated or corrupt files
        raise InputError(where, f"not a readable CZI file ({_one_line(exc)})") from None
    if pixel_type not in _PIXEL_TYPES:
        raise InputError(where, f"pixel type {pixel_type} is not supported (grey Gray8 or Gray16 tiles are)")

    tile_shape = _tile_shape(where, shapes)
    for dim in _SINGLE_DIMS:
        sizes = {s[dim][1] - s[dim][0] for s in shapes if dim in s}
        if sizes and max(sizes) > 1:
            raise InputError(where, f"{max(sizes)} indices along CZI dimension {dim}; one is supported")

    pixel, pixel_from = _pixel_size(where, meta, options.get("pixel_size_um"), notes)
    half = np.array(tile_shape, np.float64) * pixel / 2

    # (scene, z, channel, m) -> centre (y, x) in µm, from every layer-0 subblock
    found: dict[tuple[int, int, int, int], tuple[float, float]] = {}
    dims_of: dict[tuple[int, int, int, int], dict[str, int]] = {}
    for dims, xml in subblocks:
        dims = {str(k): int(v) for k, v in dict(dims).items()}
        if "M" not in dims:
            continue  # pyramid or overview subblocks carry no mosaic index
        key = (dims.get("S", 0), dims.get("Z", 0), dims.get("C", 0), dims["M"])
        label = "S={} Z={} C={} M={}".format(*key)
        if key in found:
            raise InputError(where, f"two subblocks share {label}")
        found[key] = _stage_centre(where, label, xml)
        dims_of[key] = dims
    if not found:
        raise InputError(where, "no mosaic tiles (subblocks with an M index)")

    scenes = sorted({k[0] for k in found})
    zs = sorted({k[1] for k in found})
    chans = sorted({k[2] for k in found})
    channels = _channels(where, meta, len(chans), options.get("channel_names"), notes)

    # one position per (scene, m): every channel and plane of a tile is one stage move
    tiles: dict[int, dict[int, tuple[float, float]]] = defaultdict(dict)
    for (s, _z, _c, m), centre in sorted(found.items()):
        tiles[s].setdefault(m, centre)
    step = [_step([p[a] for sc in tiles.values() for p in sc.values()], tile_shape[a] * pixel) for a in (0, 1)]
    grids = {s: _grid(where, s, tiles[s], step) for s in scenes}
    rows = max(r for g in grids.values() for r, _ in g.values()) + 1
    cols = max(c for g in grids.values() for _, c in g.values()) + 1

    thickness = options.get("slice_thickness_um")
    if thickness is None:
        thickness = DEFAULT_THICKNESS_UM
        notes.append(f"section thickness not recorded in a CZI: {thickness:g} µm assumed (option slice_thickness_um)")
    sample_name = str(options.get("sample") or file_stem(loc.root, r"\.czi", "czi"))
    overlaps = [1.0 - s / (side * pixel) for s, side in zip(step, tile_shape, strict=True) if s]
    overlap = float(min(max(float(np.mean(overlaps)), 0.0), 0.95)) if overlaps else 0.0
    try:
        acq = Acquisition(
            sample=sample_name,
            modality="AXIO",
            pixel_size_um=pixel,
            slice_thickness_um=float(thickness),
            tile_shape=tile_shape,
            overlap=overlap,
            channels=channels,
            rows=rows,
            cols=cols,
            slices=len(scenes),
            optical_sections=len(zs),
        )
    except ValueError as exc:
        raise InputError(where, f"does not describe a valid acquisition ({first_error(exc)})") from None

    stage = np.zeros((acq.slices, acq.optical_sections, acq.n_tiles, 2), np.float64)
    records: list[TileRecord] = []
    missing: list[str] = []
    subblock_dims: dict[str, dict[str, int]] = {}
    for si, s in enumerate(scenes):
        grid = grids[s]
        origin = np.array([min(p[0] for p in tiles[s].values()), min(p[1] for p in tiles[s].values())]) - half
        by_cell = {rc: m for m, rc in grid.items()}
        for row in range(rows):
            for col in range(cols):
                t = acq.tile_index(row, col)
                cell = by_cell.get((row, col))
                if cell is None:  # never acquired: where the grid puts it
                    pos = origin + np.array([row * (step[0] or 0.0), col * (step[1] or 0.0)])
                else:
                    pos = np.asarray(tiles[s][cell]) - half
                for zi, z in enumerate(zs):
                    stage[si, zi, t] = pos
                    for ci, c in enumerate(chans):
                        if cell is None or (s, z, c, cell) not in found:
                            missing.append(tile_key(si, zi, ci, t))
                            continue
                        name = f"S{s}/Z{z}/C{c}/M{cell}"
                        subblock_dims[name] = dims_of[(s, z, c, cell)]
                        records.append(
                            TileRecord(
                                slice=si, z=zi, channel=ci, row=row, col=col,
                                x_um=float(pos[1]), y_um=float(pos[0]), file=name,
                            )
                        )  # fmt: skip
    missing.sort(key=lambda k: tuple(int(p) for p in k.split("/")))
    if missing:
        planned = acq.slices * acq.optical_sections * len(channels) * acq.n_tiles
        notes.append(f"{len(missing)} of {planned} grid tile images have no subblock (recorded as missing tiles)")
    details = {
        "scenes": scenes,
        "pixel_type": pixel_type,
        "pixel_size_from": pixel_from,
        "stage_step_um": [v or None for v in step],
        "subblock_dims": subblock_dims,
    }
    return SourceSample(
        root=loc.url,
        acquisition=acq,
        records=records,
        stage_um=stage,
        format=reader.name,
        missing_tiles=missing,
        notes=notes,
        details=details,
        reader=reader,
        location=loc,
    )


def _tile_shape(where: str, shapes: list[dict[str, tuple[int, int]]]) -> tuple[int, int]:
    found = {(s["Y"][1] - s["Y"][0], s["X"][1] - s["X"][0]) for s in shapes if "X" in s and "Y" in s}
    if not found:
        raise InputError(where, "no X/Y extent in the subblock directory")
    if len(found) > 1:
        raise InputError(where, f"tiles of different sizes {sorted(found)}; one tile size is supported")
    return next(iter(found))


def _stage_centre(where: str, label: str, xml: str) -> tuple[float, float]:
    try:
        root = ET.fromstring(xml) if xml and xml.strip() else None
    except ET.ParseError:
        raise InputError(where, f"subblock {label}: its metadata is not XML") from None
    values = []
    for tag in ("StageYPosition", "StageXPosition"):
        node = root.find(f".//{tag}") if root is not None else None
        try:
            value = float((node.text or "").strip()) if node is not None else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InputError(
                where, f"subblock {label} has no {tag} in its metadata (a CZI without stage positions is not supported)"
            )
        values.append(value)
    return values[0], values[1]


def _pixel_size(where: str, meta: ET.Element, override: Any, notes: list[str]) -> tuple[float, str]:
    if override is not None:
        value = float(override)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"pixel_size_um must be a positive number, got {override!r}")
        return value, "override"
    sizes = {}
    for axis in ("X", "Y"):
        node = meta.find(f".//Scaling/Items/Distance[@Id='{axis}']/Value")
        try:
            sizes[axis] = float((node.text or "").strip()) * 1e6 if node is not None else math.nan
        except ValueError:
            sizes[axis] = math.nan
    if not math.isfinite(sizes["X"]) or sizes["X"] <= 0:
        raise InputError(
            where, "no pixel size (Scaling/Items/Distance X) in the metadata; give it with --pixel-size-um"
        )
    if math.isfinite(sizes["Y"]) and not math.isclose(sizes["X"], sizes["Y"], rel_tol=1e-6):
        notes.append(f"pixel size X is {sizes['X']:g} µm but Y is {sizes['Y']:g} µm; X is used")
    return sizes["X"], "Scaling"


def _channels(where: str, meta: ET.Element, n: int, override: Any, notes: list[str]) -> list[str]:
    if override is not None:
        names = [str(v) for v in override]
        if len(names) != n:
            raise ValueError(f"channel_names has {len(names)} names but {where} has {n} channels")
        return names
    nodes = meta.findall(".//Information/Image/Dimensions/Channels/Channel")
    names = [str(node.get("Name") or node.findtext("Fluor") or "").strip() for node in nodes]
    if len(names) != n or not all(names) or len(set(names)) != n:
        notes.append(f"{len(nodes)} channel names in the metadata for {n} channels: named ch01, ch02, ...")
        return [f"ch{c:02d}" for c in range(1, n + 1)]
    return names


def _step(values: list[float], tile_um: float) -> float:
    """Grid step in µm along one axis: median difference of neighbouring distinct positions (0 for one position)."""
    diffs = np.diff(np.sort(np.asarray(values, np.float64)))
    diffs = diffs[diffs > 0.25 * tile_um]
    return float(np.median(diffs)) if diffs.size else 0.0


def _grid(
    where: str, scene: int, tiles: dict[int, tuple[float, float]], step: list[float]
) -> dict[int, tuple[int, int]]:
    pos = np.array(list(tiles.values()), np.float64)
    low = pos.min(axis=0)
    grid: dict[int, tuple[int, int]] = {}
    seen: dict[tuple[int, int], int] = {}
    for m, (y, x) in tiles.items():
        rc = tuple(int(round((v - lo) / st)) if st else 0 for v, lo, st in zip((y, x), low, step, strict=True))
        cell = (rc[0], rc[1])
        if cell in seen:
            raise InputError(where, f"scene {scene}: stage positions of tiles M={seen[cell]} and M={m} both give row "
                                    f"{cell[0]} col {cell[1]}")  # fmt: skip
        seen[cell] = m
        grid[m] = cell
    return grid
