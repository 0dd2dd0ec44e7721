"""Write synthetic Zeiss Axioscan slide-scanner mosaics as CZI (ZISRAW) files.

:func:`write_czi` writes a minimal but complete ZISRAW file: the file header, one
uncompressed ``Gray16`` subblock per (scene, tile, channel) whose directory entry gives the
tile's pixel position (``X``, ``Y``), channel ``C``, scene ``S`` and mosaic index ``M`` and
whose subblock metadata carries the stage position ZEN records
(``<METADATA><Tags><StageXPosition>``, ``<StageYPosition>``, µm, the tile's centre), the
subblock directory and the document XML (pixel size under ``Scaling``, channel names under
``Information/Image/Dimensions/Channels``, scene names under ``.../S/Scenes``). libCZI
(``pylibCZIrw``, ``aicspylibczi``) reads it like a file from the instrument.

pylibCZIrw writes CZI mosaics too, but without subblock metadata: what it writes is a CZI
without stage positions (the reader refuses those), so the positions need this writer.

:func:`write_axioscan` converts a sample in the generic layout (what :func:`synthesize`
writes) into one CZI file, one scene per section; :func:`synthesize_czi` does both steps.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from ..io.raw import read_raw_sample, read_tile
from ..io.urls import Location
from ._params import SynthParams
from ._writer import Truth, load_truth, synthesize

__all__ = ["synthesize_czi", "write_axioscan", "write_czi"]

_GRAY16 = 1
"""ZISRAW pixel type of 16-bit grey images."""


def write_czi(
    path: str | os.PathLike[str],
    tiles: np.ndarray,
    stage_um: np.ndarray,
    *,
    channels: list[str],
    pixel_size_um: float,
    scene_names: list[str] | None = None,
    stage_positions: bool = True,
) -> None:
    """Write a ``Gray16`` tile mosaic as a CZI file.

    Parameters
    ----------
    path : str or PathLike
        The file; written into a temporary sibling and renamed, so never half-written.
    tiles : ndarray (S, C, T, H, W) uint16
        Pixels of tile ``t`` of channel ``c`` of scene ``s``.
    stage_um : ndarray (S, T, 2)
        Recorded (y, x) stage position of each tile's top-left corner in µm; the file stores
        the centre, ``top-left + tile size / 2`` (``StageYPosition``, ``StageXPosition``), and
        places the tile at the pixel position of its top-left relative to the smallest one.
    channels : list of str
        Channel names, one per ``C``.
    pixel_size_um : float
        Pixel size (``Scaling``, stored in metres).
    scene_names : list of str, optional
        Scene names (default ``Scene 1``, ...).
    stage_positions : bool
        Write each subblock's stage position (``False``: a CZI without stage positions).
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 5 or tiles.dtype != np.uint16:
        raise ValueError(f"tiles must be a uint16 (S, C, T, H, W) array, got {tiles.dtype} {tiles.shape}")
    n_s, n_c, n_t, h, w = tiles.shape
    stage = np.asarray(stage_um, np.float64)
    if stage.shape != (n_s, n_t, 2):
        raise ValueError(f"stage_um must have shape {(n_s, n_t, 2)}, got {stage.shape}")
    if len(channels) != n_c:
        raise ValueError(f"{len(channels)} channel names for {n_c} channels")
    names = scene_names or [f"Scene {s + 1}" for s in range(n_s)]
    origin = stage.reshape(-1, 2).min(axis=0)
    pixel_pos = np.rint((stage - origin) / pixel_size_um).astype(np.int64)
    half = np.array([h, w], np.float64) * pixel_size_um / 2

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0" * (32 + 512))  # the file header, written last
            entries = []
            for s in range(n_s):
                for t in range(n_t):
                    y_px, x_px = (int(v) for v in pixel_pos[s, t])
                    cy, cx = stage[s, t] + half
                    meta = (
                        f"<METADATA><Tags><StageXPosition>{cx:.6f}</StageXPosition>"
                        f"<StageYPosition>{cy:.6f}</StageYPosition><FocusPosition>0</FocusPosition></Tags></METADATA>"
                        if stage_positions
                        else "<METADATA><Tags><FocusPosition>0</FocusPosition></Tags></METADATA>"
                    ).encode()
                    for c in range(n_c):
                        dims = [("X", x_px, w), ("Y", y_px, h), ("C", c, 1), ("S", s, 1), ("M", t, 1)]
                        pos = fh.tell()
                        entry = _entry(pos, dims)
                        data = np.ascontiguousarray(tiles[s, c, t], "<u2").tobytes()
                        head = struct.pack("<iiq", len(meta), 0, len(data)) + entry
                        fh.write(_segment(b"ZISRAWSUBBLOCK", head + b"\0" * max(256 - len(head), 0) + meta + data))
                        entries.append(entry)
            dir_pos = fh.tell()
            fh.write(_segment(b"ZISRAWDIRECTORY", struct.pack("<i", len(entries)) + b"\0" * 124 + b"".join(entries)))
            meta_pos = fh.tell()
            xml = _document_xml(channels, names, pixel_size_um, (n_s, n_c, n_t, h, w)).encode()
            fh.write(_segment(b"ZISRAWMETADATA", struct.pack("<ii", len(xml), 0) + b"\0" * 248 + xml))
            guid = uuid.uuid4().bytes
            header = struct.pack("<iiii16s16siqqiq", 1, 0, 0, 0, guid, guid, 0, dir_pos, meta_pos, 0, 0)
            fh.seek(0)
            fh.write(_segment(b"ZISRAWFILE", header.ljust(512, b"\0")))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _segment(sid: bytes, data: bytes) -> bytes:
    """A ZISRAW segment: 16-byte id, allocated and used size, data padded to 32 bytes."""
    allocated = -(-len(data) // 32) * 32
    return struct.pack("<16sqq", sid, allocated, len(data)) + data + b"\0" * (allocated - len(data))


def _entry(file_pos: int, dims: list[tuple[str, int, int]]) -> bytes:
    """A ``DV`` directory entry of an uncompressed Gray16 subblock at ``file_pos``."""
    head = struct.pack("<2siqiiB5si", b"DV", _GRAY16, file_pos, 0, 0, 0, b"\0" * 5, len(dims))
    return head + b"".join(
        struct.pack("<4siifi", name.encode().ljust(4, b"\0"), start, size, float(start), size)
        for name, start, size in dims
    )


def _document_xml(
    channels: list[str], scenes: list[str], pixel_size_um: float, shape: tuple[int, int, int, int, int]
) -> str:
    n_s, n_c, n_t, h, w = shape
    chans = "".join(
        f'<Channel Id="Channel:{c}" Name={quoteattr(name)}><Fluor>{name}</Fluor></Channel>'
        for c, name in enumerate(channels)
    )
    scns = "".join(f'<Scene Index="{s}" Name={quoteattr(name)}/>' for s, name in enumerate(scenes))
    dist = "".join(
        f'<Distance Id="{axis}"><Value>{pixel_size_um * 1e-6!r}</Value>'
        "<DefaultUnitFormat>µm</DefaultUnitFormat></Distance>"
        for axis in ("X", "Y")
    )
    return (
        "<ImageDocument><Metadata><Information><Application><Name>imaxt_pipeline.synth</Name></Application>"
        f"<Image><PixelType>Gray16</PixelType><SizeX>{w}</SizeX><SizeY>{h}</SizeY><SizeC>{n_c}</SizeC>"
        f"<SizeS>{n_s}</SizeS><SizeM>{n_t}</SizeM><Dimensions><Channels>{chans}</Channels>"
        f"<S><Scenes>{scns}</Scenes></S></Dimensions></Image>"
        '<Instrument><Microscopes><Microscope Name="Axioscan 7 (synthetic)"/></Microscopes></Instrument>'
        f"</Information><Scaling><Items>{dist}</Items></Scaling></Metadata></ImageDocument>"
    )


def write_axioscan(
    generic_dir: str | os.PathLike[str], out_file: str | os.PathLike[str], *, stage_positions: bool = True
) -> None:
    """Convert the generic-layout sample at ``generic_dir`` into one CZI file, one scene per section.

    Tile ``(row, col)`` of section ``s`` is mosaic index ``M = row * cols + col`` of scene ``s``;
    its stage position is the recorded one of ``tiles.csv``, so the CZI reader gives back the
    generic sample's tiles, grid and positions (to the 10⁻⁶ µm the file stores).

    Raises
    ------
    ValueError
        If the sample has more than one optical section (Axioscan mosaics here are 2-D).
    """
    raw = read_raw_sample(str(generic_dir))
    acq = raw.acquisition
    if acq.optical_sections != 1:
        raise ValueError(f"{generic_dir}: {acq.optical_sections} optical sections; CZI mosaics here have one")
    loc = Location(raw.root)
    tiles = np.zeros((acq.slices, len(acq.channels), acq.n_tiles, *acq.tile_shape), np.uint16)
    for rec in raw.records:
        tiles[rec.slice, rec.channel, acq.tile_index(rec.row, rec.col)] = read_tile(loc, rec, acq)
    write_czi(
        out_file,
        tiles,
        raw.stage_um[:, 0],
        channels=list(acq.channels),
        pixel_size_um=acq.pixel_size_um,
        scene_names=[f"{acq.sample} section {s + 1}" for s in range(acq.slices)],
        stage_positions=stage_positions,
    )


def synthesize_czi(out_file: str | os.PathLike[str], params: SynthParams | None = None) -> Truth:
    """Simulate a sample (:func:`synthesize`) and write it as a CZI file; the truth goes to ``<out_file>.truth/``."""
    params = SynthParams() if params is None else params
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.generic.", dir=out.parent) as generic:
        synthesize(generic, params)
        write_axioscan(generic, out)
        truth_dir = out.with_name(out.name + ".truth")
        shutil.rmtree(truth_dir, ignore_errors=True)
        shutil.copytree(Path(generic) / "truth", truth_dir / "truth")
    return load_truth(truth_dir)
