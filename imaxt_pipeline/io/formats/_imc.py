"""Imaging mass cytometry: an ``.mcd`` file or one ``.txt`` acquisition, read through ``readimc``.

The reader maps IMC acquisitions onto the generic acquisition model:

- every acquisition (ROI) of an ``.mcd`` file, in slide and acquisition-id order, is its own
  section (slice) with a single tile (a 1 x 1 grid); a ``.txt`` file is one acquisition;
- the tile shape is the largest acquisition's (``MaxY`` x ``MaxX``); smaller ones are padded with
  zeros at the bottom and right (noted);
- channels are named ``<metal><mass>_<label>`` (``Ir191_DNA1``; ``Ir191`` without a label); every
  acquisition must have the same metals and masses;
- pixels are float32 counts (the acquisition's ``dtype`` is ``float32``);
- the pixel size is ``AblationDistanceBetweenShotsX`` (``.mcd``; default 1 µm for ``.txt``), the
  stage position the ROI's top-left corner (``ROIStartXPosUm``/``ROIStartYPosUm``), 0 for ``.txt``;
- an acquisition that is empty, truncated (its data ends past the end of the file) or whose data
  is not whole pixels is refused with one line naming the file and the acquisition.

``readimc`` (the ``formats`` extra) is imported only when an IMC file is read; it reads local files.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import re
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...acquisition import Acquisition, TileRecord
from ...errors import InputError
from ..urls import Location
from ._base import Reader, SourceSample, file_stem, first_error

TXT_HEADER = ("Start_push", "End_push", "Pushes_duration", "X", "Y", "Z")
"""The first columns of an IMC ``.txt`` acquisition (tab-separated), then one column per channel."""
DEFAULT_PIXEL_UM = 1.0
"""Pixel size of ``.txt`` acquisitions when none is given (the ablation spot spacing)."""
DEFAULT_THICKNESS_UM = 4.0
"""Section thickness assumed when none is given (not recorded by the instrument)."""


class ImcReader(Reader):
    """Imaging mass cytometry ``.mcd`` files and ``.txt`` acquisitions (each acquisition its own section)."""

    name = "imc"
    summary = "an IMC .mcd file or .txt acquisition"
    options = {
        "pixel_size_um": "pixel size in µm, overriding AblationDistanceBetweenShotsX (.txt: default 1)",
        "slice_thickness_um": f"section thickness in µm (not recorded; default {DEFAULT_THICKNESS_UM:g})",
        "sample": "sample name (default: the file name without its extension)",
        "check_tiles": "accepted for symmetry with the generic reader; tiles are checked when decoded",
    }

    def detect(self, location: Location) -> bool:
        return _kind(location) is not None

    def read(self, location: Location, **options: Any) -> SourceSample:
        self.check_options(options)
        kind = _kind(location)
        if kind is None:
            raise InputError(location.url, "is not an IMC .mcd file or .txt acquisition")
        if not location.is_local:
            raise InputError(location.url, "IMC files are read from a local path (copy the file first)")
        return _read_mcd(self, location, options) if kind == "mcd" else _read_txt(self, location, options)

    def read_tile(self, sample: SourceSample, record: TileRecord) -> np.ndarray:
        assert sample.location is not None
        loc = sample.location
        channel_images = _decode(loc.root, loc.url, sample.details, record.slice)
        h, w = sample.acquisition.tile_shape
        out = np.zeros((h, w), np.float32)
        img = channel_images[record.channel]
        out[: img.shape[0], : img.shape[1]] = img
        return out


def _kind(loc: Location) -> str | None:
    try:
        if not loc.fs.isfile(loc.root):
            return None
        name = loc.root.lower()
        if name.endswith(".mcd"):
            return "mcd"
        if name.endswith(".txt"):
            with loc.fs.open(loc.root, "rb") as fh:
                first = bytes(fh.read(256)).decode("utf-8", "replace").lstrip("\ufeff")
            return "txt" if tuple(first.split("\t")[:6]) == TXT_HEADER else None
    except (OSError, ValueError):
        return None
    return None


def _readimc() -> Any:
    try:
        import readimc
    except ImportError:  # pragma: no cover - the formats extra is not installed
        raise ImportError("reading IMC files needs readimc: pip install 'imaxt-pipeline[formats]'") from None
    return readimc


@contextlib.contextmanager
def _opened(f: Any) -> Iterator[Any]:
    """``f`` opened, and closed even when opening fails (readimc's ``__enter__`` leaks the handle then)."""
    try:
        f.open()
        yield f
    finally:
        f.close()


def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


def _channel_names(metals: list[str], masses: list[int], labels: list[str]) -> list[str]:
    names = []
    for metal, mass, label in zip(metals, masses, labels, strict=True):
        label = re.sub(r"\s+", "_", str(label).strip())
        base = f"{metal}{mass}"
        names.append(f"{base}_{label}" if label and label not in (base, f"{mass}{metal}") else base)
    return names


def _read_txt(reader: ImcReader, loc: Location, options: dict[str, Any]) -> SourceSample:
    readimc = _readimc()
    where = loc.url
    try:
        with _opened(readimc.TXTFile(loc.root)) as f:
            names = _channel_names(list(f.channel_metals), list(f.channel_masses), list(f.channel_labels))
    except (OSError, ValueError) as exc:
        raise InputError(where, f"not a readable IMC .txt acquisition ({_one_line(exc)})") from None
    if not names:
        raise InputError(where, "no channel columns after Start_push ... Z")
    stem = file_stem(loc.root, r"\.(mcd|txt)", "imc")
    details: dict[str, Any] = {"kind": "txt", "acquisitions": [{"id": 1, "description": stem}]}
    images = _decode(loc.root, where, details, 0)  # the shape is only known from the pixels
    h, w = images.shape[1:]
    pixel = _positive(options.get("pixel_size_um"), "pixel_size_um", DEFAULT_PIXEL_UM)
    notes = [] if options.get("pixel_size_um") is not None else [
        f"a .txt acquisition records no pixel size: {pixel:g} µm assumed (option pixel_size_um)"
    ]  # fmt: skip
    details["acquisitions"][0]["shape"] = [int(h), int(w)]
    return _sample(reader, loc, options, names, [(int(h), int(w))], np.zeros((1, 2)), pixel, notes, details)


def _read_mcd(reader: ImcReader, loc: Location, options: dict[str, Any]) -> SourceSample:
    readimc = _readimc()
    where = loc.url
    size = os.path.getsize(loc.root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _opened(readimc.MCDFile(loc.root)) as f:
                acquisitions = [a for slide in f.slides for a in slide.acquisitions]
    except (OSError, ValueError) as exc:
        raise InputError(where, f"not a readable IMC .mcd file ({_one_line(exc)})") from None
    except Exception as exc:  # the XML parser raises its own types
        raise InputError(where, f"not a readable IMC .mcd file ({type(exc).__name__}: {_one_line(exc)})") from None
    if not acquisitions:
        raise InputError(where, "holds no acquisitions")
    names: list[str] | None = None
    shapes: list[tuple[int, int]] = []
    stage = np.zeros((len(acquisitions), 2))
    pixels: set[float] = set()
    entries = []
    notes: list[str] = []
    for i, acq in enumerate(acquisitions):
        label = f"acquisition {acq.id}" + (f" ({acq.description})" if acq.description else "")
        meta = acq.metadata
        try:
            start, end = int(meta["DataStartOffset"]), int(meta["DataEndOffset"])
            value_bytes = int(meta.get("ValueBytes", 4))
            w, h = int(meta["MaxX"]), int(meta["MaxY"])
        except (KeyError, ValueError):
            raise InputError(where, f"{label}: DataStartOffset, DataEndOffset, MaxX or MaxY missing") from None
        if acq.num_channels < 1:
            raise InputError(where, f"{label} has no channels")
        pixel_bytes = (acq.num_channels + 3) * value_bytes
        if value_bytes != 4:
            raise InputError(where, f"{label}: ValueBytes {value_bytes}; float32 values (4 bytes) are supported")
        if end <= start or w < 1 or h < 1:
            raise InputError(where, f"{label} is empty (no pixel data)")
        if end > size:
            raise InputError(where, f"{label} is truncated: its data ends at byte {end} but the file has {size} bytes")
        if (end - start) % pixel_bytes:
            raise InputError(where, f"{label} is truncated: {end - start} data bytes are not whole pixels")
        n_pix = (end - start) // pixel_bytes
        if n_pix != w * h:
            notes.append(f"{label}: {n_pix} of {w} x {h} pixels acquired (ablation stopped early); the rest read as 0")
        mine = _channel_names(list(acq.channel_metals), list(acq.channel_masses), list(acq.channel_labels))
        if names is None:
            names = mine
        elif [n.split("_")[0] for n in mine] != [n.split("_")[0] for n in names]:
            raise InputError(where, f"{label} has channels {', '.join(mine)} unlike the first's {', '.join(names)}")
        if acq.pixel_size_x_um is not None and acq.pixel_size_x_um > 0:
            pixels.add(float(acq.pixel_size_x_um))
        coords = None
        with contextlib.suppress(Exception):
            coords = acq.roi_coords_um
        if coords is not None:
            x0, y0 = coords[0]
            stage[i] = (-float(y0), float(x0))  # slide Y grows upwards; image rows grow downwards
        shapes.append((h, w))
        entries.append({"id": acq.id, "description": acq.description or "", "slide": acq.slide.id,
                        "shape": [h, w], "offsets": [start, end]})  # fmt: skip
    assert names is not None
    if len(pixels) > 1:
        notes.append(f"acquisitions differ in pixel size ({', '.join(f'{p:g}' for p in sorted(pixels))} µm)")
    pixel = _positive(options.get("pixel_size_um"), "pixel_size_um", min(pixels) if pixels else DEFAULT_PIXEL_UM)
    details = {"kind": "mcd", "acquisitions": entries}
    return _sample(reader, loc, options, names, shapes, stage, pixel, notes, details)


def _sample(
    reader: ImcReader,
    loc: Location,
    options: dict[str, Any],
    names: list[str],
    shapes: list[tuple[int, int]],
    stage_yx: np.ndarray,
    pixel: float,
    notes: list[str],
    details: dict[str, Any],
) -> SourceSample:
    where = loc.url
    tile = (max(h for h, _ in shapes), max(w for _, w in shapes))
    padded = sum(1 for s in shapes if s != tile)
    if padded:
        notes.append(f"{padded} acquisition(s) smaller than {tile[0]} x {tile[1]} px: padded with zeros")
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    thickness = options.get("slice_thickness_um")
    if thickness is None:
        notes.append(f"section thickness not recorded: {DEFAULT_THICKNESS_UM:g} µm assumed (option slice_thickness_um)")
    try:
        acq = Acquisition.model_validate(
            {
                "sample": str(options.get("sample") or file_stem(loc.root, r"\.(mcd|txt)", "imc")),
                "modality": "IMC",
                "pixel_size_um": pixel,
                "slice_thickness_um": _positive(thickness, "slice_thickness_um", DEFAULT_THICKNESS_UM),
                "tile_shape": tile,
                "overlap": 0.0,
                "channels": names,
                "rows": 1,
                "cols": 1,
                "slices": len(shapes),
                "dtype": "float32",  # an extra of the model: raw stores of float32 tiles (io.rawzarr.tile_dtype)
            }
        )
    except ValueError as exc:
        raise InputError(where, f"does not describe a valid acquisition ({first_error(exc)})") from None
    stage = np.zeros((acq.slices, 1, 1, 2), np.float64)
    stage[:, 0, 0] = stage_yx
    records = [
        TileRecord(slice=s, z=0, channel=c, row=0, col=0, x_um=float(stage_yx[s, 1]), y_um=float(stage_yx[s, 0]),
                   file=f"acquisition {details['acquisitions'][s]['id']}")
        for s in range(acq.slices)
        for c in range(len(names))
    ]  # fmt: skip
    details["pixel_size_from"] = "override" if options.get("pixel_size_um") is not None else details["kind"]
    return SourceSample(
        root=loc.url,
        acquisition=acq,
        records=records,
        stage_um=stage,
        format=reader.name,
        notes=notes,
        details=details,
        reader=reader,
        location=loc,
    )


_CACHE: dict[str, Any] = {"key": None, "image": None}
_CACHE_LOCK = threading.Lock()


def _decode(path: str, where: str, details: dict[str, Any], index: int) -> np.ndarray:
    """Every channel ``(C, H, W)`` float32 of acquisition ``index`` (the last one decoded is kept)."""
    try:
        stat = os.stat(path)
    except OSError:
        raise InputError(where, "file is missing") from None
    key = (path, stat.st_mtime_ns, stat.st_size, details["kind"], details["acquisitions"][index]["id"])
    with _CACHE_LOCK:
        if _CACHE["key"] == key:
            return np.asarray(_CACHE["image"])
        image = _decode_uncached(path, where, details, index)
        _CACHE.update(key=key, image=image)
        return image


def _decode_uncached(path: str, where: str, details: dict[str, Any], index: int) -> np.ndarray:
    """Every channel ``(C, H, W)`` float32 of acquisition ``index``, through readimc (strict)."""
    readimc = _readimc()
    entry = details["acquisitions"][index]
    label = f"acquisition {entry['id']}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if details["kind"] == "txt":
                with _opened(readimc.TXTFile(path)) as f:
                    img = f.read_acquisition(strict=True)
            else:
                with _opened(readimc.MCDFile(path)) as f:
                    acq = next(a for s in f.slides for a in s.acquisitions if a.id == entry["id"])
                    img = f.read_acquisition(acq, strict=True)
    except FileNotFoundError:
        raise InputError(where, "file is missing") from None
    except StopIteration:
        raise InputError(where, f"{label} is no longer in the file") from None
    except Exception as exc:  # readimc, pandas and numpy raise many types for damaged files
        problem = _one_line(exc).replace(f"'{posixpath.basename(path)}' ", "")
        raise InputError(where, f"{label} cannot be read ({problem})") from None
    img = np.asarray(img, np.float32)
    if img.ndim != 3 or not img.shape[1] or not img.shape[2]:
        raise InputError(where, f"{label} is empty (no pixel data)")
    if not np.isfinite(img).all():
        raise InputError(where, f"{label} has non-finite counts (a truncated or damaged file)")
    if "shape" in entry and tuple(img.shape[1:]) != tuple(entry["shape"]):
        raise InputError(where, f"{label} decodes to {img.shape[1:]} px but its metadata says {tuple(entry['shape'])}")
    return img


def _positive(value: Any, what: str, default: float) -> float:
    if value is None:
        return float(default)
    out = float(value)
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return out
