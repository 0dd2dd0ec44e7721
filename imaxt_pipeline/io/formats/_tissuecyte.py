"""TissueVision TissueCyte (STPT) acquisitions: ``Mosaic_*.txt`` + tile files (``spec/tissuecyte.md``).

The reader maps the instrument's own layout onto the generic acquisition model:

- the root ``Mosaic_<SampleID>.txt`` gives the header; one folder ``<SampleID>-NNNN`` per
  physical section (the folders present are the sections, whatever ``sections`` says), each
  with its own ``Mosaic_<SampleID>-NNNN.txt`` (header, ``startnum``, ``XPos``/``YPos`` lines);
- stage positions are 0.1 µm; stage X runs along image rows, reversed, stage Y along image
  columns, so a tile's generic position is ``y_um = -X / 10``, ``x_um = Y / 10`` (only differences
  matter) and its grid index ``row = (max X - X) / step_X``, ``col = (Y - min Y) / step_Y`` with
  the steps the median non-zero difference of consecutive positions;
- tile ``t`` (acquisition order) of optical layer ``z`` of a section is the file
  ``<prefix>-<startnum + t + z * mrows * mcolumns>_<CC>.tif`` (or ``.tif.gz``), ``CC`` the
  1-based channel; the prefix comes from the section's own ``acqDate`` (it changes after a
  restart), and files are matched by ``-<N>_<CC>.tif`` whatever their prefix;
- a planned tile without a file was never acquired: it is listed in ``missing_tiles``, not an error.

While the instrument is still acquiring, ``landed_sections`` (1-based folder numbers) reads only
those sections: the acquisition then has the *planned* sections (the root ``sections`` key, or
the last landed folder if more), section ``N`` is slice ``N - 1``, and every tile of a section not
landed yet is a missing tile (stage positions copied from the first landed section). The
acquisition metadata (hence the sample's identity) stays the same as sections land, so the
uploader adds each new section to the same raw store; the stage step (the overlap) comes from the
first landed section alone for the same reason.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import posixpath
import re
from collections import defaultdict
from typing import Any

import numpy as np
import tifffile

from ...acquisition import Acquisition, TileRecord
from ...errors import InputError
from ..rawzarr import tile_key
from ..urls import Location
from ._base import Reader, SourceSample, first_error
from ._mosaic import TILE_PREFIX_FORMAT, MosaicFile, read_mosaic

ORIENTATIONS = {
    "identity": lambda a: a,
    "flipud": np.flipud,
    "fliplr": np.fliplr,
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "transpose": lambda a: a.T,
    "antitranspose": lambda a: np.rot90(a, 2).T,
}
"""How a stored tile is turned into the stage frame (rows down along reversed stage X); ``rot90`` is
``numpy.rot90`` (counter-clockwise). The default, ``identity``, is the image as stored."""
INVERSE_ORIENTATION = {"rot90": "rot270", "rot270": "rot90"}
"""Orientations that are not their own inverse (for writers)."""

_TILE_FILE = re.compile(r"(\d{8}-\d{4})-(\d+)_(\d{2})\.tif(\.gz)?")
_MAX_GZ_RATIO = 4
"""A decompressed tile may be at most this many times its pixel bytes (plus 16 MiB) long."""
CONSISTENT_KEYS = ("rows", "columns", "mrows", "mcolumns", "channels")
"""Header keys every section's Mosaic file must share with the root one."""


def _orient(name: str) -> str:
    if name not in ORIENTATIONS:
        raise ValueError(f"unknown tile orientation {name!r} (known: {', '.join(ORIENTATIONS)})")
    return name


class TissueCyteReader(Reader):
    """TissueVision TissueCyte STPT acquisitions (root ``Mosaic_*.txt`` + ``<SampleID>-NNNN/`` folders)."""

    name = "tissuecyte"
    summary = "Mosaic_*.txt and <SampleID>-NNNN/ section folders"
    options = {
        "pixel_size_um": "pixel size in µm, overriding xres/xRes_um (wrong on some systems)",
        "slice_thickness_um": "section thickness in µm, overriding sectionres/section_depth",
        "orientation": f"tile orientation relative to the stage: {', '.join(ORIENTATIONS)} (default identity)",
        "channel_names": "channel names in channel order (default ch01, ch02, ...)",
        "check_tiles": "accepted for symmetry with the generic reader; tiles are checked when decoded",
        "landed_sections": "read only these section folders (1-based numbers) of an acquisition still running; "
        "slices are the planned sections",
    }

    def detect(self, location: Location) -> bool:
        return bool(_root_mosaics(location))

    def read(self, location: Location, **options: Any) -> SourceSample:
        self.check_options(options)
        return _Read(location, options).run(self)

    def read_tile(self, sample: SourceSample, record: TileRecord) -> np.ndarray:
        assert sample.location is not None
        stored = sample.details["stored_tile_shape"]
        pixels = _decode_tile(sample.location, record.file, tuple(stored))
        return np.ascontiguousarray(ORIENTATIONS[sample.details["orientation"]](pixels))


def _root_mosaics(loc: Location) -> list[str]:
    try:
        found = loc.fs.glob(loc.path("Mosaic*.txt"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(posixpath.basename(str(p)) for p in found)


class _Read:
    """One read of an acquisition: root header, sections, grid, files."""

    def __init__(self, loc: Location, options: dict[str, Any]) -> None:
        self.loc = loc
        self.orientation = _orient(str(options.get("orientation") or "identity"))
        self.pixel_size = options.get("pixel_size_um")
        self.thickness = options.get("slice_thickness_um")
        self.channel_names = options.get("channel_names")
        landed = options.get("landed_sections")
        self.landed = None if landed is None else sorted({int(n) for n in landed})
        if self.landed is not None and (not self.landed or self.landed[0] < 1):
            raise ValueError(f"landed_sections must be section numbers >= 1, got {landed!r}")
        self.notes: list[str] = []

    def run(self, reader: TissueCyteReader) -> SourceSample:
        loc = self.loc
        names = _root_mosaics(loc)
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise InputError(loc.url, f"expected exactly one Mosaic*.txt at the top, found {found}")
        root = read_mosaic(loc, names[0])
        self._note_ignored(root)
        sample_id = root.text("Sample ID")
        h, w = root.integer("rows", minimum=1), root.integer("columns", minimum=1)
        mrows, mcols = root.integer("mrows", minimum=1), root.integer("mcolumns", minimum=1)
        n_ch = root.integer("channels", minimum=1)
        layers = self._layers(root)
        n_tiles = mrows * mcols
        sections = self._section_folders(root, sample_id)
        mosaics = [self._section_mosaic(root, sample_id, num, folder, layers) for num, folder in sections]
        n_slices, slice_of = self._slices(root, sections)

        stepping = mosaics[:1] if self.landed is not None else mosaics  # stable while sections land
        step_x, step_y = (_step([m.xpos for m in stepping]), _step([m.ypos for m in stepping]))
        pixel, pixel_key = self._pixel_size(root)
        thickness = self._thickness(root)
        stored = (h, w)
        shape = ORIENTATIONS[self.orientation](np.empty(stored, np.bool_)).shape
        overlap = self._overlap(shape, pixel, step_x, step_y, pixel_key)
        channels = self._channels(root, n_ch)

        try:
            acq = Acquisition(
                sample=sample_id,
                modality="STPT",
                pixel_size_um=pixel,
                slice_thickness_um=thickness,
                tile_shape=(int(shape[0]), int(shape[1])),
                overlap=overlap,
                channels=channels,
                rows=mrows,
                cols=mcols,
                slices=n_slices,
                optical_sections=layers,
            )
        except ValueError as exc:
            raise InputError(root.path, f"does not describe a valid acquisition ({first_error(exc)})") from None

        records: list[TileRecord] = []
        missing: list[str] = []
        stage = np.zeros((acq.slices, layers, n_tiles, 2), np.float64)
        prefixes: list[str] = []
        for (num, folder), mosaic in zip(sections, mosaics, strict=True):
            s = slice_of[num]
            grid = self._grid(mosaic, mrows, mcols, step_x, step_y, folder)
            startnum = mosaic.integer("startnum", default=(num - 1) * n_tiles * layers, minimum=0)
            prefix = self._prefix(mosaic, root)
            prefixes.append(prefix)
            files = self._tile_files(folder, prefix, startnum, n_tiles * layers, n_ch)
            for t, (row, col) in enumerate(grid):
                y_um, x_um = -mosaic.xpos[t] / 10.0, mosaic.ypos[t] / 10.0
                tile = acq.tile_index(row, col)
                for z in range(layers):
                    stage[s, z, tile] = (y_um, x_um)
                    n = startnum + t + z * n_tiles
                    for c in range(n_ch):
                        name = files.get((n, c + 1))
                        if name is None:
                            missing.append(tile_key(s, z, c, tile))
                        else:
                            records.append(
                                TileRecord(
                                    slice=s,
                                    z=z,
                                    channel=c,
                                    row=row,
                                    col=col,
                                    x_um=x_um,
                                    y_um=y_um,
                                    file=f"{folder}/{name}",
                                )
                            )
        absent = sorted(set(range(n_slices)) - set(slice_of.values()))
        for s in absent:  # planned sections not landed yet: every tile missing, the first section's stage
            stage[s] = stage[slice_of[sections[0][0]]]
            missing += [tile_key(s, z, c, t) for z in range(layers) for c in range(n_ch) for t in range(n_tiles)]
        if absent:
            self.notes.append(f"{len(sections)} of {n_slices} planned sections landed so far")
        missing.sort(key=lambda k: tuple(int(p) for p in k.split("/")))
        self._note_restarts(sections, prefixes)
        if missing:
            planned = acq.slices * layers * n_ch * n_tiles
            self.notes.append(
                f"{len(missing)} of {planned} planned tile images were never acquired (recorded as missing tiles)"
            )
        details = {
            "root_mosaic": names[0],
            "sections": [num for num, _ in sections],
            "slices_of_sections": [slice_of[num] for num, _ in sections],
            "landed_sections": self.landed,
            "section_folders": [folder for _, folder in sections],
            "requested_sections": root.integer("sections", default=0) if root.has("sections") else None,
            "tile_prefixes": prefixes,
            "stage_step_um": [step_x / 10.0 if step_x else None, step_y / 10.0 if step_y else None],
            "pixel_size_from": pixel_key,
            "orientation": self.orientation,
            "stored_tile_shape": list(stored),
            "trigger_files": self._trigger_count(),
        }
        return SourceSample(
            root=loc.url,
            acquisition=acq,
            records=records,
            stage_um=stage,
            format=reader.name,
            missing_tiles=missing,
            notes=self.notes,
            details=details,
            reader=reader,
            location=loc,
        )

    # -- header ------------------------------------------------------------------------
    def _note_ignored(self, mosaic: MosaicFile) -> None:
        if mosaic.ignored_lines:
            self.notes.append(f"{mosaic.path}: {mosaic.ignored_lines} line(s) without a colon ignored")

    def _layers(self, mosaic: MosaicFile) -> int:
        layers = mosaic.integer("layers", default=1, minimum=1)
        if mosaic.has("Zscan") and mosaic.integer("Zscan", minimum=None) == 0:
            if layers != 1:
                self.notes.append(f"{mosaic.path}: layers is {layers} but Zscan is 0: read as 1 optical layer")
            return 1
        return layers

    def _pixel_size(self, root: MosaicFile) -> tuple[float, str]:
        if self.pixel_size is not None:
            value = float(self.pixel_size)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"pixel_size_um must be a positive number, got {self.pixel_size!r}")
            return value, "override"
        found = root.number("xRes_um", "xres")
        if found is None:
            raise InputError(root.path, "no xres or xRes_um key (the pixel size); give it with --pixel-size-um")
        value, key = found
        other = root.number("yRes_um", "yres")
        if other is not None and not math.isclose(other[0], value, rel_tol=1e-6):
            self.notes.append(f"{root.path}: {key} is {value:g} but {other[1]} is {other[0]:g}; {key} is used")
        return value, key

    def _thickness(self, root: MosaicFile) -> float:
        if self.thickness is not None:
            value = float(self.thickness)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"slice_thickness_um must be a positive number, got {self.thickness!r}")
            return value
        found = root.number("section_depth", "sectionres")
        if found is None:
            raise InputError(root.path, "no sectionres or section_depth key (the section thickness)")
        return found[0]

    def _overlap(
        self, shape: tuple[int, ...], pixel: float, step_x: float | None, step_y: float | None, pixel_key: str
    ) -> float:
        overlaps = []
        for side, step in ((shape[0], step_x), (shape[1], step_y)):
            if step:
                overlaps.append(1.0 - (step / 10.0) / (side * pixel))
        if not overlaps:
            return 0.0
        if min(overlaps) < 0:
            self.notes.append(
                f"the stage step is larger than a tile ({pixel:g} µm/px from {pixel_key}): tiles do "
                f"not overlap; is the pixel size wrong? (override it with --pixel-size-um)"
            )
        elif max(overlaps) > 0.5:
            self.notes.append(
                f"tiles overlap by {max(overlaps):.0%} at {pixel:g} µm/px from {pixel_key}; "
                f"is the pixel size wrong? (override it with --pixel-size-um)"
            )
        if len(overlaps) == 2 and abs(overlaps[0] - overlaps[1]) > 0.05:
            self.notes.append(f"overlap differs between axes (rows {overlaps[0]:.1%}, columns {overlaps[1]:.1%})")
        return float(min(max(float(np.mean(overlaps)), 0.0), 0.95))

    def _channels(self, root: MosaicFile, n_ch: int) -> list[str]:
        if self.channel_names is None:
            return [f"ch{c:02d}" for c in range(1, n_ch + 1)]
        names = [str(n) for n in self.channel_names]
        if len(names) != n_ch:
            raise ValueError(f"channel_names has {len(names)} names but {root.path} says channels: {n_ch}")
        return names

    # -- sections ----------------------------------------------------------------------
    def _slices(self, root: MosaicFile, sections: list[tuple[int, str]]) -> tuple[int, dict[int, int]]:
        """Number of slices and the slice of each section folder present (all of them, or the landed ones)."""
        if self.landed is None:
            return len(sections), {num: s for s, (num, _) in enumerate(sections)}
        requested = root.integer("sections", minimum=1) if root.has("sections") else 0
        return max(requested, sections[-1][0]), {num: num - 1 for num, _ in sections}

    def _section_folders(self, root: MosaicFile, sample_id: str) -> list[tuple[int, str]]:
        pattern = re.compile(re.escape(sample_id) + r"-(\d{4})")
        found = []
        for entry in self.loc.fs.ls(self.loc.root, detail=True):
            name = posixpath.basename(str(entry["name"]).rstrip("/"))
            match = pattern.fullmatch(name)
            if match and entry.get("type") == "directory":
                found.append((int(match.group(1)), name))
        found.sort()
        if self.landed is not None:
            present = {n for n, _ in found}
            gone = [n for n in self.landed if n not in present]
            if gone:
                raise InputError(self.loc.join(f"{sample_id}-{gone[0]:04d}"), "landed section folder is missing")
            return [(n, name) for n, name in found if n in self.landed]
        if not found:
            raise InputError(root.path, f"no section folders {sample_id}-NNNN next to it")
        if found[0][0] < 1:
            raise InputError(self.loc.join(found[0][1]), "section folders are numbered from 0001")
        numbers = [n for n, _ in found]
        gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if numbers[0] != 1 or gaps:
            absent = ([f"{n:04d}" for n in range(1, numbers[0])] + [f"{n:04d}" for n in gaps])[:10]
            self.notes.append(
                f"section folder(s) {', '.join(absent)} absent: slices are the {len(found)} present, in order"
            )
        if root.has("sections"):
            requested = root.integer("sections")
            if requested != len(found):
                self.notes.append(f"{root.path}: sections is {requested} but {len(found)} section folders are present")
        return found

    def _section_mosaic(self, root: MosaicFile, sample_id: str, num: int, folder: str, layers: int) -> MosaicFile:
        mosaic = read_mosaic(self.loc, f"{folder}/Mosaic_{sample_id}-{num:04d}.txt")
        self._note_ignored(mosaic)
        if mosaic.has("Sample ID") and mosaic.text("Sample ID") != sample_id:
            raise InputError(
                mosaic.path,
                f"Sample ID is {mosaic.text('Sample ID')!r} but {posixpath.basename(root.path)} says {sample_id!r}",
            )
        for key in CONSISTENT_KEYS:
            if mosaic.has(key) and mosaic.integer(key) != root.integer(key):
                raise InputError(
                    mosaic.path,
                    f"{key} is {mosaic.integer(key)} but {posixpath.basename(root.path)} says {root.integer(key)}",
                )
        if (mosaic.has("layers") or mosaic.has("Zscan")) and self._layers(mosaic) != layers:
            raise InputError(
                mosaic.path, f"{self._layers(mosaic)} optical layers but {posixpath.basename(root.path)} says {layers}"
            )
        for keys in (("xRes_um", "xres"), ("section_depth", "sectionres")):
            mine, theirs = mosaic.number(*keys), root.number(*keys)
            if mine and theirs and not math.isclose(mine[0], theirs[0], rel_tol=1e-6):
                self.notes.append(
                    f"{mosaic.path}: {mine[1]} is {mine[0]:g} but the root file says {theirs[0]:g} "
                    f"(the root value is used)"
                )
        n_tiles = root.integer("mrows") * root.integer("mcolumns")
        if len(mosaic.xpos) != n_tiles or len(mosaic.ypos) != n_tiles:
            raise InputError(
                mosaic.path,
                f"{len(mosaic.xpos)} XPos and {len(mosaic.ypos)} YPos lines but the grid "
                f"has mrows x mcolumns = {n_tiles} tiles",
            )
        return mosaic

    def _prefix(self, mosaic: MosaicFile, root: MosaicFile) -> str:
        date = mosaic.acq_date() or root.acq_date()
        return date.strftime(TILE_PREFIX_FORMAT) if date is not None else ""

    def _note_restarts(self, sections: list[tuple[int, str]], prefixes: list[str]) -> None:
        for (num, _), before, after in zip(sections[1:], prefixes, prefixes[1:], strict=False):
            if before != after:
                self.notes.append(
                    f"restart before section {num:04d}: its acqDate gives tile prefix {after!r} after {before!r}"
                )

    def _grid(
        self, mosaic: MosaicFile, mrows: int, mcols: int, step_x: float | None, step_y: float | None, folder: str
    ) -> list[tuple[int, int]]:
        x, y = np.asarray(mosaic.xpos, np.float64), np.asarray(mosaic.ypos, np.float64)
        fr = (x.max() - x) / step_x if step_x else np.zeros_like(x)
        fc = (y - y.min()) / step_y if step_y else np.zeros_like(y)
        rows, cols = np.rint(fr).astype(int), np.rint(fc).astype(int)
        seen: dict[tuple[int, int], int] = {}
        off = 0
        for t, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
            if not (0 <= r < mrows and 0 <= c < mcols):
                raise InputError(
                    mosaic.path,
                    f"XPos/YPos of tile {t} ({mosaic.xpos[t]}, {mosaic.ypos[t]}) put it "
                    f"at row {r} col {c}, outside the {mrows} x {mcols} grid",
                )
            if (r, c) in seen:
                raise InputError(mosaic.path, f"XPos/YPos of tiles {seen[(r, c)]} and {t} put both at row {r} col {c}")
            seen[(r, c)] = t
            off += bool(abs(fr[t] - r) > 0.1 or abs(fc[t] - c) > 0.1)
        if off:
            self.notes.append(f"{mosaic.path}: {off} stage position(s) more than 10 % of a step off the grid")
        grid = list(zip(rows.tolist(), cols.tolist(), strict=True))
        if grid != serpentine(mrows, mcols):
            first = next(t for t, (a, b) in enumerate(zip(grid, serpentine(mrows, mcols), strict=True)) if a != b)
            self.notes.append(f"{folder}: acquisition order is not the expected serpentine (from tile {first})")
        return grid

    def _tile_files(self, folder: str, prefix: str, startnum: int, count: int, n_ch: int) -> dict[tuple[int, int], str]:
        files: dict[tuple[int, int], list[str]] = defaultdict(list)
        odd_prefix = 0
        for entry in self.loc.fs.ls(self.loc.path(folder), detail=False):
            name = posixpath.basename(str(entry).rstrip("/"))
            match = _TILE_FILE.fullmatch(name)
            if not match:
                continue
            n, ch = int(match.group(2)), int(match.group(3))
            path = self.loc.join(folder, name)
            if not 1 <= ch <= n_ch:
                raise InputError(path, f"channel {match.group(3)} outside 01..{n_ch:02d} (channels: {n_ch})")
            if not startnum <= n < startnum + count:
                raise InputError(
                    path,
                    f"tile number {n} outside this section's {startnum}..{startnum + count - 1} "
                    f"(startnum {startnum}, {count} tile images per channel)",
                )
            odd_prefix += match.group(1) != prefix
            files[(n, ch)].append(name)
        out = {}
        for key, names in files.items():
            if len(names) > 1:
                best = [nm for nm in names if nm.startswith(prefix + "-")]
                best = [nm for nm in best if not nm.endswith(".gz")] or best
                if len(best) != 1:
                    raise InputError(
                        self.loc.join(folder, sorted(names)[1]),
                        f"holds the same tile as {sorted(names)[0]} (tile {key[0]}, channel {key[1]:02d})",
                    )
                names = best
            out[key] = names[0]
        if odd_prefix:
            self.notes.append(f"{folder}: {odd_prefix} tile file(s) whose prefix is not {prefix!r} from its acqDate")
        return out

    def _trigger_count(self) -> int:
        try:
            return len(self.loc.fs.glob(self.loc.path("trigger", "*.tr2")))
        except (FileNotFoundError, NotADirectoryError):
            return 0


def serpentine(mrows: int, mcols: int) -> list[tuple[int, int]]:
    """(row, col) of each tile in acquisition order: down a column along stage X, then the next, reversed."""
    return [(r if c % 2 == 0 else mrows - 1 - r, c) for c in range(mcols) for r in range(mrows)]


def _step(positions: list[list[int]]) -> float | None:
    """Grid step in stage units: the median of the non-zero |differences| of consecutive positions."""
    diffs = np.concatenate([np.abs(np.diff(np.asarray(p, np.float64))) for p in positions if len(p) > 1] or [[]])
    diffs = diffs[diffs > 0]
    if not diffs.size:
        return None
    step = float(np.median(diffs))
    return float(np.median(diffs[diffs > 0.5 * step]))  # drop jitter of a stage that should not have moved


# -- tiles -------------------------------------------------------------------------------
def _decode_tile(loc: Location, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Read, gunzip (``.gz``) and decode one single-page 2-D uint16 TIFF of ``shape``."""
    path = loc.join(name)
    limit = _MAX_GZ_RATIO * shape[0] * shape[1] * 2 + (16 << 20)
    if loc.is_local:
        real, root = os.path.realpath(loc.path(name)), os.path.realpath(loc.root)
        if not real.startswith(root.rstrip(os.sep) + os.sep):
            raise InputError(path, "is a symbolic link to a file outside the acquisition folder")
    try:
        with loc.fs.open(loc.path(name), "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    except IsADirectoryError:
        raise InputError(path, "is not a regular file") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if name.endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                data = gz.read(limit + 1)
        except (OSError, EOFError, ValueError) as exc:
            raise InputError(path, f"not a readable gzip file ({type(exc).__name__})") from None
    if len(data) > limit:
        raise InputError(path, f"more than {limit} bytes for a {shape[0]} x {shape[1]} tile")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if len(tif.pages) != 1:
                raise InputError(path, f"expected a single-page TIFF, found {len(tif.pages)} pages")
            page = tif.pages[0]
            if len(page.shape) != 2:
                raise InputError(path, f"shape {tuple(page.shape)} but a 2-D tile {shape} is required")
            if np.dtype(page.dtype) != np.uint16 or tuple(page.shape) != shape:
                raise InputError(
                    path, f"{np.dtype(page.dtype)} {tuple(page.shape)} but the Mosaic file says uint16 {shape}"
                )
            ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
            if not ends or min(page.databytecounts) <= 0 or max(ends) > len(data):
                raise InputError(path, "truncated TIFF (image data ends past the end of the file)")
            pixels = page.asarray()
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise InputError(path, f"not a readable TIFF ({type(exc).__name__})") from None
    if pixels.dtype != np.uint16 or tuple(pixels.shape) != shape:
        raise InputError(path, f"decoded {pixels.dtype} {tuple(pixels.shape)} but uint16 {shape} is required")
    return np.asarray(pixels)
