"""Reading a slide (CZI, IMC TXT/MCD, OME-TIFF or plain TIFF) and the STPT reference, writing the slide store.

The slide store is an OME-Zarr group written by ``imaxt register-modality``:
``slide/`` (c, 1, y, x) the slide image, ``tables/beads.parquet`` its beads (and their STPT
partners), ``qc/federation.png``, and ``attrs["imaxt"]["federation"]`` (README, results). It is
written into a temporary sibling and moved into place only when complete; a destination holding
anything but a slide store of ours (for the same slide) is refused before any work.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, StoreError
from ..io.formats import open_acquisition
from ..io.output import OutputStore
from ..io.ownership import Owner, check_apart, check_destination
from ..io.urls import Location

__all__ = [
    "FEDERATION_TOOL",
    "Reference",
    "Slide",
    "commit_store",
    "prepare_destination",
    "read_reference",
    "read_slide",
    "section_offsets",
    "slide_sections",
]

FEDERATION_TOOL = "imaxt-pipeline register-modality"
_KEY = re.compile(
    r"zarr\.json|slide(?:/[A-Za-z0-9_-]+)*(?:/zarr\.json)?|tables(?:/[A-Za-z0-9_.-]+)?|qc(?:/[A-Za-z0-9_.-]+)?"
)


@dataclass
class Slide:
    """A slide image (C, H, W) float32 with its pixel size, modality (``axioscan`` or ``imc``) and name."""

    url: str
    image: np.ndarray
    pixel_size_um: float
    modality: str
    channels: list[str]
    name: str
    identity: str


@dataclass
class Reference:
    """The STPT reference: bead centres per section in cube level-0 px (x, y, radius), cube geometry."""

    url: str
    store: OutputStore
    beads: dict[int, np.ndarray]
    pixel_size_um: float
    n_sections: int
    cube_shape: list[int]
    pad_before: list[int]
    pad_after: list[int]
    optical_sections: int
    offsets: np.ndarray
    """(sections, 2) registered (dy, dx) offset of each section, cube px (the cube's ``written`` where it has one)."""


def _ome_tiff_pixel_size(tif: Any) -> float | None:
    xml = getattr(tif, "ome_metadata", None)
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
            unit = el.get("PhysicalSizeXUnit", "µm")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit, 1.0)
            return float(el.get("PhysicalSizeX", "0")) * scale
    return None


def _from_reader(url: str, fmt: str, index: int | None, what: str, pixel_size_um: float | None, so: Any) -> Slide:
    options: dict[str, Any] = {} if pixel_size_um is None else {"pixel_size_um": pixel_size_um}
    sample = open_acquisition(url, fmt, storage_options=so, **options)
    acq = sample.acquisition
    if index is None:
        if acq.slices > 1:
            raise InputError(url, f"holds {acq.slices} {what}s; pick one with --{what} N (0-based)")
        index = 0
    if not 0 <= index < acq.slices:
        raise InputError(url, f"no {what} {index} (it holds {acq.slices}, numbered from 0)")
    px = acq.pixel_size_um
    th, tw = acq.tile_shape
    stage = sample.stage_um[index, 0] / px
    origin = stage.min(axis=0)
    size = np.rint(stage.max(axis=0) - origin).astype(int) + (th, tw)
    image = np.zeros((len(acq.channels), int(size[0]), int(size[1])), np.float32)
    for rec in sample.records:
        if rec.slice != index or rec.z != 0:
            continue
        t = acq.tile_index(rec.row, rec.col)
        y0, x0 = np.rint(stage[t] - origin).astype(int)
        image[rec.channel, y0 : y0 + th, x0 : x0 + tw] = sample.read_tile(rec)
    modality = "imc" if fmt == "imc" else "axioscan"
    ident = hashlib.sha256(f"{fmt}|{index}|{acq.model_dump_json()}".encode())
    return Slide(url, image, px, modality, list(acq.channels), f"{acq.sample}:{what}{index}", ident.hexdigest())


def slide_sections(url: str, *, pixel_size_um: float | None = None, storage_options: Any = None) -> tuple[str, int]:
    """What a slide file's sections are called (``scene``, ``roi``; ``""`` for a TIFF) and how many it holds.

    Raises
    ------
    InputError
        One line naming the file: unreadable.
    """
    low = url.lower().rstrip("/")
    kind = "czi" if low.endswith(".czi") else "imc" if low.endswith((".txt", ".mcd")) else None
    if kind is None:
        return "", 1
    options: dict[str, Any] = {} if pixel_size_um is None else {"pixel_size_um": pixel_size_um}
    acq = open_acquisition(url, kind, storage_options=storage_options, **options).acquisition
    return ("scene" if kind == "czi" else "roi"), int(acq.slices)


def read_slide(
    url: str,
    *,
    scene: int | None = None,
    roi: int | None = None,
    pixel_size_um: float | None = None,
    storage_options: Any = None,
) -> Slide:
    """Read one section of a slide file: CZI scene, IMC acquisition (ROI), or a TIFF (one section).

    Raises
    ------
    InputError
        One line naming the file: unknown kind, unreadable, pixel size unknown, no such scene/ROI.
    """
    low = url.lower().rstrip("/")
    if low.endswith(".czi"):
        return _from_reader(url, "czi", scene, "scene", pixel_size_um, storage_options)
    if low.endswith((".txt", ".mcd")):
        return _from_reader(url, "imc", roi, "roi", pixel_size_um, storage_options)
    if low.endswith((".tif", ".tiff")):
        import tifffile

        loc = Location(url, storage_options)
        try:
            with loc.fs.open(loc.root, "rb") as fh, tifffile.TiffFile(fh) as tif:
                data = tif.asarray()
                px = _ome_tiff_pixel_size(tif)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(url, f"not a readable TIFF ({first})") from None
        px = pixel_size_um if pixel_size_um is not None else px
        if px is None or not px > 0:
            raise InputError(url, "pixel size unknown (a plain TIFF records none); pass --pixel-size-um")
        img = np.asarray(data, np.float32)
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3:
            raise InputError(url, f"expected a (C, Y, X) or (Y, X) image, got shape {data.shape}")
        name = posixpath.basename(low).split(".")[0]
        ident = hashlib.sha256(f"{name}|tiff|{img.shape}|{float(img.sum())}".encode()).hexdigest()
        return Slide(url, img, float(px), "axioscan", [f"ch{i}" for i in range(len(img))], name, ident)
    raise InputError(url, "not a slide this command reads (.czi, .txt, .mcd, .tif/.tiff)")


def read_reference(url: str, storage_options: Any = None) -> Reference:
    """The STPT store's beads in the cube frame (x, y, radius px) per section, and its cube geometry.

    Raises
    ------
    StoreError
        One line: not a processed store with ``cube``, register offsets and a bead table.
    """
    try:
        store = OutputStore(url, storage_options, mode="r")
        meta = store.imaxt_attrs()
    except (OSError, ValueError, KeyError) as exc:
        raise StoreError(f"{url}: not a processed STPT store ({type(exc).__name__})") from None
    cube_meta = meta.get("cube") or {}
    if not store.has("cube") or "pad_before" not in cube_meta or not store.has_table("beads"):
        raise StoreError(f"{url}: reference needs a cube and a bead table (run the beads, register and cube steps)")
    acq = meta.get("acquisition") or {}
    cube = store.open_image("cube")
    n_opt = int(acq.get("optical_sections", 1) or 1)
    n_sections = int(acq.get("slices", cube.shape[1] // n_opt))
    offsets = section_offsets(meta, n_sections)
    pad = np.asarray(cube_meta["pad_before"], np.float64)
    table = store.read_table("beads")
    # every detection with a position: the bead matching is robust to false ones, and the quality flags
    # of the bead step are tuned for tracking through the stack, not for a single section
    table = table[np.isfinite(table["x_px"]) & np.isfinite(table["y_px"]) & (table["radius_px"] > 0)]
    beads = {}
    for k in range(n_sections):
        t = table[table["slice"] == k]
        y = t["y_px"].to_numpy(np.float64) - offsets[k, 0] + pad[0]
        x = t["x_px"].to_numpy(np.float64) - offsets[k, 1] + pad[1]
        beads[k] = np.column_stack([x, y, t["radius_px"].to_numpy(np.float64)])
    return Reference(
        url=url,
        store=store,
        beads=beads,
        pixel_size_um=float(cube.scale_zyx(0)[2]),
        n_sections=n_sections,
        cube_shape=[int(v) for v in cube.shape],
        pad_before=[int(v) for v in cube_meta["pad_before"]],
        pad_after=[int(v) for v in cube_meta.get("pad_after", [0, 0])],
        optical_sections=n_opt,
        offsets=offsets,
    )


def section_offsets(meta: dict[str, Any], n_sections: int) -> np.ndarray:
    """(dy, dx) offset of every section in a processed store's root attrs: the one its cube was built with
    (``imaxt.cube.written``), else the registered one, else 0."""
    offsets = np.zeros((n_sections, 2))
    reg = (meta.get("register") or {}).get("slice_offsets_px") or []
    for k, row in enumerate(reg[:n_sections]):
        offsets[k] = [0.0 if v is None else float(v) for v in row]
    for k, row in ((meta.get("cube") or {}).get("written") or {}).items():
        if int(k) < n_sections and row is not None:
            offsets[int(k)] = [float(v) for v in row]
    return offsets


def prepare_destination(out_url: str, slide: Slide, sources: list[str], storage_options: Any = None) -> Location:
    """Refuse a destination that is a source, lies in/around one, or holds anything but our store of this slide."""
    dest = Location(out_url, storage_options)
    for src in sources:
        check_apart(dest, Location(src, storage_options))
    check_destination(
        dest,
        tool=FEDERATION_TOOL,
        sample=slide.name,
        sample_id=slide.identity,
        owns=lambda k: _KEY.fullmatch(k) is not None,
    )
    return dest


def new_store(dest: Location) -> tuple[OutputStore, Location]:
    """An empty store in a temporary sibling of ``dest`` (moved into place by :func:`commit_store`)."""
    parent, name = posixpath.split(dest.url.rstrip("/"))
    tmp = Location(posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}"), dest.storage_options)
    return OutputStore(tmp.url, dest.storage_options), tmp


def commit_store(store: OutputStore, tmp: Location, dest: Location, owner: Owner) -> None:
    """Record the owner, then replace ``dest`` (empty or our own store, checked before) by the finished store."""
    store.record_owner(owner)
    fs = dest.fs
    fs.invalidate_cache()
    if fs.exists(dest.root):
        fs.rm(dest.root, recursive=True)
    fs.mv(tmp.root, dest.root, recursive=True)


def discard(tmp: Location) -> None:
    """Remove a temporary store after a failure (nothing half-written is left)."""
    try:
        if tmp.fs.exists(tmp.root):
            tmp.fs.rm(tmp.root, recursive=True)
    except OSError:
        pass


def beads_table(
    slide_xyr: np.ndarray, pairs: np.ndarray, ref_xyr: np.ndarray, mapped: np.ndarray, loo: np.ndarray
) -> pd.DataFrame:
    """Slide beads with their STPT partner (cube px) where matched, and the held-out residual."""
    n = len(slide_xyr)
    out = pd.DataFrame({"x_px": slide_xyr[:, 0], "y_px": slide_xyr[:, 1], "radius_px": slide_xyr[:, 2]})
    out["x_cube_px"], out["y_cube_px"] = mapped[:, 0], mapped[:, 1]
    out["stpt_index"] = np.full(n, -1, np.int64)
    out["stpt_x_px"] = np.nan
    out["stpt_y_px"] = np.nan
    out["heldout_residual_px"] = np.nan
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        out.loc[i, "stpt_index"] = j
        out.loc[i, "stpt_x_px"] = ref_xyr[j, 0]
        out.loc[i, "stpt_y_px"] = ref_xyr[j, 1]
        out.loc[i, "heldout_residual_px"] = loo
    return out
