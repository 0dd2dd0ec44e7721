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

from ..optics import Calibration, DistortionModel, detector_coordinates, max_displacement

__all__ = ["FusedRegion", "fuse_region", "tiles_touching"]

#: Knot spacing (px) of the inverse distortion map, interpolated in between (:func:`_detector_grid`).
DISTORTION_STEP_PX = 16

_Array = npt.NDArray[np.float64]


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
    calibration: Calibration | None = None,
    out: FusedRegion | None = None,
) -> FusedRegion:
    """Weighted average of the tiles covering one rectangular mosaic region.

    Parameters
    ----------
    tiles : sequence of ndarray (C, H, W), or callable ``i -> (C, H, W)``
        Calibrated tiles (raw ones with ``calibration``); a callable lets the caller read only
        the tiles the region needs.
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
    calibration : Calibration, optional
        Dark, stray and flat correction applied (:meth:`Calibration.apply`) to the part of each
        tile the region samples only: a block touching a tile's edge corrects a strip, not the tile.
    out : FusedRegion, optional
        Buffers of the region's shape (``image`` (C, h, w) with the tiles' C, ``weight`` (h, w)) to fuse
        into, zeroed here: a caller fusing block after block reuses them instead of faulting in fresh
        pages for every block. The result is then ``out`` (also when no tile touches the region).

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
    acc: npt.NDArray[np.float32] | None = None
    if out is not None:
        if out.weight.shape != (y1 - y0, x1 - x0) or out.image.shape[1:] != out.weight.shape:
            raise ValueError(f"out buffers of shape {out.image.shape} for a region of {(y1 - y0, x1 - x0)}")
        acc, wsum = out.image, out.weight
        acc.fill(0.0)
        wsum.fill(0.0)
    else:
        wsum = np.zeros((y1 - y0, x1 - x0), np.float32)
    ones: npt.NDArray[np.float32] | None = None
    for i in indices if indices is not None else _touching_lazy(pos, get, region, model):
        tile = np.asarray(get(i))
        if tile.ndim == 2:
            tile = tile[None]
        c, h, w = tile.shape
        if acc is None:
            acc = np.zeros((c, y1 - y0, x1 - x0), np.float32)
        elif acc.shape[0] != c:
            raise ValueError(f"tile {i} has {c} channels, the region's buffers {acc.shape[0]}")
        if weights is not None:
            base = np.asarray(weights, np.float32)
        else:
            ones = ones if ones is not None and ones.shape == (h, w) else np.ones((h, w), np.float32)
            base = ones
        pad = 2.0 + max_displacement((h, w), model)
        py, px = pos[i]
        ys, ye = max(y0, int(np.floor(py - pad))), min(y1, int(np.ceil(py + h + pad)))
        xs, xe = max(x0, int(np.floor(px - pad))), min(x1, int(np.ceil(px + w + pad)))
        if ys >= ye or xs >= xe:
            continue
        grid = _DetectorGrid(np.arange(ys, ye) - py, np.arange(xs, xe) - px, (h, w), model)
        if grid.window() is None:
            continue
        sl = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
        if order == 1:
            _add_bilinear(acc, wsum, (ys - y0, xs - x0), tile, base, grid, calibration)
            continue
        # a spline's prefilter needs the whole corrected tile
        part = calibration.apply(tile) if calibration is not None else np.asarray(tile, np.float32)
        dy, dx = grid.rows(0, ye - ys)
        # Outside the detector the weight is 0 (cval), so seams blend honestly.
        wt = ndi.map_coordinates(base, [dy, dx], order=1, mode="constant", cval=0.0)
        if not np.any(wt > 0):
            continue
        for ch in range(c):
            acc[ch][sl] += wt * ndi.map_coordinates(part[ch], [dy, dx], order=order, mode="nearest")
        wsum[sl] += wt
    if acc is None:
        return FusedRegion(np.zeros((0, y1 - y0, x1 - x0), np.float32), wsum)
    from ._resample import normalise  # see _add_bilinear

    normalise(acc, wsum)  # acc becomes the image in place: one block of temporaries less
    return FusedRegion(acc, wsum)


_NONE = np.zeros((0, 0, 0), np.float32)


def _add_bilinear(
    acc: npt.NDArray[np.float32],
    wsum: npt.NDArray[np.float32],
    offset: tuple[int, int],
    tile: npt.NDArray[np.generic],
    base: npt.NDArray[np.float32],
    grid: _DetectorGrid,
    calibration: Calibration | None = None,
) -> None:
    """``acc += w·tile(p)``, ``wsum += w`` with ``w = base(p)``, ``p`` the detector pixel of each point of
    ``grid``, bilinear, in place (:mod:`._resample`), the grid's first point at ``offset`` of ``acc``
    (C-contiguous, as ``wsum``).

    ``tile`` is the whole detector (C, H, W), raw when ``calibration`` is given: its dark, stray and
    flat correct the window the grid samples only (:meth:`_DetectorGrid.window`), so a block touching
    a tile's edge corrects a strip, not the tile. The values of ``map_coordinates(order=1)`` of the
    corrected tile (``mode="constant"`` for the weight: 0 off the detector; ``"nearest"`` for the
    tile, irrelevant where the weight is 0), to float32 rounding.
    """
    # numba compiles (or loads) on first use: importing fusion (io, the CLI, the client) stays cheap
    from ._resample import add_bilinear, correct_window

    window = grid.window()
    if window is None:
        return
    c, h, w = tile.shape
    dark = np.zeros(c, np.float32)
    stray = flat = _NONE
    if calibration is not None:
        dark = np.array(np.broadcast_to(np.asarray(calibration.dark, np.float32), (c,)))  # writable: one signature
        stray = _NONE if calibration.stray is None else np.asarray(calibration.stray, np.float32)
        flat = _NONE if calibration.flat is None else np.asarray(calibration.flat, np.float32)
        for term in (stray, flat):
            if term.size and term.shape != tile.shape:
                raise ValueError(f"tiles of shape {tile.shape[-2:]} do not match the calibration's {term.shape[-2:]}")
    (wy, wx), origin = window, (int(window[0].start), int(window[1].start))
    part = np.empty((c, wy.stop - wy.start, wx.stop - wx.start), np.float32)
    correct_window(part, tile, origin, dark, stray, flat)
    base = np.ascontiguousarray(base, np.float32)
    if base.shape != (h, w):
        raise ValueError(f"weights of shape {base.shape} for tiles of shape {(h, w)}")
    if h < 2 or w < 2:  # a one-pixel detector: replicated so that every tap exists
        grow = ((0, max(0, 2 - h)), (0, max(0, 2 - w)))
        part, base = np.pad(part, ((0, 0), *grow), mode="edge"), np.pad(base, grow, mode="edge")
    rows, knot, frac, fields = grid.fields()
    at = (int(offset[0]), int(offset[1]))
    add_bilinear(acc, wsum, at, part, origin, base, (h, w), rows, knot, frac, fields)


class _DetectorGrid:
    """:func:`detector_coordinates` of the grid ``rows x cols`` (tile frame), as knot fields.

    The inverse is computed on knots every ``step`` px and its displacement interpolated
    linearly between them. The cubic model's curvature makes that error ``|D''| step² / 8``:
    about 1e-3 px for 12 px of corner distortion on a 2048 px tile at 16 px, for ~1/200 of the
    work of inverting every pixel. Row ``r`` at knot interval ``j``, fraction ``t``, is detector row
    ``t·sy[j] + ly[j] + rows[r]`` and column ``t·sx[j] + lx[j]`` (:meth:`fields`).
    """

    def __init__(
        self,
        rows: npt.NDArray[np.float64],
        cols: npt.NDArray[np.float64],
        shape: tuple[int, int],
        model: DistortionModel,
        step: int = DISTORTION_STEP_PX,
    ) -> None:
        self._rows, self._cols, self._shape = rows, cols, (int(shape[0]), int(shape[1]))
        if model.is_identity:
            zero = np.zeros((1, cols.size))
            self._knot, self._frac = np.zeros(rows.size, np.intp), np.zeros(rows.size)
            self._fields = (zero, zero, np.array(cols, np.float64)[None, :], zero)
            self._lo = self._hi = (0.0, 0.0)
            return
        ky, self._knot, self._frac = _knots(rows.size, step)
        kx, kx_k, kx_t = _knots(cols.size, step)
        gy, gx = np.meshgrid(rows[ky], cols[kx], indexing="ij")
        py, px = detector_coordinates(gy, gx, shape, model)
        ey, ex = py - gy, px - gx
        if not (np.isfinite(ey).all() and np.isfinite(ex).all()):  # the kernel's indices rely on finite taps
            raise ValueError(f"the distortion model {model} maps the tile to non-finite detector coordinates")
        self._lo = (float(ey.min()), float(ex.min()))
        self._hi = (float(ey.max()), float(ex.max()))
        # knot rows interpolated along x once (the columns folded into x); a row then blends two of them
        fields = []
        for lower in (_lerp_columns(ey, kx_k, kx_t), _lerp_columns(ex, kx_k, kx_t) + cols):
            step_ = np.zeros_like(lower)
            np.subtract(lower[1:], lower[:-1], out=step_[:-1])
            fields += [lower, step_]
        self._fields = (fields[0], fields[1], fields[2], fields[3])  # fresh arrays: C-contiguous

    def window(self) -> tuple[slice, slice] | None:
        """The detector part every inside sample's taps fall in (None: the grid misses the detector).

        Linear interpolation never leaves the range of its knots, so the knots' extremes bound it.
        """
        h, w = self._shape
        out = []
        for axis, (n, coords) in enumerate(((h, self._rows), (w, self._cols))):
            lo = int(np.floor(coords[0] + self._lo[axis] - 1e-6))
            hi = int(np.floor(coords[-1] + self._hi[axis] + 1e-6)) + 2
            lo, hi = max(lo, 0), min(hi, n)
            if hi - lo < 1 or lo > n - 1 or hi < 1:
                return None
            if hi - lo < 2 and n >= 2:  # two rows for the taps
                lo, hi = (lo, lo + 2) if lo + 2 <= n else (n - 2, n)
            out.append(slice(lo, hi))
        return out[0], out[1]

    @property
    def shape(self) -> tuple[int, int]:
        """The detector's (tile's) shape."""
        return self._shape

    def fields(self) -> tuple[_Array, npt.NDArray[np.intp], _Array, tuple[_Array, _Array, _Array, _Array]]:
        """``rows``, each row's knot interval and fraction, and the knot fields ``(ly, sy, lx, sx)``
        (the arguments of :func:`._resample.add_bilinear`)."""
        return np.asarray(self._rows, np.float64), self._knot, self._frac, self._fields

    def rows(self, r0: int, r1: int) -> tuple[_Array, _Array]:
        """Detector ``(y, x)`` of the grid rows ``r0:r1`` (fresh arrays; the kernel's arithmetic)."""
        ly, sy, lx, sx = self._fields
        j, t = self._knot[r0:r1], self._frac[r0:r1, None]
        dy = t * sy[j] + ly[j] + np.asarray(self._rows, np.float64)[r0:r1, None]
        dx = t * sx[j] + lx[j]
        return dy, dx


def _detector_grid(
    rows: npt.NDArray[np.float64],
    cols: npt.NDArray[np.float64],
    shape: tuple[int, int],
    model: DistortionModel,
    step: int = DISTORTION_STEP_PX,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The whole grid of :class:`_DetectorGrid` at once (``(rows.size, cols.size)`` each)."""
    return _DetectorGrid(rows, cols, shape, model, step).rows(0, rows.size)


def _knots(n: int, step: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Knot indices every ``step`` of ``0..n-1`` (the last included); for each of ``0..n-1`` its
    knot interval ``k`` and the fraction ``t`` of the way to knot ``k + 1``."""
    knots = np.unique(np.append(np.arange(0, n, step), n - 1)).astype(np.intp)
    if knots.size == 1:
        return knots, np.zeros(n, np.intp), np.zeros(n)
    i = np.arange(n)
    k = np.clip(np.searchsorted(knots, i, side="right") - 1, 0, knots.size - 2)
    t = (i - knots[k]) / (knots[k + 1] - knots[k])
    return knots, k, t


def _lerp_columns(field: _Array, k: npt.NDArray[np.intp], t: _Array) -> _Array:
    """Knot columns of ``field`` (K, k) interpolated linearly to every column (:func:`_knots`' ``k``, ``t``).

    Not a matrix product with the interpolation matrix: that is the same sum with zeros, and BLAS threads
    contending on a busy worker made it most of a tile's set-up.
    """
    if field.shape[1] == 1:
        return np.repeat(field, k.size, axis=1)
    out: _Array = field[:, k] * (1 - t) + field[:, k + 1] * t
    return out


def _touching_lazy(
    pos: npt.NDArray[np.float64],
    get: Callable[[int], npt.ArrayLike],
    region: tuple[int, int, int, int],
    model: DistortionModel,
) -> list[int]:
    # Without explicit indices, tile shape comes from the first tile read.
    shape = np.shape(get(0))[-2:]
    return tiles_touching(pos, (int(shape[0]), int(shape[1])), region, distortion=model)
