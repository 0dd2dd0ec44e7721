"""Mosaic geometry and region fusion: where tiles go and how they are blended.

The mosaic frame of a sample is fixed by the acquisition alone (grid, tile
size, overlap) and slice 0's recorded stage origin, so every slice gets the
same canvas before later slices have even been imaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class MosaicGeometry:
    """Canvas of one slice: shape (H, W) and the stage origin of pixel (margin, margin)."""

    shape: tuple[int, int]
    origin_px: tuple[float, float]
    margin: int

    def to_mosaic(self, stage_px: np.ndarray) -> np.ndarray:
        """Map stage positions (..., 2) in px to mosaic-frame positions."""
        return np.asarray(stage_px, dtype=np.float64) - np.asarray(self.origin_px) + self.margin


def mosaic_geometry(stage_px: np.ndarray, *, rows: int, cols: int, tile_shape: tuple[int, int],
                    overlap: float, margin: int | None = None) -> MosaicGeometry:
    """Canvas that holds the nominal grid of tiles plus a margin on every side.

    Parameters
    ----------
    stage_px : ndarray (T, 2)
        Recorded (y, x) stage positions of the reference slice's tiles, in px.
    rows, cols : int
        Tile grid.
    tile_shape : (int, int)
        Tile height and width.
    overlap : float
        Nominal fractional overlap.
    margin : int, optional
        Pixels around the grid, absorbing stage error and slice drift
        (default: 5 % of the tile size, at least 16 px).
    """
    h, w = tile_shape
    if margin is None:
        margin = max(16, int(round(0.05 * max(h, w))))
    origin = np.min(np.asarray(stage_px, dtype=np.float64), axis=0)
    extent = np.max(stage_px, axis=0) - origin + (h, w)
    nominal = np.array([(rows - 1) * h * (1 - overlap) + h, (cols - 1) * w * (1 - overlap) + w])
    size = np.ceil(np.maximum(extent, nominal)).astype(int) + 2 * margin
    return MosaicGeometry((int(size[0]), int(size[1])), (float(origin[0]), float(origin[1])), int(margin))


def fuse_region(tiles: np.ndarray, positions: np.ndarray, region: tuple[int, int, int, int], *,
                weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of the tiles covering one rectangular region.

    Parameters
    ----------
    tiles : ndarray (C, T, H, W)
        Tile images (calibrated).
    positions : ndarray (T, 2)
        Float (y, x) top-left of each tile in the mosaic frame.
    region : (y0, y1, x0, x1)
        Half-open region of the mosaic frame to compute.
    weights : ndarray (H, W), optional
        Confidence of each tile pixel (0 = ignore); defaults to ones.

    Returns
    -------
    image : ndarray (C, y1 - y0, x1 - x0) float32
        Σ(tile·w)/Σ(w), 0 where no tile contributes.
    weight : ndarray (y1 - y0, x1 - x0) float32
        Σ(w): the confidence map of the region.
    """
    c, t, h, w = tiles.shape
    y0, y1, x0, x1 = region
    acc = np.zeros((c, y1 - y0, x1 - x0), np.float64)
    wsum = np.zeros((y1 - y0, x1 - x0), np.float64)
    base = np.ones((h, w)) if weights is None else np.asarray(weights, np.float64)
    for i in range(t):
        py, px = positions[i]
        ys, ye = max(y0, int(np.floor(py))), min(y1, int(np.ceil(py + h)))
        xs, xe = max(x0, int(np.floor(px))), min(x1, int(np.ceil(px + w)))
        if ys >= ye or xs >= xe:
            continue
        yy, xx = np.mgrid[ys:ye, xs:xe].astype(np.float64)
        coords = [yy - py, xx - px]
        # Pixels outside the tile get weight 0 (cval), so seams blend honestly.
        wt = ndi.map_coordinates(base, coords, order=1, mode="constant", cval=0.0)
        sl = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
        for ch in range(c):
            acc[ch][sl] += wt * ndi.map_coordinates(tiles[ch, i].astype(np.float64), coords, order=1, mode="nearest")
        wsum[sl] += wt
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(wsum > 0, acc / np.maximum(wsum, 1e-12), 0.0)
    return image.astype(np.float32), wsum.astype(np.float32)
