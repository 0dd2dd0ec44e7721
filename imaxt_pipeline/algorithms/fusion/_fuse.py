"""Confidence-weighted fusion of calibrated tiles into one region of a mosaic.

``mosaic = Σ tile·w / Σ w`` where each tile is resampled through the
inverse of the distortion model at its stitched position and ``w`` is its
confidence map resampled the same way. Work is per output region: a region
needs only the tiles whose footprint touches it (:func:`tiles_touching`), so
a slice never has to fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..optics import DistortionModel, detector_coordinates, max_displacement

__all__ = ["FusedRegion", "downsample_mean", "fuse_region", "tiles_touching"]


@dataclass(frozen=True)
class FusedRegion:
    """Fused pixels of one region: ``image`` (C, h, w) and ``weight`` (h, w), both float32."""

    image: np.ndarray
    weight: np.ndarray


def tiles_touching(positions: np.ndarray, tile_shape: tuple[int, int], region: tuple[int, int, int, int], *,
                   distortion: DistortionModel | None = None) -> list[int]:
    """Indices of tiles whose (distorted) footprint intersects ``region``.

    Parameters
    ----------
    positions : ndarray (T, 2)
        Top-left (y, x) of each undistorted tile in the mosaic frame.
    tile_shape : (int, int)
        Tile height and width.
    region : (y0, y1, x0, x1)
        Half-open region of the mosaic.
    distortion : DistortionModel, optional
        Grows each footprint by the largest displacement.
    """
    pad = 2.0 + (max_displacement(tile_shape, distortion) if distortion else 0.0)
    y0, y1, x0, x1 = region
    h, w = tile_shape
    pos = np.asarray(positions, np.float64)
    hit = ((pos[:, 0] - pad < y1) & (pos[:, 0] + h + pad > y0) & (pos[:, 1] - pad < x1) & (pos[:, 1] + w + pad > x0))
    return [int(i) for i in np.flatnonzero(hit)]


def fuse_region(tiles: Sequence[np.ndarray] | Callable[[int], np.ndarray], positions: np.ndarray,
                region: tuple[int, int, int, int], *, indices: Sequence[int] | None = None,
                weights: np.ndarray | None = None, distortion: DistortionModel | None = None,
                order: int = 1) -> FusedRegion:
    """Weighted average of the tiles covering one rectangular mosaic region.

    Parameters
    ----------
    tiles : sequence of ndarray (C, H, W), or callable ``i -> (C, H, W)``
        Calibrated tiles; a callable lets the caller read only the tiles
        the region needs.
    positions : ndarray (T, 2)
        Top-left (y, x) of each undistorted tile in the mosaic frame.
    region : (y0, y1, x0, x1)
        Half-open region of the mosaic to compute.
    indices : sequence of int, optional
        Tiles to consider (default: :func:`tiles_touching`).
    weights : ndarray (H, W), optional
        Confidence map of a tile (0 = ignore); ones by default.
    distortion : DistortionModel, optional
        Tiles are resampled through its inverse.
    order : int
        Spline order of the resampling (1 = bilinear).

    Returns
    -------
    FusedRegion
        ``image`` is 0 where the total weight is 0.
    """
    y0, y1, x0, x1 = (int(v) for v in region)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"region must be non-empty (y0, y1, x0, x1), got {region}")
    model = distortion or DistortionModel()
    get = tiles if callable(tiles) else (lambda i: tiles[i])
    pos = np.asarray(positions, np.float64)
    acc = None
    wsum = np.zeros((y1 - y0, x1 - x0), np.float64)
    for i in indices if indices is not None else _touching_lazy(pos, get, region, model):
        tile = np.asarray(get(i), np.float32)
        if tile.ndim == 2:
            tile = tile[None]
        c, h, w = tile.shape
        if acc is None:
            acc = np.zeros((c, y1 - y0, x1 - x0), np.float64)
        base = np.ones((h, w), np.float32) if weights is None else np.asarray(weights, np.float32)
        pad = 2.0 + max_displacement((h, w), model)
        py, px = pos[i]
        ys, ye = max(y0, int(np.floor(py - pad))), min(y1, int(np.ceil(py + h + pad)))
        xs, xe = max(x0, int(np.floor(px - pad))), min(x1, int(np.ceil(px + w + pad)))
        if ys >= ye or xs >= xe:
            continue
        ly, lx = np.mgrid[ys:ye, xs:xe].astype(np.float64)
        dy, dx = detector_coordinates(ly - py, lx - px, (h, w), model)
        # Outside the detector the weight is 0 (cval), so seams blend honestly.
        wt = ndi.map_coordinates(base, [dy, dx], order=1, mode="constant", cval=0.0)
        if not np.any(wt > 0):
            continue
        sl = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
        for ch in range(c):
            acc[ch][sl] += wt * ndi.map_coordinates(tile[ch], [dy, dx], order=order, mode="nearest")
        wsum[sl] += wt
    if acc is None:
        return FusedRegion(np.zeros((0, y1 - y0, x1 - x0), np.float32), wsum.astype(np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(wsum > 0, acc / np.maximum(wsum, 1e-12), 0.0)
    return FusedRegion(image.astype(np.float32), wsum.astype(np.float32))


def downsample_mean(image: np.ndarray) -> np.ndarray:
    """2×2 mean over the last two axes (odd edges averaged over what exists)."""
    arr = np.asarray(image, np.float32)
    h, w = arr.shape[-2:]
    ph, pw = h % 2, w % 2
    if ph or pw:
        pad = [(0, 0)] * (arr.ndim - 2) + [(0, ph), (0, pw)]
        arr = np.pad(arr, pad, mode="edge")
    s = arr.reshape(*arr.shape[:-2], arr.shape[-2] // 2, 2, arr.shape[-1] // 2, 2)
    return s.mean(axis=(-3, -1))


def _touching_lazy(pos, get, region, model):
    # Without explicit indices, tile shape comes from the first tile read.
    shape = np.asarray(get(0)).shape[-2:]
    return tiles_touching(pos, (int(shape[0]), int(shape[1])), region, distortion=model)
