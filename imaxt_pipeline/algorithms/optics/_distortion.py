"""Optical distortion model shared by the simulator, the calibration and the stitching solve.

The model is a radial polynomial (cubic and quintic) in the normalised tile coordinates of
:mod:`._coordinates`, seen through a linear map of the camera against the stage::

    u = (x - cx) / cx,   v = (y - cy) / cy,   r2 = u**2 + v**2
    w_y = (y - cy) + cy * (k_y * r2 + k5_y * r2**2) / (1 + mag_y) * v     # the camera frame: radial terms
    w_x = (x - cx) + cx * (k_x * r2 + k5_x * r2**2) / (1 + mag_x) * u
    (y - cy) + dy = (1 + mag_y) w_y + shear_yx w_x       # then the camera's map onto the stage
    (x - cx) + dx = shear_xy w_y + (1 + mag_x) w_x

where ``(cx, cy)`` is the tile centre. Without shear this is the separable polynomial
``dy = cy * (mag_y * v + k_y * v * r2 + k5_y * v * r2**2)`` (``dx`` likewise in ``u``). A detector
pixel ``(y, x)`` of a distorted tile sees the undistorted scene at ``(y + dy, x + dx)``. With
``k_x = k_y = 0.005`` and a 512 px tile the displacement is about 2.6 px at the corners and zero
at the centre. The quintic terms ``k5_y``, ``k5_x`` (default 0) are the next order of a lens's radial
distortion: the cubic alone leaves ~0.3 px on a wide field with a few px of 5th-order displacement.

The off-diagonal terms are a camera mounted turned (rotation ``(shear_yx - shear_xy) / 2`` rad, +x
towards +y) or sheared against the stage axes: 0.2 degrees is 3.6 px at the edge of a 2048 px tile.
They act on the camera-frame position, after the radial terms (a turned camera turns its own
distortion with it), so ``p + D(p) = A (p + k~ g(p))`` with ``A = 1 + M`` the whole linear map and
``k~ = k / (1 + mag)``: the stitching solve separates ``A`` (set by the stage only) from what the
overlaps see exactly (:mod:`..stitching`). General off-diagonal terms rather than a rotation
angle because they are what the stage regression estimates, linearly, each with its own sigma.

:class:`DistortionModel` is the one place that evaluates the model
(:meth:`DistortionModel.displacement`), writes it as a linear function of
the coefficients (:meth:`DistortionModel.design`, what the stitching solve
fits) and fixes the coefficient order (:attr:`DistortionModel.COEFFICIENTS`,
also the order of calibration files).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from ._coordinates import tile_centre, tile_coordinates

__all__ = ["DistortionModel", "detector_coordinates", "displacement_field", "distort", "max_displacement", "undistort"]

_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DistortionModel:
    """Coefficients of the distortion model (see module docstring).

    The fields are declared in :attr:`COEFFICIENTS` order, so positional
    construction ``DistortionModel(*values)`` and :meth:`from_coefficients`
    agree; the off-diagonal terms, then the quintic ones, come last, so the four (six)
    values of a record written before them (``mag_y, mag_x, k_y, k_x[, shear_yx, shear_xy]``)
    still construct the same model.
    """

    mag_y: float = 0.0
    mag_x: float = 0.0
    k_y: float = 0.0
    k_x: float = 0.0
    shear_yx: float = 0.0
    shear_xy: float = 0.0
    k5_y: float = 0.0
    k5_x: float = 0.0

    #: Order of the coefficients in :meth:`coefficients`, the columns of :meth:`design` and calibration files.
    COEFFICIENTS: ClassVar[tuple[str, ...]] = ("mag_y", "mag_x", "k_y", "k_x", "shear_yx", "shear_xy", "k5_y", "k5_x")
    #: The linear map's terms (the stage sets them; the overlaps cannot see them).
    LINEAR: ClassVar[tuple[str, ...]] = ("mag_y", "mag_x", "shear_yx", "shear_xy")
    #: The coefficients of records written before the off-diagonal terms (they read as 0 there).
    LEGACY: ClassVar[tuple[str, ...]] = ("mag_y", "mag_x", "k_y", "k_x")
    #: The radial terms per axis (y, x), in the camera frame: cubic, then quintic.
    RADIAL: ClassVar[tuple[tuple[str, str], ...]] = (("k_y", "k_x"), ("k5_y", "k5_x"))

    @classmethod
    def from_coefficients(cls, values: Sequence[float] | npt.ArrayLike) -> DistortionModel:
        """Model from values in :attr:`COEFFICIENTS` order (or the first six: no quintic; or the four
        :attr:`LEGACY` ones: no shear either).

        Raises
        ------
        ValueError
            Unless four, six or eight values are given.
        """
        vals = [float(v) for v in np.asarray(values, np.float64).ravel()]
        if len(vals) not in (len(cls.LEGACY), 6, len(cls.COEFFICIENTS)):
            raise ValueError(
                f"distortion needs {len(cls.COEFFICIENTS)} coefficients {cls.COEFFICIENTS} "
                f"(or the {len(cls.LEGACY)} {cls.LEGACY}), got {vals}"
            )
        return cls(**dict(zip(cls.COEFFICIENTS, vals, strict=False)))

    @classmethod
    def from_dict(cls, record: Mapping[str, float | None]) -> DistortionModel:
        """Inverse of :meth:`as_dict`; a term the record lacks (one written before it existed) is 0.

        Raises
        ------
        ValueError
            For a key that is not a coefficient.
        """
        unknown = set(record) - set(cls.COEFFICIENTS)
        if unknown:
            raise ValueError(f"unknown distortion coefficients {sorted(unknown)}; expected {cls.COEFFICIENTS}")
        return cls(**{k: float(record.get(k) or 0.0) for k in cls.COEFFICIENTS})

    @property
    def linear(self) -> _Array:
        """The whole linear map ``A = 1 + M`` (2, 2), rows the stage axes (y, x), columns the camera's."""
        return np.array([[1.0 + self.mag_y, self.shear_yx], [self.shear_xy, 1.0 + self.mag_x]])

    @property
    def rotation_deg(self) -> float:
        """The map's rotation (antisymmetric part of the off-diagonal terms), degrees, +x towards +y."""
        return float(np.degrees(0.5 * (self.shear_yx - self.shear_xy)))

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
        dy = cy * (self.mag_y * v + self.k_y * v * r2)
        dx = cx * (self.mag_x * u + self.k_x * u * r2)
        ry, rx = self.k_y * r2, self.k_x * r2  # radial factor per axis
        if self.k5_y or self.k5_x:  # only then: a model without them evaluates exactly as before they existed
            r4 = r2 * r2
            dy, dx = dy + cy * self.k5_y * v * r4, dx + cx * self.k5_x * u * r4
            ry, rx = ry + self.k5_y * r4, rx + self.k5_x * r4
        if self.shear_yx or self.shear_xy:
            # the camera-frame position (radial terms applied), then the off-diagonal part of the map
            wy = cy * v * (1.0 + ry / (1.0 + self.mag_y))
            wx = cx * u * (1.0 + rx / (1.0 + self.mag_x))
            dy = dy + self.shear_yx * wx
            dx = dx + self.shear_xy * wy
        return dy, dx

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
        gy, gx : ndarray of float64, each ``S + (8,)``
            ``dy = gy @ c`` and ``dx = gx @ c`` with ``c = model.coefficients()``
            (columns in :attr:`COEFFICIENTS` order): exact without shear or without
            radial terms; otherwise it leaves out the second-order product shear x k
            (0.06 px at the corners for 0.3 degrees and 12 px of radial distortion).
        """
        (cy, cx), (v, u) = tile_centre(shape), tile_coordinates(y, x, shape)
        r2 = u * u + v * v
        z = np.zeros_like(u)
        columns_y = {"mag_y": cy * v, "k_y": cy * v * r2, "shear_yx": cx * u, "k5_y": cy * v * r2 * r2}
        columns_x = {"mag_x": cx * u, "k_x": cx * u * r2, "shear_xy": cy * v, "k5_x": cx * u * r2 * r2}
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
    """Largest |D| over the tile, in px: at the corners for a cubic, but a quintic term of the other
    sign can turn the radial profile over inside the tile, so a coarse grid (corners included) is
    searched."""
    h, w = shape
    gy, gx = np.meshgrid(np.linspace(0.0, h - 1.0, 17), np.linspace(0.0, w - 1.0, 17), indexing="ij")
    dy, dx = model.displacement(gy, gx, shape)
    return float(np.max(np.hypot(dy, dx)))
