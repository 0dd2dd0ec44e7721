"""Single-nucleus image crops and the representative-slice ranking.

As in NucleusNet (one million masked nucleus crops cut from stitched
images): a fixed-size crop centred on each nucleus with every pixel outside
that nucleus's mask set to 0, and a ranking of slices by how typical they are,
the z-scored Euclidean distance of (number of cells, mean intensity) to the
centroid over all slices (NucleusNet's Table 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

__all__ = ["masked_crops", "representative_ranking"]


def masked_crops(
    image: ArrayLike,
    labels: ArrayLike,
    centroids_yx: ArrayLike,
    object_labels: Sequence[int],
    *,
    size: tuple[int, int] = (32, 32),
) -> NDArray[Any]:
    """Fixed-size crops centred on objects, zero outside each object's mask.

    Parameters
    ----------
    image : ndarray, shape (C, H, W)
        Channel intensities.
    labels : ndarray of int, shape (H, W)
        Label image holding the objects.
    centroids_yx : ndarray, shape (N, 2)
        Crop centres in px (rounded to the nearest pixel).
    object_labels : sequence of int, length N
        Label of the object whose mask is kept in each crop.
    size : tuple of int
        Crop shape (h, w); the centre pixel is at ``(h // 2, w // 2)``.

    Returns
    -------
    crops : ndarray, shape (N, C, h, w), dtype of ``image``
        Parts of the crop outside the image are 0 as well.
    """
    img, lab_img = np.asarray(image), np.asarray(labels)
    if img.ndim != 3 or img.shape[1:] != lab_img.shape:
        raise ValueError(f"image must be (C, *labels.shape), got {img.shape} and labels {lab_img.shape}")
    centres = np.asarray(centroids_yx, np.float64).reshape(-1, 2)
    objects = np.asarray(object_labels, np.int64)
    if len(objects) != len(centres):
        raise ValueError(f"{len(objects)} labels for {len(centres)} centroids")
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    c, hh, ww = img.shape
    out = np.zeros((len(objects), c, h, w), img.dtype)
    for i, ((cy, cx), lab) in enumerate(zip(centres, objects, strict=True)):
        y0, x0 = int(round(cy)) - h // 2, int(round(cx)) - w // 2
        sy0, sx0 = max(0, y0), max(0, x0)
        sy1, sx1 = min(hh, y0 + h), min(ww, x0 + w)
        if sy0 >= sy1 or sx0 >= sx1:
            continue
        mask = lab_img[sy0:sy1, sx0:sx1] == lab
        out[i, :, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[:, sy0:sy1, sx0:sx1] * mask
    return out


def representative_ranking(
    n_cells: Sequence[float], mean_intensity: Sequence[float], *, index: Sequence[int] | None = None
) -> pd.DataFrame:
    """Rank slices by the z-scored distance of (cells, intensity) to their centroid.

    Parameters
    ----------
    n_cells, mean_intensity : sequence of float
        Per-slice number of cells and mean intensity.
    index : sequence of int, optional
        Slice numbers (``0..n-1`` when ``None``).

    Returns
    -------
    pandas.DataFrame
        Columns ``slice``, ``n_cells``, ``mean_intensity``, ``z_n_cells``,
        ``z_mean_intensity``, ``distance``, ``rank`` (1 = most representative),
        sorted by rank. A feature with zero spread has z-score 0.

    Notes
    -----
    Features are standardised (``(x - mean) / std``), so the centroid is the
    origin and the distance is the Euclidean norm of the z-scores.
    """
    feats = np.column_stack([np.asarray(n_cells, np.float64), np.asarray(mean_intensity, np.float64)])
    if feats.shape[0] == 0:
        raise ValueError("no slices to rank")
    idx = np.arange(len(feats)) if index is None else np.asarray(index)
    if len(idx) != len(feats):
        raise ValueError(f"{len(idx)} slice numbers for {len(feats)} slices")
    std = feats.std(axis=0)
    z = np.where(std > 0, (feats - feats.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)
    dist = np.linalg.norm(z, axis=1)
    table = pd.DataFrame(
        {
            "slice": idx,
            "n_cells": feats[:, 0],
            "mean_intensity": feats[:, 1],
            "z_n_cells": z[:, 0],
            "z_mean_intensity": z[:, 1],
            "distance": dist,
        }
    )
    table = table.sort_values(["distance", "slice"], ignore_index=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table
