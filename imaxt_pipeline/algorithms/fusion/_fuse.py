"""Confidence-weighted fusion of calibrated tiles into one region of a mosaic.

``mosaic = Σ tile·w / Σ w`` where each tile is resampled through the
inverse of the distortion model at its stitched position and ``w`` is its
confidence map resampled the same way. Work is per output region: a region
needs only the tiles whose footprint touches it (:func:`tiles_touching`), so
a slice never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ..optics import DistortionModel, detector_coordinates, max_displacement

__all__ = ["FusedRegion", "fuse_region", "tiles_touching"]


@dataclass(frozen=True)
class FusedRegion:
    """Fused pixels of one region: ``image`` (C, h, w) and ``weight`` (h, w), both float32."""

    image: npt.NDArray[np.float32]
    weight: npt.NDArray[np.float32]


def tiles_touching(
    positions: npt.ArrayLike,
    tile_shape: tuple[int, int],
    region: tuple[int, int, int, int],
    *,
    distortion: DistortionModel | None = None,
) -> list[int]:
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
    hit = (pos[:, 0] - pad < y1) & (pos[:, 0] + h + pad > y0) & (pos[:, 1] - pad < x1) & (pos[:, 1] + w + pad > x0)
    return [int(i) for i in np.flatnonzero(hit)]


def fuse_region(
    tiles: Sequence[npt.ArrayLike] | Callable[[int], npt.ArrayLike],
    positions: npt.ArrayLike,
    region: tuple[int, int, int, int],
    *,
    indices: Iterable[int] | None = None,
    weights: npt.ArrayLike | None = None,
    distortion: DistortionModel | None = None,
    order: int = 1,
) -> FusedRegion:
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
    get: Callable[[int], npt.ArrayLike] = tiles if callable(tiles) else tiles.__getitem__
    pos = np.asarray(positions, np.float64)
    acc: npt.NDArray[np.float64] | None = None
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


def _touching_lazy(
    pos: npt.NDArray[np.float64],
    get: Callable[[int], npt.ArrayLike],
    region: tuple[int, int, int, int],
    model: DistortionModel,
) -> list[int]:
    # Without explicit indices, tile shape comes from the first tile read.
    shape = np.shape(get(0))[-2:]
    return tiles_touching(pos, (int(shape[0]), int(shape[1])), region, distortion=model)
