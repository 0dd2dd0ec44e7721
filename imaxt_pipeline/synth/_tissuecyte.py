"""Write a synthetic sample in TissueVision's TissueCyte layout (``spec/tissuecyte.md``).

:func:`write_tissuecyte` converts a sample in the generic layout (what :func:`synthesize`
writes) into the instrument's own files: a root ``Mosaic_<sample>.txt``, one folder
``<sample>-NNNN`` per section with its ``Mosaic_<sample>-NNNN.txt`` (``startnum`` and one
``XPos``/``YPos`` line per tile in serpentine order, positions in 0.1 µm) and the tiles
``<MMDDYYYY>-<HHMM>-<N>_<CC>.tif`` (or ``.tif.gz``). A generic position ``(y_um, x_um)`` is
stored as ``XPos = -round(10 y_um)``, ``YPos = round(10 x_um)``: the TissueCyte reader gives
back the positions rounded to 0.1 µm, exactly. Optionally some tiles are never acquired and
the acquisition restarts (a new ``acqDate``, so a new tile prefix) half-way.
:func:`synthesize_tissuecyte` does both steps and keeps the truth under ``<out>/truth``.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from ..acquisition import Acquisition, RawSample
from ..io.formats import INVERSE_ORIENTATION, ORIENTATIONS, TILE_PREFIX_FORMAT, serpentine
from ..io.raw import read_raw_sample, read_tile
from ..io.rawzarr import tile_key
from ..io.urls import Location
from ._params import SynthParams
from ._writer import Truth, load_truth, synthesize

__all__ = ["DEFAULT_ACQ_DATE", "synthesize_tissuecyte", "write_tissuecyte"]

DEFAULT_ACQ_DATE = _dt.datetime(2024, 5, 7, 13, 5, 9)
"""``acqDate`` of synthetic acquisitions (an afternoon, so the 12- and 24-hour clocks differ)."""
RESTART_DELAY = _dt.timedelta(days=1, hours=2, minutes=17)
MARKER = ".imaxt-synth-tissuecyte"
"""Written into every synthetic TissueCyte folder: only such a folder is ever replaced."""


def write_tissuecyte(
    generic_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    missing_tiles: int = 0,
    restart: bool = False,
    compress: bool = False,
    orientation: str = "identity",
    nov2024: bool = False,
    seed: int = 0,
    acq_date: _dt.datetime = DEFAULT_ACQ_DATE,
) -> list[str]:
    """Convert the generic-layout sample at ``generic_dir`` into a TissueCyte folder ``out_dir``.

    Parameters
    ----------
    generic_dir : str or PathLike
        A sample in the generic layout (``acquisition.json``, ``tiles.csv``, ``tiles/``).
    out_dir : str or PathLike
        Created; an existing folder is replaced only if it is empty or was written by this
        function. Written into a temporary sibling and renamed, so nothing is half-written.
    missing_tiles : int
        Number of (section, optical layer, tile) images, drawn with ``seed``, whose files
        (every channel) are left out, as when the instrument fails to acquire a tile.
    restart : bool
        Sections from the middle on carry a later ``acqDate`` (hence another tile prefix).
    compress : bool
        Write ``.tif.gz`` tiles.
    orientation : str
        The tiles are stored so that reading them with this ``orientation`` gives the
        generic tiles back (``identity``: as they are).
    nov2024 : bool
        Write the key names of files from Nov 2024 on (``xRes_um``, ``section_depth``, ...).
    seed : int
        Seed of the choice of missing tiles.
    acq_date : datetime
        ``acqDate`` of the acquisition.

    Returns
    -------
    list of str
        ``"slice/z/channel/tile"`` keys of the tiles left out, sorted.

    Raises
    ------
    FileExistsError
        If ``out_dir`` holds anything this function did not write.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown tile orientation {orientation!r} (known: {', '.join(ORIENTATIONS)})")
    raw = read_raw_sample(str(generic_dir))
    acq = raw.acquisition
    n_tiles, layers, n_ch = acq.n_tiles, acq.optical_sections, len(acq.channels)
    out = Path(out_dir)
    _check_replaceable(out)
    store = ORIENTATIONS[INVERSE_ORIENTATION.get(orientation, orientation)]
    order = serpentine(acq.rows, acq.cols)
    rng = np.random.default_rng(seed)
    planned = acq.slices * layers * n_tiles
    if not 0 <= missing_tiles <= planned:
        raise ValueError(f"missing_tiles must be in 0..{planned}, got {missing_tiles}")
    dropped = {int(i) for i in rng.choice(planned, size=missing_tiles, replace=False)} if missing_tiles else set()
    restart_at = max(1, acq.slices // 2) if restart else None
    if restart and acq.slices < 2:
        raise ValueError("a restart needs at least 2 sections")

    header = _header(acq, store(np.empty(acq.tile_shape, np.bool_)).shape, nov2024)
    sid = acq.sample
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    missing: list[str] = []
    try:
        _write_text(tmp / f"Mosaic_{sid}.txt", _mosaic_text({"acqDate": _acq_date(acq_date), **header}))
        for s in range(acq.slices):
            date = acq_date + RESTART_DELAY if restart_at is not None and s >= restart_at else acq_date
            prefix = date.strftime(TILE_PREFIX_FORMAT)
            folder = tmp / f"{sid}-{s + 1:04d}"
            folder.mkdir()
            startnum = s * n_tiles * layers
            lines = {"acqDate": _acq_date(date), **header, "startnum": str(startnum)}
            positions = []
            last = (0, 0)
            for t, (row, col) in enumerate(order):
                y_um, x_um = raw.stage_um[s, 0, acq.tile_index(row, col)]
                xy = (-round(float(y_um) * 10), round(float(x_um) * 10))
                positions.append((t, xy, (xy[0] - last[0], xy[1] - last[1])))
                last = xy
                for z in range(layers):
                    if (s * layers + z) * n_tiles + t in dropped:
                        missing += [tile_key(s, z, c, acq.tile_index(row, col)) for c in range(n_ch)]
                        continue
                    n = startnum + t + z * n_tiles
                    for c in range(n_ch):
                        pixels = _generic_tile(raw, s, z, c, row, col)
                        _write_tile(folder / f"{prefix}-{n}_{c + 1:02d}.tif", store(pixels), compress)
            text = _mosaic_text(lines) + "".join(f"XPos{dx}:{x}\nYPos{dy}:{y}\n" for _, (x, y), (dx, dy) in positions)
            _write_text(folder / f"Mosaic_{sid}-{s + 1:04d}.txt", text)
        (tmp / MARKER).write_text("synthetic TissueCyte acquisition written by imaxt_pipeline.synth\n")
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(missing, key=lambda k: tuple(int(p) for p in k.split("/")))


def _generic_tile(raw: RawSample, s: int, z: int, c: int, row: int, col: int) -> np.ndarray:
    """Pixels of one generic tile (via :func:`imaxt_pipeline.io.raw.read_tile`)."""
    rec = raw.record_for(s, z, c, raw.acquisition.tile_index(row, col))
    return read_tile(Location(raw.root), rec, raw.acquisition)


def synthesize_tissuecyte(
    out_dir: str | os.PathLike[str],
    params: SynthParams | None = None,
    *,
    missing_tiles: int = 0,
    restart: bool = False,
    compress: bool = False,
    orientation: str = "identity",
    nov2024: bool = False,
) -> tuple[Truth, list[str]]:
    """Simulate a sample (:func:`synthesize`) and write it in the TissueCyte layout, with its truth.

    Returns
    -------
    (Truth, list of str)
        The ground truth (also under ``<out_dir>/truth``) and the keys of the tiles left out.
    """
    params = SynthParams() if params is None else params
    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.generic.", dir=out.parent) as generic:
        synthesize(generic, params)
        missing = write_tissuecyte(
            generic,
            out,
            missing_tiles=missing_tiles,
            restart=restart,
            compress=compress,
            orientation=orientation,
            nov2024=nov2024,
            seed=params.seed,
        )
        shutil.copytree(Path(generic) / "truth", out / "truth")
    return load_truth(out), missing


def _check_replaceable(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise FileExistsError(f"{out}: exists and is not a synthetic TissueCyte folder; choose a new one")


def _header(acq: Acquisition, stored: tuple[int, ...], nov2024: bool) -> dict[str, str]:
    """Header lines; ``rows``/``columns`` are the tile shape as stored."""
    h, w = acq.tile_shape
    res = {
        "xRes_um": acq.pixel_size_um,
        "yRes_um": acq.pixel_size_um,
        "section_depth": acq.slice_thickness_um,
        "zscan_resolution_um": 5.0,
    }
    if not nov2024:
        res = {"xres": acq.pixel_size_um, "yres": acq.pixel_size_um, "sectionres": acq.slice_thickness_um, "zres": 5.0}
    step_y, step_x = (round(side * (1 - acq.overlap) * acq.pixel_size_um * 10) for side in (h, w))
    return {
        "Sample ID": acq.sample,
        "excwavelength": "920",
        "channels": str(len(acq.channels)),
        "sections": str(acq.slices),
        "layers": str(acq.optical_sections),
        "Zscan": "1" if acq.optical_sections > 1 else "0",
        "rows": str(stored[0]),
        "columns": str(stored[1]),
        "mrows": str(acq.rows),
        "mcolumns": str(acq.cols),
        "mrowres": str(step_y),
        "mcolumnres": str(step_x),
        **{k: f"{v:g}" for k, v in res.items()},
        "comments": "synthetic acquisition: imaxt_pipeline.synth",
    }


def _acq_date(d: _dt.datetime) -> str:
    """``M/D/YYYY h:mm:ss AM`` as the instrument writes it."""
    hour = d.hour % 12 or 12
    return f"{d.month}/{d.day}/{d.year} {hour}:{d.minute:02d}:{d.second:02d} {'AM' if d.hour < 12 else 'PM'}"


def _mosaic_text(lines: dict[str, str]) -> str:
    return "".join(f"{k}:{v}\n" for k, v in lines.items())


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\r\n")


def _write_tile(path: Path, pixels: np.ndarray, compress: bool) -> None:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(pixels), photometric="minisblack")
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1, mtime=0))
    else:
        path.write_bytes(buf.getvalue())
