"""Write synthetic imaging mass cytometry acquisitions: ``.txt`` files and minimal ``.mcd`` files.

:func:`write_imc_txt` writes one acquisition in the instrument's tab-separated text export:
columns ``Start_push, End_push, Pushes_duration, X, Y, Z``, then one per channel named
``<label>(<metal><mass>Di)`` (``DNA1(Ir191Di)``), one row per pixel in acquisition order.

:func:`write_mcd` writes an ``.mcd`` file as ``readimc`` parses one: the acquisitions' pixel
data (per pixel, float32 ``X, Y, Z`` and one value per channel) back to back, then the
``MCDSchema`` XML document (UTF-16-LE) with one ``Slide``, ``Panorama``, ``AcquisitionROI`` (and
its four ``ROIPoint``) per acquisition, each ``Acquisition`` (``DataStartOffset``/
``DataEndOffset`` into the file, ``MaxX``/``MaxY``, ``AblationDistanceBetweenShotsX/Y``,
``ROIStartXPosUm``/``ROIStartYPosUm``...) and its ``AcquisitionChannel`` list (``X``, ``Y``, ``Z``,
then ``Ir(191)`` with its label). ``empty`` and ``truncate`` make the broken files the reader
refuses. :func:`write_imc` converts a generic simulator sample: the first tile of each section
becomes one acquisition.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from ..io.raw import read_raw_sample, read_tile
from ..io.urls import Location

__all__ = ["DEFAULT_PANEL", "ImcAcquisition", "write_imc", "write_imc_txt", "write_mcd"]

DEFAULT_PANEL = [("DNA1", "Ir", 191), ("DNA2", "Ir", 193), ("CD45", "Sm", 152), ("Ecad", "Nd", 148)]
"""(label, metal, mass) of synthetic channels, in channel order."""
MCD_XMLNS = "http://www.fluidigm.com/IMC/MCDSchema_V2_0.xsd"


@dataclass
class ImcAcquisition:
    """One acquisition to write: counts ``(C, H, W)``, the ROI's top-left on the slide (x, y µm), a description."""

    image: np.ndarray
    roi_um: tuple[float, float] = (0.0, 0.0)
    description: str = ""


def _pixels(image: np.ndarray, n: int | None = None) -> np.ndarray:
    """Per pixel (row-major, as ablated): X, Y, Z and every channel, float32 (P, 3 + C); the first ``n`` only."""
    img = np.asarray(image, np.float32)
    c, h, w = img.shape
    ys, xs = np.mgrid[0:h, 0:w]
    rows = np.column_stack([xs.ravel(), ys.ravel(), np.zeros(h * w), img.reshape(c, -1).T]).astype(np.float32)
    return rows if n is None else rows[:n]


def _atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_imc_txt(
    path: str | os.PathLike[str], image: np.ndarray, panel: list[tuple[str, str, int]] = DEFAULT_PANEL
) -> None:
    """Write counts ``(C, H, W)`` as an IMC ``.txt`` acquisition (values exact in float32: 9 digits)."""
    img = np.asarray(image, np.float32)
    if img.ndim != 3 or img.shape[0] != len(panel):
        raise ValueError(f"image must be (C, H, W) with C = {len(panel)} channels, got {img.shape}")
    columns = ["Start_push", "End_push", "Pushes_duration", "X", "Y", "Z"]
    columns += [f"{label}({metal}{mass}Di)" for label, metal, mass in panel]
    lines = ["\t".join(columns)]
    for i, row in enumerate(_pixels(img)):
        push = [i * 200, i * 200 + 199, 200]
        lines.append(
            "\t".join([*(str(p) for p in push), *(f"{int(v)}" for v in row[:3]), *(f"{v:.9g}" for v in row[3:])])
        )
    _atomic_write(path, ("\r\n".join(lines) + "\r\n").encode())


def write_mcd(
    path: str | os.PathLike[str],
    acquisitions: list[ImcAcquisition],
    panel: list[tuple[str, str, int]] = DEFAULT_PANEL,
    *,
    pixel_size_um: float = 1.0,
    empty: int | None = None,
    truncate: int | None = None,
) -> None:
    """Write acquisitions as a minimal ``.mcd`` file that ``readimc.MCDFile`` reads.

    Parameters
    ----------
    empty : int, optional
        Index of an acquisition written without pixel data (``DataStartOffset == DataEndOffset``).
    truncate : int, optional
        Index of an acquisition whose data is cut short: its ``DataEndOffset`` points past the end
        of the file (the XML is kept, as when a copy stops early and the schema is rewritten).
    """
    blobs, offsets = [], []
    pos = 0
    for i, acq in enumerate(acquisitions):
        img = np.asarray(acq.image, np.float32)
        if img.ndim != 3 or img.shape[0] != len(panel):
            raise ValueError(f"acquisition {i}: image must be (C, H, W) with C = {len(panel)}, got {img.shape}")
        data = b"" if i == empty else _pixels(img).astype("<f4").tobytes()
        end = pos + len(data)
        if i == truncate:
            data = data[: len(data) // 2]
        blobs.append(data)
        offsets.append((pos, end))
        pos += len(data)
    body = b"".join(blobs)
    if truncate is not None:  # its data was cut short: DataEndOffset lies past the end of the file
        start, end = offsets[truncate]
        size = len(body) + len(_schema(acquisitions, panel, offsets, pixel_size_um).encode("utf-16-le"))
        offsets[truncate] = (start, max(end, size + 64 * len(panel)))
    xml = _schema(acquisitions, panel, offsets, pixel_size_um)
    _atomic_write(path, body + xml.encode("utf-16-le"))


def _schema(
    acquisitions: list[ImcAcquisition],
    panel: list[tuple[str, str, int]],
    offsets: list[tuple[int, int]],
    pixel_size_um: float,
) -> str:
    def el(tag: str, **fields: object) -> str:
        return f"<{tag}>" + "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items()) + f"</{tag}>"

    parts = [el("Slide", ID=0, UID="synthetic", Description="synthetic slide", Filename="synthetic.mcd",
                ImageStartOffset=0, ImageEndOffset=0, ImageFile="")]  # fmt: skip
    channel_id = 0
    for i, acq in enumerate(acquisitions):
        c, h, w = np.asarray(acq.image).shape
        x0, y0 = acq.roi_um
        x1, y1 = x0 + w * pixel_size_um, y0 - h * pixel_size_um  # slide Y grows upwards
        aid = i + 1
        parts.append(el("Panorama", ID=aid, SlideID=0, Description=f"panorama {aid}", Type="Imported",
                        ImageStartOffset=0, ImageEndOffset=0))  # fmt: skip
        parts.append(el("AcquisitionROI", ID=aid, PanoramaID=aid, ROIType="Acquisition", Description=f"roi {aid}"))
        for k, (px, py) in enumerate([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]):
            parts.append(el("ROIPoint", ID=4 * i + k + 1, AcquisitionROIID=aid, OrderNumber=k + 1,
                            SlideXPosUm=px, SlideYPosUm=py))  # fmt: skip
        start, end = offsets[i]
        parts.append(
            el("Acquisition", ID=aid, Description=acq.description or f"ROI_{aid:03d}", AcquisitionROIID=aid,
               OrderNumber=aid, DataStartOffset=start, DataEndOffset=end, ValueBytes=4, MaxX=w, MaxY=h,
               AblationDistanceBetweenShotsX=pixel_size_um, AblationDistanceBetweenShotsY=pixel_size_um,
               ROIStartXPosUm=x0, ROIStartYPosUm=y0, ROIEndXPosUm=x1, ROIEndYPosUm=y1,
               BeforeAblationImageStartOffset=0, BeforeAblationImageEndOffset=0,
               AfterAblationImageStartOffset=0, AfterAblationImageEndOffset=0)
        )  # fmt: skip
        channels = [("X", "X"), ("Y", "Y"), ("Z", "Z")] + [(f"{m}({mass})", label) for label, m, mass in panel]
        for order, (name, label) in enumerate(channels):
            channel_id += 1
            parts.append(el("AcquisitionChannel", ID=channel_id, AcquisitionID=aid, OrderNumber=order,
                            ChannelName=name, ChannelLabel=label))  # fmt: skip
    return f'<MCDSchema xmlns="{MCD_XMLNS}">' + "".join(parts) + "</MCDSchema>"


def write_imc(
    generic_dir: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    *,
    panel: list[tuple[str, str, int]] = DEFAULT_PANEL,
) -> list[np.ndarray]:
    """Convert a generic-layout sample: tile (0, 0) of every section becomes one acquisition, counts float32.

    The generic sample's channels map onto the first channels of ``panel``; ``.txt`` writes only
    the first section. Returns the acquisitions' images ``(C, H, W)``, as written.
    """
    raw = read_raw_sample(str(generic_dir))
    acq = raw.acquisition
    if len(acq.channels) > len(panel):
        raise ValueError(f"{len(acq.channels)} channels but the panel has {len(panel)}")
    panel = panel[: len(acq.channels)]
    loc = Location(raw.root)
    images = []
    for s in range(acq.slices):
        planes = [read_tile(loc, raw.record_for(s, 0, c, 0), acq).astype(np.float32) / 16 for c in range(len(panel))]
        images.append(np.stack(planes))
    if str(out_file).lower().endswith(".txt"):
        write_imc_txt(out_file, images[0], panel)
        return images[:1]
    acquisitions = [
        ImcAcquisition(img, (float(raw.stage_um[s, 0, 0, 1]), -float(raw.stage_um[s, 0, 0, 0])), f"section {s + 1}")
        for s, img in enumerate(images)
    ]
    write_mcd(out_file, acquisitions, panel, pixel_size_um=acq.pixel_size_um)
    return images
