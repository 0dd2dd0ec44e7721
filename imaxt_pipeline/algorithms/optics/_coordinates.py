"""Normalised tile coordinates: the frame every per-tile model (distortion, flat field) is written in.

A detector pixel ``(y, x)`` of a tile of shape ``(h, w)`` has normalised
coordinates::

    v = (y - cy) / cy,   u = (x - cx) / cx,   (cy, cx) = ((h - 1) / 2, (w - 1) / 2)

so the tile centre is 0 and the first and last pixel centres are -1 and +1
on each axis (the domain of the Legendre polynomials). One convention keeps
the coefficients of the distortion model and of the flat-field polynomials
comparable between tile sizes and between the modules that fit them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["tile_centre", "tile_coordinates"]


def tile_centre(shape: tuple[int, int]) -> tuple[float, float]:
    """Centre ``(cy, cx)`` of a tile of ``shape`` in px: also the half-size that normalises each axis."""
    h, w = shape
    return (h - 1) / 2.0, (w - 1) / 2.0


def tile_coordinates(
    y: npt.ArrayLike, x: npt.ArrayLike, shape: tuple[int, int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Normalised coordinates ``(v, u)`` of detector positions ``(y, x)`` (see the module docstring).

    Parameters
    ----------
    y, x : array_like
        Detector positions in px (any broadcastable shapes; 1-D axes work too).
    shape : (int, int)
        Tile height and width.

    Returns
    -------
    v, u : ndarray of float64
        -1 at the first pixel centre, 0 at the tile centre, +1 at the last.
    """
    cy, cx = tile_centre(shape)
    return (np.asarray(y, np.float64) - cy) / cy, (np.asarray(x, np.float64) - cx) / cx
