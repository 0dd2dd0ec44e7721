"""The results contract, typed: what the steps hand to each other through the output store.

Steps never import each other. Whatever one step writes for another (or for
notebooks and downstream tools) is named and read/written here: image and
table names, the ``attrs["imaxt"]`` keys, and typed readers and writers of the
calibration, tile positions, stitch correspondences, slice offsets, bead
table, label images and catalogues. ``docs/results-contract.md`` documents
every key and table; :data:`~.output.FORMAT_VERSION` versions it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pandas as pd
import zarr
from numpy.typing import NDArray

from ..algorithms.optics import Calibration, MosaicGeometry, mosaic_geometry
from ..errors import StoreError
from .ome import OmeImage
from .output import FORMAT_VERSION, OutputStore
from .rawzarr import RawStore

__all__ = [
    "BEADS",
    "CALIBRATION_ARRAYS",
    "CELLS",
    "CONFIDENCE",
    "CROPS",
    "CROP_INDEX_COLUMNS",
    "CUBE",
    "FLAT",
    "LABELS",
    "MOSAIC",
    "NUCLEI",
    "REPRESENTATIVE_SLICES",
    "STITCH_PAIRS",
    "STITCH_POINTS",
    "STITCH_FLAT_SAMPLES",
    "STRAY",
    "FORMAT_VERSION",
    "calibration_record",
    "check_format_version",
    "crops_array",
    "label_path",
    "mosaic_canvas",
    "open_label_images",
    "position_key",
    "read_calibration",
    "read_catalogue",
    "read_slice_offsets",
    "read_stitch_points",
    "read_table_or_none",
    "read_tile_positions",
    "replace_slices",
    "slices_done",
    "source_image",
    "stitch_record",
    "table_path",
    "write_calibration",
    "write_slice_offsets",
    "write_stitch_record",
]

# -- names ------------------------------------------------------------------
MOSAIC: Final = "mosaic"  #: NGFF image (c, z, y, x), fused slices (step ``mosaic``)
CONFIDENCE: Final = "confidence"  #: NGFF image (1, z, y, x), Σ confidence of the fusion
CUBE: Final = "cube"  #: NGFF image (c, z, y, x), registered (step ``cube``)
LABELS: Final = ("nuclei", "cells")  #: label images ``<image>/labels/<name>`` (step ``segment``)
CROPS: Final = "crops"  #: array (n, c, h, w) and its index table (step ``crops``)
FLAT: Final = "calibration/flat"  #: float32 (C, H, W) flat field
STRAY: Final = "calibration/stray"  #: float32 (C, H, W) additive stray light
CALIBRATION_ARRAYS: Final = ((FLAT, "has_flat"), (STRAY, "has_stray"))  #: array, flag in ``imaxt.calibrate``

STITCH_PAIRS: Final = "stitch_pairs"  #: one row per tile pair of a slice, with residuals
STITCH_POINTS: Final = "stitch_points"  #: seam correspondences of every informative pair
#: block means of both tiles over the seams of each slice's best pairs (raw counts): the flat is refined from
#: every slice's seams jointly (step ``stitch``)
STITCH_FLAT_SAMPLES: Final = "stitch_flat_samples"
BEADS: Final = "beads"  #: bead detections and fits, ``bead_id`` from ``register``
CELLS: Final = "cells"  #: one row per cell per plane
NUCLEI: Final = "nuclei"  #: one row per nucleus per plane
REPRESENTATIVE_SLICES: Final = "representative_slices"  #: slices ranked by typicality

#: Catalogue columns copied into the crops index (row ``i`` describes crop ``i``).
CROP_INDEX_COLUMNS: Final = (
    "slice",
    "plane",
    "label",
    "centroid_y_px",
    "centroid_x_px",
    "centroid_y_um",
    "centroid_x_um",
    "centroid_z_um",
    "area_px",
)


def table_path(name: str) -> str:
    """Path of table ``name`` inside the store."""
    return f"tables/{name}.parquet"


# -- format version -----------------------------------------------------------
def check_format_version(output: OutputStore) -> str:
    """Record :data:`FORMAT_VERSION` in ``imaxt.format_version``; refuse a store of another major version.

    A store made before the contract was versioned (no key) is taken as
    version 1 and stamped.

    Raises
    ------
    StoreError
        If the store holds results of another major format version.
    """
    found = output.imaxt_attrs().get("format_version")
    if found is not None and str(found).split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise StoreError(
            f"{output.url}: results format {found}, this version of imaxt-pipeline writes "
            f"{FORMAT_VERSION}; write to a new output store"
        )
    if found != FORMAT_VERSION:
        output.update_imaxt_attrs("format_version", FORMAT_VERSION)
    return FORMAT_VERSION


def slices_done(output: OutputStore) -> list[int]:
    """``imaxt.slices_done``: slices every enabled step has processed in earlier runs (the runner writes it)."""
    return [int(s) for s in output.imaxt_attrs().get("slices_done", [])]


# -- tables -------------------------------------------------------------------
def read_table_or_none(output: OutputStore, name: str) -> pd.DataFrame | None:
    """Table ``name``, or None when no step has written it yet."""
    return output.read_table(name) if output.has_table(name) else None


def replace_slices(
    output: OutputStore, name: str, new: pd.DataFrame, slices: Sequence[int], *, sort_by: Sequence[str]
) -> pd.DataFrame:
    """Table ``name`` with its rows of ``slices`` replaced by ``new``, sorted (stable) by ``sort_by``.

    Live processing redoes only the slices that landed: rows of every other
    slice are kept as stored. Nothing is written.
    """
    old = read_table_or_none(output, name)
    if old is not None:
        if "slice" in old.columns:
            old = old[~old["slice"].isin(list(slices))]
        if len(old):
            new = pd.concat([old, new], ignore_index=True)
    if len(new):
        new = new.sort_values(list(sort_by), kind="stable", ignore_index=True)
    return new


# -- calibration (step calibrate, refined by stitch) ---------------------------
def calibration_record(output: OutputStore) -> dict[str, Any]:
    """``imaxt.calibrate`` as stored (empty when ``calibrate`` has not run)."""
    record: dict[str, Any] = dict(output.imaxt_attrs().get("calibrate") or {})
    return record


def read_calibration(output: OutputStore, n_channels: int) -> Calibration:
    """The stored calibration: ``imaxt.calibrate`` plus the flat and stray arrays (identity when absent)."""
    attrs = calibration_record(output)
    if not attrs:
        return Calibration.identity(n_channels)
    arrays: dict[str, NDArray[np.float32] | None] = {FLAT: None, STRAY: None}
    for path, flag in CALIBRATION_ARRAYS:
        if attrs.get(flag):
            arrays[path] = np.asarray(output.open_array(path)[...], np.float32)
    return Calibration.from_attrs(attrs, arrays[FLAT], arrays[STRAY])


def write_calibration(output: OutputStore, cal: Calibration, **extra: object) -> list[str]:
    """Store ``cal`` (``imaxt.calibrate`` with ``extra`` keys, flat and stray arrays); return the paths written."""
    written = []
    for path, data in ((FLAT, cal.flat), (STRAY, cal.stray)):
        if data is None:
            continue
        arr = output.create_array(path, shape=data.shape, chunks=(1, *data.shape[1:]), dtype="float32")
        arr[...] = data.astype(np.float32)
        written.append(path)
    output.update_imaxt_attrs("calibrate", {**cal.to_attrs(), **extra})
    return written


# -- mosaic frame and tile positions (step stitch -> mosaic) -------------------
def mosaic_canvas(raw: RawStore) -> MosaicGeometry:
    """The sample's mosaic canvas, shared by every slice (fixed by the acquisition and slice 0's stage)."""
    acq = raw.acquisition
    return mosaic_geometry(
        raw.stage_px(0, 0), rows=acq.rows, cols=acq.cols, tile_shape=acq.tile_shape, overlap=acq.overlap
    )


def position_key(slice_: int, row: int, col: int) -> str:
    """Key of a tile in ``imaxt.stitch.tile_positions_px``: ``"slice/row/col"``."""
    return f"{slice_}/{row}/{col}"


def stitch_record(output: OutputStore) -> dict[str, Any]:
    """``imaxt.stitch`` as stored (empty before ``stitch``): tile positions, residuals, unconstrained tiles, frame."""
    record: dict[str, Any] = dict(output.imaxt_attrs().get("stitch") or {})
    return record


def write_stitch_record(output: OutputStore, record: dict[str, Any]) -> None:
    """Replace ``imaxt.stitch`` (keys: ``tile_positions_px``, ``residuals``, ``unconstrained``,
    ``position_sigma_px``, ``flags``, ``distortion``, ``frame``; see ``docs/results-contract.md``)."""
    output.update_imaxt_attrs("stitch", record)


def read_tile_positions(output: OutputStore) -> dict[str, list[float]]:
    """``imaxt.stitch.tile_positions_px``: ``{"s/r/c": [y, x]}`` in the mosaic frame (empty before ``stitch``)."""
    positions = stitch_record(output).get("tile_positions_px", {})
    return {str(k): [float(v[0]), float(v[1])] for k, v in positions.items()}


def read_stitch_points(output: OutputStore, *, exclude: Sequence[int]) -> pd.DataFrame:
    """Stored stitch correspondences of every slice but ``exclude`` (empty frame when none)."""
    df = read_table_or_none(output, STITCH_POINTS)
    if df is None:
        return pd.DataFrame()
    return df[~df["slice"].isin(list(exclude))]


# -- slice offsets (step register -> cube) -------------------------------------
def read_slice_offsets(output: OutputStore, n_slices: int) -> NDArray[np.float64] | None:
    """``imaxt.register.slice_offsets_px`` for slices ``0..n_slices-1``, or None before ``register``.

    Unknown (null) offsets read as 0; slices past the last registered one hold
    its offset, so that a slice landed after the last registration stays
    where its predecessor is.
    """
    reg = (output.imaxt_attrs().get("register") or {}).get("slice_offsets_px")
    if not reg:
        return None
    offsets = np.zeros((n_slices, 2))
    known = np.array([[np.nan if v is None else v for v in row] for row in reg], float)[:n_slices]
    offsets[: len(known)] = np.nan_to_num(known)
    if len(known) < n_slices:
        offsets[len(known) :] = offsets[len(known) - 1]
    return offsets


def write_slice_offsets(
    output: OutputStore,
    offsets: NDArray[np.float64],
    errors: NDArray[np.float64],
    *,
    unconstrained: Sequence[int],
    chi2: Sequence[float | None],
    weakly_tied: dict[int, int] | None = None,
) -> None:
    """Write ``imaxt.register``: offsets and their 1-sigma errors (px, 4 decimals), unconstrained slices, chi2,
    and (when given) the slices tied by too few good beads, ``{"slice": beads}``."""
    output.update_imaxt_attrs("register.slice_offsets_px", np.round(offsets, 4).tolist())
    output.update_imaxt_attrs("register.slice_offsets_err_px", np.round(errors, 4).tolist())
    output.update_imaxt_attrs("register.unconstrained", [int(s) for s in unconstrained])
    output.update_imaxt_attrs("register.chi2", list(chi2))
    if weakly_tied is not None:
        output.update_imaxt_attrs("register.weakly_tied", {str(int(s)): int(t) for s, t in weakly_tied.items()})


# -- label images (step segment -> catalogue, crops) ----------------------------
def source_image(output: OutputStore) -> str:
    """The image segmented and measured: ``"cube"`` when the registered cube exists, else ``"mosaic"``.

    Raises
    ------
    StoreError
        If neither exists.
    """
    for name in (CUBE, MOSAIC):
        if output.has(name):
            return name
    raise StoreError(f"{output.url}: neither 'cube' nor 'mosaic' exists; run the mosaic step first")


def label_path(image: str, label: str) -> str:
    """Path of label image ``label`` of ``image``: ``<image>/labels/<label>``."""
    return f"{image}/labels/{label}"


def open_label_images(output: OutputStore, image: str) -> tuple[OmeImage, OmeImage]:
    """The ``(nuclei, cells)`` label images of ``image``.

    Raises
    ------
    StoreError
        If either is missing.
    """
    for lab in LABELS:
        if not output.has(label_path(image, lab)):
            raise StoreError(f"{output.url}: {label_path(image, lab)} is missing; run the segment step first")
    nuclei, cells = (output.open_image(label_path(image, lab)) for lab in LABELS)
    return nuclei, cells


# -- catalogues (step catalogue -> crops) ---------------------------------------
def read_catalogue(output: OutputStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``(cells, nuclei)`` tables.

    Raises
    ------
    StoreError
        If either is missing.
    """
    if not (output.has_table(NUCLEI) and output.has_table(CELLS)):
        raise StoreError(f"{output.url}: tables nuclei/cells are missing; run the catalogue step first")
    return output.read_table(CELLS), output.read_table(NUCLEI)


def crops_array(
    output: OutputStore, *, n: int, channels: Sequence[str], size: int, chunk: int, image: str, append: bool
) -> zarr.Array[Any]:
    """The ``crops`` array (n, c, size, size) of crops cut from ``image``, ``chunk`` crops per chunk.

    ``append`` grows the stored array to ``n`` rows, keeping its crops (and
    chunking); otherwise it is created anew.
    """
    shape = (n, len(channels), size, size)
    if append:
        array = output.open_array(CROPS)
        array.resize(shape)
    else:
        chunks = (max(1, min(chunk, max(n, 1))), len(channels), size, size)
        array = output.create_array(
            CROPS, shape=shape, chunks=chunks, dtype="float32", dimension_names=("n", "c", "y", "x")
        )
    array.attrs["imaxt"] = {
        "index_table": table_path(CROPS),
        "channels": list(channels),
        "image": image,
        "description": "nucleus-centred crops, zero outside the nucleus mask",
    }
    return array
