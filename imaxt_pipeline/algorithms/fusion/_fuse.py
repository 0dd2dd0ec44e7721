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

#: Knot spacing (px) of the inverse distortion map, interpolated in between (:func:`_detector_grid`).
DISTORTION_STEP_PX = 16


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
        dy, dx = _detector_grid(np.arange(ys, ye) - py, np.arange(xs, xe) - px, (h, w), model)
        sl = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
        if order == 1:
            _add_bilinear(acc[(slice(None), *sl)], wsum[sl], tile, base, dy, dx)
            continue
        # Outside the detector the weight is 0 (cval), so seams blend honestly.
        wt = ndi.map_coordinates(base, [dy, dx], order=1, mode="constant", cval=0.0)
        if not np.any(wt > 0):
            continue
        for ch in range(c):
            acc[ch][sl] += wt * ndi.map_coordinates(tile[ch], [dy, dx], order=order, mode="nearest")
        wsum[sl] += wt
    if acc is None:
        return FusedRegion(np.zeros((0, y1 - y0, x1 - x0), np.float32), wsum.astype(np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(wsum > 0, acc / np.maximum(wsum, 1e-12), 0.0)
    return FusedRegion(image.astype(np.float32), wsum.astype(np.float32))


def _add_bilinear(
    acc: npt.NDArray[np.float64],
    wsum: npt.NDArray[np.float64],
    tile: npt.NDArray[np.float32],
    base: npt.NDArray[np.float32],
    dy: npt.NDArray[np.float64],
    dx: npt.NDArray[np.float64],
) -> None:
    """``acc += w·tile(dy, dx)``, ``wsum += w`` with ``w = base(dy, dx)``, bilinear, in place.

    The values of ``map_coordinates(order=1)`` (``mode="constant"`` for the weight: 0 off the
    detector; ``"nearest"`` for the tile, irrelevant where the weight is 0), with the four taps
    and their weights found once for the weight map and every channel (~2x faster for 4 channels).
    """
    h, w = base.shape
    inside = (dy >= 0) & (dy <= h - 1) & (dx >= 0) & (dx <= w - 1)
    if not inside.any():
        return
    iy = np.clip(dy, 0, max(h - 2, 0)).astype(np.intp)
    ix = np.clip(dx, 0, max(w - 2, 0)).astype(np.intp)
    fy = np.clip(dy - iy, 0, 1).astype(np.float32)
    fx = np.clip(dx - ix, 0, 1).astype(np.float32)
    i00 = (iy * w + ix).ravel()
    i01 = i00 + (1 if w > 1 else 0)
    i10 = i00 + (w if h > 1 else 0)
    i11 = i10 + (i01 - i00)
    w11 = (fy * fx).ravel()
    w10 = fy.ravel() - w11
    w01 = fx.ravel() - w11
    w00 = 1 - fy.ravel() - w01
    taps = ((i00, w00), (i01, w01), (i10, w10), (i11, w11))

    def sample(image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        flat = image.ravel()
        out = np.zeros(i00.size, np.float32)
        for index, weight in taps:
            out += flat.take(index) * weight
        return out.reshape(dy.shape)

    wt = sample(base) * inside
    wsum += wt
    for ch in range(tile.shape[0]):
        acc[ch] += wt * sample(tile[ch])


def _detector_grid(
    rows: npt.NDArray[np.float64],
    cols: npt.NDArray[np.float64],
    shape: tuple[int, int],
    model: DistortionModel,
    step: int = DISTORTION_STEP_PX,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """:func:`detector_coordinates` of the grid ``rows x cols`` (tile frame), the inverse computed
    on knots every ``step`` px and its displacement interpolated linearly between them.

    The cubic model's curvature makes that error ``|D''| step² / 8``: about 1e-3 px for 12 px of
    corner distortion on a 2048 px tile at 16 px, for ~1/200 of the work of inverting every pixel.
    """
    if model.is_identity:
        return np.broadcast_to(rows[:, None], (rows.size, cols.size)).copy(), np.broadcast_to(
            cols[None, :], (rows.size, cols.size)
        ).copy()
    ky, ay = _knots(rows.size, step)
    kx, ax = _knots(cols.size, step)
    gy, gx = np.meshgrid(rows[ky], cols[kx], indexing="ij")
    py, px = detector_coordinates(gy, gx, shape, model)
    dy = rows[:, None] + ay @ (py - gy) @ ax.T
    dx = cols[None, :] + ay @ (px - gx) @ ax.T
    return dy, dx


def _knots(n: int, step: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Knot indices every ``step`` of ``0..n-1`` (the last included) and the (n, k) linear interpolation matrix."""
    knots = np.unique(np.append(np.arange(0, n, step), n - 1)).astype(np.intp)
    matrix = np.zeros((n, knots.size))
    if knots.size == 1:
        matrix[:, 0] = 1.0
        return knots, matrix
    i = np.arange(n)
    k = np.clip(np.searchsorted(knots, i, side="right") - 1, 0, knots.size - 2)
    t = (i - knots[k]) / (knots[k + 1] - knots[k])
    matrix[i, k] = 1 - t
    matrix[i, k + 1] += t
    return knots, matrix


def _touching_lazy(
    pos: npt.NDArray[np.float64],
    get: Callable[[int], npt.ArrayLike],
    region: tuple[int, int, int, int],
    model: DistortionModel,
) -> list[int]:
    # Without explicit indices, tile shape comes from the first tile read.
    shape = np.shape(get(0))[-2:]
    return tiles_touching(pos, (int(shape[0]), int(shape[1])), region, distortion=model)
