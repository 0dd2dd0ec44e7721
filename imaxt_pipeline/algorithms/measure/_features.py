"""Per-object features of a labelled plane and cell-to-nucleus matching.

The per-cell catalogue has one row per cell per plane: position (px and µm
in the cube frame), shape (area, perimeter, eccentricity, maximum Feret
diameter), mean and integrated intensity per channel, and the matched
nucleus (largest overlap) with the nucleus's own features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from skimage.measure import regionprops_table

__all__ = ["SHAPE_PROPERTIES", "cell_catalogue", "match_nuclei", "region_features"]

SHAPE_PROPERTIES: tuple[str, ...] = (
    "label",
    "centroid",
    "area",
    "perimeter",
    "eccentricity",
    "feret_diameter_max",
    "bbox",
)


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
        ``mean_<c>``/``integrated_<c>`` for each channel.
    """
    lab = np.asarray(labels)
    img = np.asarray(image, np.float32)
    if img.ndim != 3 or img.shape[1:] != lab.shape:
        raise ValueError(f"image must be (C, *labels.shape) = (C, {lab.shape}), got {img.shape}")
    if len(channel_names) != img.shape[0]:
        raise ValueError(f"{len(channel_names)} channel names for {img.shape[0]} channels")
    props = regionprops_table(  # type: ignore[no-untyped-call]  # scikit-image is untyped
        lab.astype(np.int32, copy=False),
        intensity_image=np.moveaxis(img, 0, -1),
        properties=(*SHAPE_PROPERTIES, "intensity_mean"),
    )
    out = pd.DataFrame(
        {
            "label": props["label"].astype(np.int64),
            "centroid_y_px": props["centroid-0"] + offset_yx[0],
            "centroid_x_px": props["centroid-1"] + offset_yx[1],
            "area_px": props["area"].astype(np.float64),
            "perimeter_px": props["perimeter"],
            "eccentricity": props["eccentricity"],
            "feret_diameter_max_px": props["feret_diameter_max"],
            "bbox_y0": props["bbox-0"] + offset_yx[0],
            "bbox_x0": props["bbox-1"] + offset_yx[1],
            "bbox_y1": props["bbox-2"] + offset_yx[0],
            "bbox_x1": props["bbox-3"] + offset_yx[1],
        }
    )
    for c, name in enumerate(channel_names):
        mean = props[f"intensity_mean-{c}"]
        out[f"mean_{name}"] = mean
        out[f"integrated_{name}"] = mean * out["area_px"].to_numpy()
    return out.sort_values("label", ignore_index=True)


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
    c, n = cell_lab.ravel().astype(np.int64), nuc_lab.ravel().astype(np.int64)
    all_cells = np.unique(c[c > 0])
    both = (c > 0) & (n > 0)
    result = pd.Series(0, index=pd.Index(all_cells, name="label"), dtype=np.int64)
    if both.any():
        pairs, counts = np.unique(np.stack([c[both], n[both]]), axis=1, return_counts=True)
        # sort by cell, then overlap descending, then nucleus ascending; first row per cell wins
        order = np.lexsort((pairs[1], -counts, pairs[0]))
        cell_sorted = pairs[0][order]
        first = np.r_[True, cell_sorted[1:] != cell_sorted[:-1]]
        result.loc[cell_sorted[first]] = pairs[1][order][first]
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
    if pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    tables = []
    for labels in (cells, nuclei):
        t = region_features(labels, image, channel_names=channel_names, offset_yx=offset_yx)
        t.insert(1, "slice", np.int32(slice_index))
        t.insert(2, "plane", np.int32(plane))
        t.insert(5, "centroid_y_um", t["centroid_y_px"] * pixel_size_um)
        t.insert(6, "centroid_x_um", t["centroid_x_px"] * pixel_size_um)
        t.insert(7, "centroid_z_um", np.float64(z_um))
        t.insert(9, "area_um2", t["area_px"] * pixel_size_um**2)
        tables.append(t)
    cell_t, nuc_t = tables
    match = match_nuclei(cells, nuclei)
    cell_t["nucleus_label"] = match.reindex(cell_t["label"]).fillna(0).astype(np.int64).to_numpy()
    nuc_cols = [c for c in nuc_t.columns if c not in ("slice", "plane", "centroid_z_um")]
    nuc_prefixed = nuc_t[nuc_cols].rename(columns={c: f"nucleus_{c}" for c in nuc_cols})
    cell_t = cell_t.merge(nuc_prefixed, on="nucleus_label", how="left")
    return cell_t, nuc_t
