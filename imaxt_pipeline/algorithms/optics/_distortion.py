"""Optical distortion model shared by the simulator, the calibration and the stitching solve.

The model is a cubic polynomial in the normalised tile coordinates of
:mod:`._coordinates` with separate x/y magnification::

    u = (x - cx) / cx,   v = (y - cy) / cy,   r2 = u**2 + v**2
    dx = cx * (mag_x * u + k_x * u * r2)
    dy = cy * (mag_y * v + k_y * v * r2)

where ``(cx, cy)`` is the tile centre. A detector pixel ``(y, x)`` of a
distorted tile sees the undistorted scene at ``(y + dy, x + dx)``. With
``k_x = k_y = 0.005`` and a 512 px tile the displacement is about 2.6 px at
the corners and zero at the centre.

:class:`DistortionModel` is the one place that evaluates the polynomial
(:meth:`DistortionModel.displacement`), writes it as a linear function of
the coefficients (:meth:`DistortionModel.design`, what the stitching solve
fits) and fixes the coefficient order (:attr:`DistortionModel.COEFFICIENTS`,
also the order of calibration files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from ._coordinates import tile_centre, tile_coordinates

__all__ = ["DistortionModel", "detector_coordinates", "displacement_field", "distort", "max_displacement", "undistort"]

_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DistortionModel:
    """Coefficients of the cubic distortion polynomial (see module docstring).

    The fields are declared in :attr:`COEFFICIENTS` order, so positional
    construction ``DistortionModel(*values)`` and :meth:`from_coefficients`
    agree.
    """

    mag_y: float = 0.0
    mag_x: float = 0.0
    k_y: float = 0.0
    k_x: float = 0.0

    #: Order of the coefficients in :meth:`coefficients`, the columns of :meth:`design` and calibration files.
    COEFFICIENTS: ClassVar[tuple[str, str, str, str]] = ("mag_y", "mag_x", "k_y", "k_x")

    @classmethod
    def from_coefficients(cls, values: Sequence[float] | npt.ArrayLike) -> DistortionModel:
        """Model from four values in :attr:`COEFFICIENTS` order.

        Raises
        ------
        ValueError
            Unless exactly four values are given.
        """
        vals = [float(v) for v in np.asarray(values, np.float64).ravel()]
        if len(vals) != len(cls.COEFFICIENTS):
            raise ValueError(f"distortion needs {len(cls.COEFFICIENTS)} coefficients {cls.COEFFICIENTS}, got {vals}")
        return cls(**dict(zip(cls.COEFFICIENTS, vals, strict=True)))

    def coefficients(self) -> _Array:
        """The coefficients as an array in :attr:`COEFFICIENTS` order."""
        return np.array([getattr(self, k) for k in self.COEFFICIENTS], np.float64)

    def as_dict(self) -> dict[str, float]:
        """``{name: value}`` in :attr:`COEFFICIENTS` order."""
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        """True when every coefficient is 0 (no displacement anywhere)."""
        return not any(asdict(self).values())

    def displacement(self, y: npt.ArrayLike, x: npt.ArrayLike, shape: tuple[int, int]) -> tuple[_Array, _Array]:
        """Displacement ``(dy, dx)`` in px at detector positions ``(y, x)`` of a tile of ``shape``.

        Parameters
        ----------
        y, x : array_like
            Detector positions (matching shapes).
        shape : (int, int)
            Tile height and width (the model is defined relative to its centre).

        Returns
        -------
        dy, dx : ndarray of float64
        """
        (cy, cx), (v, u) = tile_centre(shape), tile_coordinates(y, x, shape)
        r2 = u * u + v * v
        return cy * (self.mag_y * v + self.k_y * v * r2), cx * (self.mag_x * u + self.k_x * u * r2)

    @classmethod
    def design(cls, y: npt.ArrayLike, x: npt.ArrayLike, shape: tuple[int, int]) -> tuple[_Array, _Array]:
        """:meth:`displacement` as a linear function of the coefficients.

        Parameters
        ----------
        y, x : array_like
            Detector positions (matching shapes ``S``).
        shape : (int, int)
            Tile height and width.

        Returns
        -------
        gy, gx : ndarray of float64, each ``S + (4,)``
            ``dy = gy @ c`` and ``dx = gx @ c`` with ``c = model.coefficients()``
            (columns in :attr:`COEFFICIENTS` order).
        """
        (cy, cx), (v, u) = tile_centre(shape), tile_coordinates(y, x, shape)
        r2 = u * u + v * v
        z = np.zeros_like(u)
        columns_y = {"mag_y": cy * v, "k_y": cy * v * r2}
        columns_x = {"mag_x": cx * u, "k_x": cx * u * r2}
        gy = np.stack([columns_y.get(k, z) for k in cls.COEFFICIENTS], axis=-1)
        gx = np.stack([columns_x.get(k, z) for k in cls.COEFFICIENTS], axis=-1)
        return gy, gx


def displacement_field(shape: tuple[int, int], model: DistortionModel) -> tuple[_Array, _Array]:
    """Return ``(dy, dx)`` in pixels at every detector pixel of a tile.

    Parameters
    ----------
    shape : (int, int)
        Tile height and width.
    model : DistortionModel
        Distortion coefficients.

    Returns
    -------
    dy, dx : ndarray of float64, each of ``shape``
        Scene coordinates seen by detector pixel (y, x) are (y + dy, x + dx).
    """
    yy, xx = np.indices(shape, dtype=np.float64)
    return model.displacement(yy, xx, shape)


def distort(scene: npt.ArrayLike, model: DistortionModel, *, order: int = 1) -> _Array:
    """Simulate a distorted detector image of an undistorted ``scene``.

    The output pixel (y, x) samples ``scene`` at (y + dy, x + dx).
    """
    from scipy import ndimage as ndi  # here, not at the top: optics is imported by everything, cheaply

    img = np.asarray(scene)
    shape = (int(img.shape[0]), int(img.shape[1]))
    dy, dx = displacement_field(shape, model)
    yy, xx = np.indices(shape, dtype=np.float64)
    out: _Array = ndi.map_coordinates(img, [yy + dy, xx + dx], order=order, mode="nearest")
    return out


def undistort(tile: npt.ArrayLike, model: DistortionModel, *, order: int = 1, iterations: int = 5) -> _Array:
    """Resample a distorted tile onto the undistorted pixel grid.

    The inverse of the polynomial map is found by fixed-point iteration,
    which converges in a few steps for displacements of a few pixels.

    Returns
    -------
    ndarray of float64
        ``out[q]`` is the scene value at undistorted position ``q``.
    """
    from scipy import ndimage as ndi  # see distort

    img = np.asarray(tile)
    if model.is_identity:
        return img.astype(np.float64, copy=True)
    shape = (int(img.shape[0]), int(img.shape[1]))
    yy, xx = np.indices(shape, dtype=np.float64)
    py, px = detector_coordinates(yy, xx, shape, model, iterations=iterations)
    out: _Array = ndi.map_coordinates(img.astype(np.float64), [py, px], order=order, mode="nearest")
    return out


def detector_coordinates(
    y: npt.ArrayLike, x: npt.ArrayLike, shape: tuple[int, int], model: DistortionModel, *, iterations: int = 5
) -> tuple[_Array, _Array]:
    """Detector pixel ``p`` that sees undistorted tile position ``q = (y, x)``.

    Solves ``p + D(p) = q`` by fixed-point iteration (the inverse of the
    polynomial map; a few steps suffice for displacements of a few px).

    Parameters
    ----------
    y, x : array_like
        Undistorted positions in the tile frame (any matching shapes).
    shape : (int, int)
        Tile height and width (the model is defined relative to its centre).
    model : DistortionModel
        Distortion coefficients.
    iterations : int
        Fixed-point iterations.

    Returns
    -------
    py, px : ndarray of float64
    """
    qy = np.asarray(y, np.float64)
    qx = np.asarray(x, np.float64)
    if model.is_identity:
        return qy.copy(), qx.copy()
    py, px = qy.copy(), qx.copy()
    for _ in range(iterations):
        dy, dx = model.displacement(py, px, shape)
        py, px = qy - dy, qx - dx
    return py, px


def max_displacement(shape: tuple[int, int], model: DistortionModel) -> float:
    """Largest |D| over the tile (reached at the corners), in px."""
    h, w = shape
    corners_y = np.array([0.0, 0.0, h - 1.0, h - 1.0])
    corners_x = np.array([0.0, w - 1.0, 0.0, w - 1.0])
    dy, dx = model.displacement(corners_y, corners_x, shape)
    return float(np.max(np.hypot(dy, dx)))
