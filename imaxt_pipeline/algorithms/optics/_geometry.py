"""Mosaic geometry: where tiles go (blending lives in :mod:`.fusion`).

The mosaic frame of a sample is fixed by the acquisition alone (grid, tile
size, overlap) and slice 0's recorded stage origin, so every slice gets the
same canvas before later slices have even been imaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class MosaicGeometry:
    """Canvas of one slice: shape (H, W) and the stage origin of pixel (margin, margin)."""

    shape: tuple[int, int]
    origin_px: tuple[float, float]
    margin: int

    def to_mosaic(self, stage_px: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map stage positions (..., 2) in px to mosaic-frame positions."""
        out: npt.NDArray[np.float64] = np.asarray(stage_px, dtype=np.float64) - np.asarray(self.origin_px) + self.margin
        return out


def mosaic_geometry(
    stage_px: npt.ArrayLike,
    *,
    rows: int,
    cols: int,
    tile_shape: tuple[int, int],
    overlap: float,
    margin: int | None = None,
) -> MosaicGeometry:
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
    stage = np.asarray(stage_px, dtype=np.float64)
    origin = np.min(stage, axis=0)
    extent = np.max(stage, axis=0) - origin + (h, w)
    nominal = np.array([(rows - 1) * h * (1 - overlap) + h, (cols - 1) * w * (1 - overlap) + w])
    size = np.ceil(np.maximum(extent, nominal)).astype(int) + 2 * margin
    return MosaicGeometry((int(size[0]), int(size[1])), (float(origin[0]), float(origin[1])), int(margin))
