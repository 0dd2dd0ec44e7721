"""Per-object features of a labelled plane and cell-to-nucleus matching.

The per-cell catalogue has one row per cell per plane: position (px and µm
in the cube frame), shape (area, perimeter, eccentricity, maximum Feret
diameter), mean and integrated intensity per channel, and the matched
nucleus (largest overlap) with the nucleus's own features. A plane is measured
whole (:func:`cell_catalogue`) or block by block (:func:`catalogue_parts` per
block, :func:`catalogue_from_parts` per plane): the same sums either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ._parts import HALO, ObjectParts, features_from_parts, object_parts, pad_halo

__all__ = [
    "CatalogueParts",
    "catalogue_from_parts",
    "catalogue_parts",
    "cell_catalogue",
    "match_nuclei",
    "region_features",
]


def region_features(
    labels: ArrayLike, image: ArrayLike, *, channel_names: Sequence[str], offset_yx: tuple[int, int] = (0, 0)
) -> pd.DataFrame:
    """Shape and intensity features of every label.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Label image (0 = background).
    image : ndarray, shape (C, H, W)
        Intensities, one plane per channel.
    channel_names : sequence of str
        Names used in the column names ``mean_<name>``/``integrated_<name>``.
    offset_yx : tuple of int
        Added to centroids and bounding boxes (position of ``labels`` in a
        larger plane).

    Returns
    -------
    pandas.DataFrame
        One row per label, sorted by label, with ``label``, ``centroid_y_px``,
        ``centroid_x_px``, ``area_px``, ``perimeter_px``, ``eccentricity``,
        ``feret_diameter_max_px``, ``bbox_y0``..``bbox_x1`` and
        ``mean_<c>``/``integrated_<c>`` for each channel: the values of
        ``skimage.measure.regionprops`` (``bbox_*1`` exclusive), measured by
        partial sums (:mod:`._parts`).
    """
    lab = np.asarray(labels)
    img = np.asarray(image, np.float32)
    if img.ndim != 3 or img.shape[1:] != lab.shape:
        raise ValueError(f"image must be (C, *labels.shape) = (C, {lab.shape}), got {img.shape}")
    if len(channel_names) != img.shape[0]:
        raise ValueError(f"{len(channel_names)} channel names for {img.shape[0]} channels")
    parts = object_parts(pad_halo(lab), img, channels=img.shape[0], offset_yx=offset_yx)
    return features_from_parts([parts], channel_names=channel_names)


@dataclass(frozen=True)
class CatalogueParts:
    """One block's share of a plane's catalogue: cell and nucleus parts, and (cell, nucleus, pixels) overlaps."""

    cells: ObjectParts
    nuclei: ObjectParts
    overlaps: pd.DataFrame


def catalogue_parts(
    cells: ArrayLike, nuclei: ArrayLike, image: ArrayLike, *, offset_yx: tuple[int, int] = (0, 0)
) -> CatalogueParts:
    """One block's parts: ``cells``/``nuclei`` labels of its core and a ``HALO``-px margin, ``image`` of its core."""
    img = np.asarray(image, np.float32)
    c_lab, n_lab = np.asarray(cells, np.int64), np.asarray(nuclei, np.int64)
    if c_lab.shape != n_lab.shape:
        raise ValueError(f"cells {c_lab.shape} and nuclei {n_lab.shape} differ in shape")
    core = (slice(HALO, c_lab.shape[0] - HALO), slice(HALO, c_lab.shape[1] - HALO))
    return CatalogueParts(
        object_parts(c_lab, img, channels=img.shape[0], offset_yx=offset_yx),
        object_parts(n_lab, img, channels=img.shape[0], offset_yx=offset_yx),
        _overlaps(c_lab[core], n_lab[core]),
    )


def _overlaps(cells: NDArray[np.int64], nuclei: NDArray[np.int64]) -> pd.DataFrame:
    c, n = cells.ravel(), nuclei.ravel()
    both = (c > 0) & (n > 0)
    if not both.any():
        return pd.DataFrame(
            {"cell": np.zeros(0, np.int64), "nucleus": np.zeros(0, np.int64), "pixels": np.zeros(0, np.int64)}
        )
    span = int(n[both].max()) + 1
    if int(c[both].max()) < (1 << 62) // span:  # one int64 key per pair: a 1-d unique (axis=1 sorts rows of objects)
        keys, counts = np.unique(c[both] * span + n[both], return_counts=True)
        pairs = np.stack([keys // span, keys % span])
    else:
        pairs, counts = np.unique(np.stack([c[both], n[both]]), axis=1, return_counts=True)
    return pd.DataFrame({"cell": pairs[0], "nucleus": pairs[1], "pixels": counts.astype(np.int64)})


def match_nuclei(cells: ArrayLike, nuclei: ArrayLike) -> pd.Series:
    """The nucleus overlapping each cell most (max-overlap matching).

    Parameters
    ----------
    cells, nuclei : ndarray of int, shape (H, W)
        Cell and nucleus labels.

    Returns
    -------
    pandas.Series
        Indexed by cell label (every cell present), value = nucleus label
        with the largest pixel overlap, 0 when the cell holds no nucleus.
        Ties go to the smaller nucleus label.
    """
    cell_lab, nuc_lab = np.asarray(cells), np.asarray(nuclei)
    if cell_lab.shape != nuc_lab.shape:
        raise ValueError(f"cells {cell_lab.shape} and nuclei {nuc_lab.shape} differ in shape")
    c = cell_lab.ravel().astype(np.int64)
    return _best_nucleus(np.unique(c[c > 0]), [_overlaps(cell_lab.astype(np.int64), nuc_lab.astype(np.int64))])


def _best_nucleus(all_cells: NDArray[np.int64], overlaps: Sequence[pd.DataFrame]) -> pd.Series:
    result = pd.Series(0, index=pd.Index(all_cells, name="label"), dtype=np.int64)
    table = pd.concat(overlaps, ignore_index=True)
    if len(table):
        summed = table.groupby(["cell", "nucleus"], as_index=False, sort=False)["pixels"].sum()
        cell, nuc, counts = (summed[k].to_numpy(np.int64) for k in ("cell", "nucleus", "pixels"))
        # sort by cell, then overlap descending, then nucleus ascending; first row per cell wins
        order = np.lexsort((nuc, -counts, cell))
        cell_sorted = cell[order]
        first = np.r_[True, cell_sorted[1:] != cell_sorted[:-1]]
        result.loc[cell_sorted[first]] = nuc[order][first]
    return result


def cell_catalogue(
    cells: ArrayLike,
    nuclei: ArrayLike,
    image: ArrayLike,
    *,
    channel_names: Sequence[str],
    pixel_size_um: float,
    z_um: float = 0.0,
    slice_index: int = 0,
    plane: int = 0,
    offset_yx: tuple[int, int] = (0, 0),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cell and nucleus catalogues of one plane.

    Parameters
    ----------
    cells, nuclei : ndarray of int, shape (H, W)
        Cell and nucleus labels.
    image : ndarray, shape (C, H, W)
        Channel intensities of the plane.
    channel_names : sequence of str
        Channel names for the intensity columns.
    pixel_size_um : float
        Pixel size in the cube frame (µm per px along y and x).
    z_um : float
        Depth of the plane in the cube frame, µm.
    slice_index, plane : int
        Physical slice and plane (z) index written to every row.
    offset_yx : tuple of int
        Position of the arrays in the plane, px.

    Returns
    -------
    cells_table, nuclei_table : pandas.DataFrame
        ``cells_table`` has the features of :func:`region_features`, plus
        ``slice``, ``plane``, ``centroid_{y,x}_um``, ``centroid_z_um``,
        ``area_um2``, ``nucleus_label`` and the matched nucleus's features
        prefixed ``nucleus_`` (NaN for cells without a nucleus).
        ``nuclei_table`` holds the nuclei's own rows.
    """
    img = np.asarray(image, np.float32)
    c_lab, n_lab = np.asarray(cells), np.asarray(nuclei)
    if img.ndim != 3 or img.shape[1:] != c_lab.shape:
        raise ValueError(f"image must be (C, *labels.shape) = (C, {c_lab.shape}), got {img.shape}")
    parts = catalogue_parts(pad_halo(c_lab), pad_halo(n_lab), img, offset_yx=offset_yx)
    return catalogue_from_parts(
        [parts],
        channel_names=channel_names,
        pixel_size_um=pixel_size_um,
        z_um=z_um,
        slice_index=slice_index,
        plane=plane,
    )


def catalogue_from_parts(
    parts: Sequence[CatalogueParts],
    *,
    channel_names: Sequence[str],
    pixel_size_um: float,
    z_um: float = 0.0,
    slice_index: int = 0,
    plane: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cell and nucleus catalogues of a plane from its blocks' parts (columns: :func:`cell_catalogue`)."""
    if pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    tables = []
    for which in ("cells", "nuclei"):
        t = features_from_parts([getattr(p, which) for p in parts], channel_names=channel_names)
        t.insert(1, "slice", np.int32(slice_index))
        t.insert(2, "plane", np.int32(plane))
        t.insert(5, "centroid_y_um", t["centroid_y_px"] * pixel_size_um)
        t.insert(6, "centroid_x_um", t["centroid_x_px"] * pixel_size_um)
        t.insert(7, "centroid_z_um", np.float64(z_um))
        t.insert(9, "area_um2", t["area_px"] * pixel_size_um**2)
        tables.append(t)
    cell_t, nuc_t = tables
    match = _best_nucleus(cell_t["label"].to_numpy(np.int64), [p.overlaps for p in parts])
    cell_t["nucleus_label"] = match.reindex(cell_t["label"]).fillna(0).astype(np.int64).to_numpy()
    nuc_cols = [c for c in nuc_t.columns if c not in ("slice", "plane", "centroid_z_um")]
    nuc_prefixed = nuc_t[nuc_cols].rename(columns={c: f"nucleus_{c}" for c in nuc_cols})
    cell_t = cell_t.merge(nuc_prefixed, on="nucleus_label", how="left")
    return cell_t, nuc_t
