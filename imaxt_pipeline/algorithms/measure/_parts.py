"""Per-object features of a plane measured block by block: partial sums per block, merged by label.

Every feature of the catalogue is a sum over an object's pixels, or follows from sums, so a block
measures what it holds and blocks merge exactly, in any number, by label
(:func:`object_parts` -> :func:`features_from_parts`):

- area, centroid, bounding box, per-channel integrated and mean intensity: counts, sums, min/max;
- eccentricity: the second central moments, merged with the parallel-axis rule (Chan et al.), then
  the eigenvalues of the 2x2 covariance (that of scikit-image's inertia tensor);
- perimeter: scikit-image's 4-connected perimeter is a sum over the object's border pixels of a
  weight set by which of the 8 neighbours are border pixels of the same object, so a block with a
  2-px halo of labels gives each of its pixels' share exactly;
- maximum Feret diameter: the convex hull of the object's pixels (each a diamond of its 4 edge
  midpoints) is the hull of the row extremes' diamonds; a block reports the diameter and the hull
  vertices of what it holds, and objects in several blocks are re-measured from their vertices; the object's
  hull image (pixels whose centres are inside or on the hull), its boundary crossings and their
  largest distance are then those of ``regionprops`` (``image_convex``, ``find_contours``, ``pdist``)
  without rasterising the object, for all objects at once (:mod:`._feret`).

Values equal ``skimage.measure.regionprops`` to float precision (intensity means are float64 sums
here, float32 means there). Numpy/scipy only; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ._feret import feret_diameters

__all__ = ["HALO", "ObjectParts", "features_from_parts", "object_parts", "pad_halo"]

#: Label margin (px) every block needs around its core for the perimeter (border of the border).
HALO = 2
_SQRT2 = float(np.sqrt(2.0))
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = _SQRT2
_PERIMETER_WEIGHTS[[13, 23]] = (1 + _SQRT2) / 2
_DIAMOND = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
_DIAMOND2 = (2 * _DIAMOND).astype(np.int64)  # its corners on the half-pixel grid


@dataclass(frozen=True)
class ObjectParts:
    """What one block holds of each object: ``sums`` (one row per label) and ``hull`` vertices (label, y2, x2:
    twice the px coordinates) of the hull of its pixels there."""

    sums: pd.DataFrame
    hull: pd.DataFrame


def pad_halo(labels: ArrayLike, halo: int = HALO) -> NDArray[np.int64]:
    """``labels`` with ``halo`` px of background around it (a whole plane as one block)."""
    return np.pad(np.asarray(labels, np.int64), halo)


def object_parts(
    labels: ArrayLike, image: ArrayLike, *, channels: int, offset_yx: tuple[int, int] = (0, 0)
) -> ObjectParts:
    """Partial sums of every object with pixels in a block's core.

    Parameters
    ----------
    labels : ndarray of int, shape (h + 2 HALO, w + 2 HALO)
        Labels of the core and a :data:`HALO`-px margin (0 beyond the plane).
    image : ndarray, shape (C, h, w)
        Intensities of the core.
    channels : int
        ``C`` (the columns ``sum_0 .. sum_{C-1}``).
    offset_yx : tuple of int
        Position of the core in the plane, px.
    """
    lab = np.asarray(labels, np.int64)
    img = np.asarray(image)
    h, w = lab.shape[0] - 2 * HALO, lab.shape[1] - 2 * HALO
    if img.shape != (channels, h, w):
        raise ValueError(f"image must be ({channels}, {h}, {w}) for labels {lab.shape} with a {HALO}-px halo")
    core = lab[HALO : HALO + h, HALO : HALO + w]
    idx = np.flatnonzero(core.ravel() > 0)
    vals = core.ravel()[idx]
    order = np.argsort(vals, kind="stable")  # row-major order is kept within each label
    idx, vals = idx[order], vals[order]
    starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]]) if len(vals) else np.zeros(0, np.intp)
    n = np.diff(np.r_[starts, len(vals)]).astype(np.float64)
    y, x = (idx // w).astype(np.float64), (idx % w).astype(np.float64)
    sums: dict[str, NDArray[np.float64] | NDArray[np.int64]] = {"label": vals[starts], "n": n}
    if len(vals):
        my, mx = np.add.reduceat(y, starts) / n, np.add.reduceat(x, starts) / n
        dy, dx = y - np.repeat(my, n.astype(np.intp)), x - np.repeat(mx, n.astype(np.intp))
        sums |= {
            "mean_y": my + offset_yx[0],
            "mean_x": mx + offset_yx[1],
            "m_yy": np.add.reduceat(dy * dy, starts),
            "m_xx": np.add.reduceat(dx * dx, starts),
            "m_xy": np.add.reduceat(dy * dx, starts),
            "y0": np.minimum.reduceat(y, starts).astype(np.int64) + offset_yx[0],
            "x0": np.minimum.reduceat(x, starts).astype(np.int64) + offset_yx[1],
            "y1": np.maximum.reduceat(y, starts).astype(np.int64) + offset_yx[0] + 1,
            "x1": np.maximum.reduceat(x, starts).astype(np.int64) + offset_yx[1] + 1,
            "perimeter": np.add.reduceat(_perimeter_weights(lab, h, w).ravel()[idx], starts),
        }
        for c in range(channels):
            sums[f"sum_{c}"] = np.add.reduceat(img[c].ravel()[idx].astype(np.float64), starts)
    else:
        empty = ["mean_y", "mean_x", "m_yy", "m_xx", "m_xy", "perimeter", *(f"sum_{c}" for c in range(channels))]
        sums |= {k: np.zeros(0) for k in empty} | {k: np.zeros(0, np.int64) for k in ("y0", "x0", "y1", "x1")}
    pixels = _hull_points(idx, vals, w, offset_yx)
    corners = pd.DataFrame(
        {
            "label": np.repeat(pixels["label"].to_numpy(), len(_DIAMOND2)),
            "y2": (2 * pixels["y"].to_numpy()[:, None] + _DIAMOND2[None, :, 0]).ravel(),
            "x2": (2 * pixels["x"].to_numpy()[:, None] + _DIAMOND2[None, :, 1]).ravel(),
        }
    )
    # the diameter of what this block holds (the object's own unless it has pixels in other blocks),
    # and the hull's vertices, all that a merge needs of this block's pixels
    sums["feret"], hull = feret_diameters(corners, np.asarray(sums["label"], np.int64))
    return ObjectParts(pd.DataFrame(sums), hull)


def _perimeter_weights(lab: NDArray[np.int64], h: int, w: int) -> NDArray[np.float64]:
    """Each core pixel's share of its object's scikit-image perimeter (0 off the border)."""

    def shifted(a: NDArray[np.int64], dy: int, dx: int, m: int) -> NDArray[np.int64]:
        return a[m + dy : a.shape[0] - m + dy, m + dx : a.shape[1] - m + dx]

    ring = lab[1:-1, 1:-1]  # core + 1 px: the border of the core's neighbours is needed too
    interior = np.ones(ring.shape, bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        interior &= shifted(lab, dy, dx, 1) == ring
    border = (ring > 0) & ~interior
    core, core_border = shifted(ring, 0, 0, 1), shifted(border, 0, 0, 1)
    code = np.ones((h, w), np.intp)
    for weight, steps in ((2, ((-1, 0), (1, 0), (0, -1), (0, 1))), (10, ((-1, -1), (-1, 1), (1, -1), (1, 1)))):
        for dy, dx in steps:
            code += weight * (shifted(border, dy, dx, 1) & (shifted(ring, dy, dx, 1) == core))
    return np.where(core_border, _PERIMETER_WEIGHTS[code], 0.0)


def _hull_points(idx: NDArray[np.intp], vals: NDArray[np.int64], w: int, offset_yx: tuple[int, int]) -> pd.DataFrame:
    """The first and last pixel of every object in each row of the core (global px).

    ``idx``: the core's object pixels (flat, width ``w``) sorted by label ``vals``, row-major within each.
    Every other pixel lies between two of these, so they hold the vertices of the object's convex hull.
    """
    rows = idx // w
    new = np.r_[True, (vals[1:] != vals[:-1]) | (rows[1:] != rows[:-1])] if len(idx) else np.zeros(0, bool)
    keep = new | np.r_[new[1:], True] if len(idx) else new
    y, x = rows[keep], idx[keep] % w
    return pd.DataFrame({"label": vals[keep], "y": y + offset_yx[0], "x": x + offset_yx[1]})


def features_from_parts(parts: Sequence[ObjectParts], *, channel_names: Sequence[str]) -> pd.DataFrame:
    """The features of every object from its blocks' parts (see :func:`region_features` for the columns)."""
    sums = pd.concat([p.sums for p in parts], ignore_index=True)
    if sums.empty:
        return _table(sums, np.zeros(0), channel_names)
    g = sums.groupby("label", sort=True)
    n = g["n"].sum()
    my = (sums["n"] * sums["mean_y"]).groupby(sums["label"]).sum() / n
    mx = (sums["n"] * sums["mean_x"]).groupby(sums["label"]).sum() / n
    dy = sums["mean_y"].to_numpy() - my.reindex(sums["label"]).to_numpy()
    dx = sums["mean_x"].to_numpy() - mx.reindex(sums["label"]).to_numpy()
    nn = sums["n"].to_numpy()
    moments = (
        pd.DataFrame(
            {
                "m_yy": sums["m_yy"] + nn * dy * dy,
                "m_xx": sums["m_xx"] + nn * dx * dx,
                "m_xy": sums["m_xy"] + nn * dy * dx,
                "label": sums["label"],
            }
        )
        .groupby("label", sort=True)[["m_yy", "m_xx", "m_xy"]]
        .sum()
    )
    merged = pd.DataFrame(
        {
            "label": n.index.to_numpy(np.int64),
            "n": n.to_numpy(),
            "mean_y": my.to_numpy(),
            "mean_x": mx.to_numpy(),
            "y0": g["y0"].min().to_numpy(),
            "x0": g["x0"].min().to_numpy(),
            "y1": g["y1"].max().to_numpy(),
            "x1": g["x1"].max().to_numpy(),
            "perimeter": g["perimeter"].sum().to_numpy(),
            **{c: moments[c].to_numpy() for c in ("m_yy", "m_xx", "m_xy")},
            **{f"sum_{c}": g[f"sum_{c}"].sum().to_numpy() for c in range(len(channel_names))},
        }
    )
    feret = g["feret"].first().to_numpy(np.float64, copy=True)
    split = (g.size() > 1).to_numpy()  # objects in several blocks: the diameter of the union of their hull points
    if split.any():
        hull = pd.concat([p.hull for p in parts], ignore_index=True)
        labels = merged["label"].to_numpy()[split]
        feret[split] = feret_diameters(hull[hull["label"].isin(labels)], labels)[0]
    return _table(merged, feret, channel_names)


def _table(m: pd.DataFrame, feret: NDArray[np.float64], channel_names: Sequence[str]) -> pd.DataFrame:
    n = m["n"].to_numpy(np.float64) if len(m) else np.zeros(0)
    vyy, vxx, vxy = (
        m[c].to_numpy(np.float64) / np.maximum(n, 1) if len(m) else np.zeros(0) for c in ("m_yy", "m_xx", "m_xy")
    )
    half = np.sqrt(((vyy - vxx) / 2) ** 2 + vxy**2)
    l1, l2 = np.clip((vyy + vxx) / 2 + half, 0, None), np.clip((vyy + vxx) / 2 - half, 0, None)
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.where(l1 > 0, l1, 1), 0, None)), 0.0)
    out = pd.DataFrame(
        {
            "label": m["label"].to_numpy(np.int64) if len(m) else np.zeros(0, np.int64),
            "centroid_y_px": m["mean_y"].to_numpy(np.float64) if len(m) else np.zeros(0),
            "centroid_x_px": m["mean_x"].to_numpy(np.float64) if len(m) else np.zeros(0),
            "area_px": n,
            "perimeter_px": m["perimeter"].to_numpy(np.float64) if len(m) else np.zeros(0),
            "eccentricity": ecc,
            "feret_diameter_max_px": feret,
            **{k: m[s].to_numpy(np.int64) if len(m) else np.zeros(0, np.int64) for k, s in _BBOX.items()},
        }
    )
    for c, name in enumerate(channel_names):
        total = m[f"sum_{c}"].to_numpy(np.float64) if len(m) else np.zeros(0)
        out[f"mean_{name}"] = total / np.maximum(n, 1)
        out[f"integrated_{name}"] = total
    return out


_BBOX = {"bbox_y0": "y0", "bbox_x0": "x0", "bbox_y1": "y1", "bbox_x1": "x1"}
