"""Sub-pixel shift of one image against another by Gauss-Newton on the intensity residual.

Minimises ``Σ w (ref(p) - g·mov(p - s) - o)^2`` over the shift ``s``, a gain
``g`` and an offset ``o``. ``mov`` is a cubic B-spline; because a region is a
rectangle and its shift is the same over all of it, values and gradients at
``p - s`` are separable 4-tap filters of the spline coefficients (no
per-pixel coordinate arrays), and the blocks of one seam are iterated
together. Each iteration's normal equations come from one compiled pass over
every block's pixels (:mod:`._gauss_newton`, float64 sums of the float32
coefficients); the 4 x 4 systems are solved here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ._gauss_newton import N_STATS, normal_equations

__all__ = ["MovingSpline", "ShiftEstimate", "refine_shift", "window_crop"]

_Array = npt.NDArray[np.float64]
_T = TypeVar("_T", bound=np.generic)


@dataclass(frozen=True)
class ShiftEstimate:
    """Sub-pixel shift of one region with its uncertainty and match quality."""

    shift: tuple[float, float]
    sigma: tuple[float, float]
    ncc: float
    n_pixels: int
    converged: bool
    #: weighted centre (y, x) of the reference pixels that took part: where the shift applies
    centroid: tuple[float, float] = (float("nan"), float("nan"))

    def __bool__(self) -> bool:
        return self.converged


def refine_shift(
    reference_image: npt.ArrayLike,
    moving_image: npt.ArrayLike,
    shift: tuple[float, float],
    *,
    reference_weights: npt.ArrayLike | None = None,
    moving_weights: npt.ArrayLike | None = None,
    region: tuple[slice, slice] | None = None,
    iterations: int = 15,
    tol: float = 1e-3,
    max_step: float = 3.0,
) -> ShiftEstimate:
    """Sub-pixel shift minimising ``Σ w (ref(p) - g·mov(p - s) - o)^2`` by Gauss-Newton.

    ``mov`` is a cubic B-spline; because the region is a rectangle and the
    shift is the same for all of it, values and gradients at ``p - s`` are
    separable 4-tap filters of the spline coefficients (no per-pixel
    coordinate arrays), which keeps one iteration a few array operations.

    Parameters
    ----------
    reference_image, moving_image : ndarray (H, W)
        Tiles (already smoothed if desired); they may differ in shape.
    shift : (float, float)
        Starting shift ``s`` (ref pixel ``p`` ↔ mov pixel ``p - s``).
    reference_weights, moving_weights : ndarray, optional
        Confidence maps (0 = ignore).
    region : (slice, slice), optional
        Pixels ``p`` of the reference taken into account (default all).
    iterations, tol : int, float
        Gauss-Newton stopping rule (shift update in px).
    max_step : float
        Largest accepted move from the starting shift; further means divergence.

    Returns
    -------
    ShiftEstimate
        Falsy when there are too few pixels, no texture or divergence.
    """
    a = np.asarray(reference_image, np.float64)
    region = region or (slice(0, a.shape[0]), slice(0, a.shape[1]))
    ry0, ry1, _ = region[0].indices(a.shape[0])
    rx0, rx1, _ = region[1].indices(a.shape[1])
    # Only the part of ``mov`` the search can reach is interpolated (with margins for the spline taps).
    m = int(np.ceil(max_step)) + 4
    window = (
        int(np.floor(ry0 - shift[0])) - m,
        int(np.ceil(ry1 - shift[0])) + m,
        int(np.floor(rx0 - shift[1])) - m,
        int(np.ceil(rx1 - shift[1])) + m,
    )
    mov = MovingSpline(moving_image, moving_weights, window)
    ref_w = None if reference_weights is None else np.asarray(reference_weights, np.float64)
    return mov.refine(
        a, ref_w, [(slice(ry0, ry1), slice(rx0, rx1))], shift, iterations=iterations, tol=tol, max_step=max_step
    )[0]


class MovingSpline:
    """Cubic B-spline of a window of the moving tile, with its confidence, ready for :meth:`refine`.

    Built once per pair and shared by the whole-overlap and the block fits.
    """

    def __init__(self, image: npt.ArrayLike, weights: npt.ArrayLike | None, window: tuple[int, int, int, int]) -> None:
        img = np.asarray(image, np.float64)
        self.shape = img.shape
        self.y0, self.y1, self.x0, self.x1 = window
        self.coef = _padded_coefficients(img, *window).astype(np.float32)
        wts = np.ones(img.shape, np.float32) if weights is None else np.asarray(weights, np.float32)
        self.weights = window_crop(wts, self.y0, self.y1 + 1, self.x0, self.x1 + 1)  # zero outside the tile

    def refine(
        self,
        ref: _Array,
        ref_weights: _Array | None,
        regions: list[tuple[slice, slice]],
        start: tuple[float, float],
        *,
        iterations: int = 15,
        tol: float = 1e-3,
        max_step: float = 3.0,
    ) -> list[ShiftEstimate]:
        """Gauss-Newton of :func:`refine_shift` for several regions of ``ref`` at once.

        Each region gets its own shift, gain and offset; all are iterated together (one compiled pass
        over each block per iteration, :func:`._gauss_newton.normal_equations`; blocks that converged
        stop costing anything).
        """
        n = len(regions)
        ny = max((r[0].stop - r[0].start for r in regions), default=0)
        nx = max((r[1].stop - r[1].start for r in regions), default=0)
        if ny < 2 or nx < 2:
            first = (float(start[0]), float(start[1]))
            return [ShiftEstimate(first, (np.inf, np.inf), -1.0, 0, False) for _ in regions]
        # contiguous once here, not at every iteration's call
        ref = np.ascontiguousarray(ref, np.float64)
        ref_w = np.ones(ref.shape) if ref_weights is None else np.ascontiguousarray(ref_weights, np.float64)
        boxes = np.array([(r[0].start, r[0].stop, r[1].start, r[1].stop) for r in regions], np.int64)
        origin = boxes[:, [0, 2]].astype(np.float64)
        # a region reaching past ``ref`` takes part with the pixels it has (the kernel does not check bounds)
        boxes[:, :2] = np.clip(boxes[:, :2], 0, ref.shape[0])
        boxes[:, 2:] = np.clip(boxes[:, 2:], 0, ref.shape[1])
        s = np.tile(np.asarray(start, np.float64), (n, 1))
        gain, offset = np.ones(n), np.zeros(n)
        active, ok = np.ones(n, bool), np.ones(n, bool)
        for _ in range(iterations):
            idx = np.flatnonzero(active)  # converged blocks stop costing anything
            if idx.size == 0:
                break
            hess, grad, _, valid = self._system(
                ref, ref_w, boxes[idx], origin[idx] - s[idx], gain[idx], offset[idx], ny, nx, final=False
            )
            trace = np.trace(hess, axis1=1, axis2=2)
            good = valid & (trace > 0)
            hess[~good] = np.eye(4)
            step = -np.linalg.solve(hess + 1e-9 * trace[:, None, None] * np.eye(4), grad[..., None])[..., 0]
            step[~good] = 0.0
            s[idx] += step[:, :2]
            gain[idx] += step[:, 2]
            offset[idx] += step[:, 3]
            diverged = (
                ~np.all(np.isfinite(s[idx]), axis=1)
                | (gain[idx] <= 0)
                | (np.max(np.abs(s[idx] - np.asarray(start)), axis=1) > max_step)
            )
            ok[idx] &= good & ~diverged
            active[idx] = ok[idx] & (np.max(np.abs(step[:, :2]), axis=1) >= tol)
        hess, _, stats, valid = self._system(ref, ref_w, boxes, origin - s, gain, offset, ny, nx)  # final linearisation
        ok &= valid
        converged = ok & ~active
        return [_estimate(s[i], stats[i], hess[i], bool(valid[i]), bool(converged[i]), origin[i]) for i in range(n)]

    def _system(
        self,
        ref: _Array,
        ref_w: _Array,
        boxes: npt.NDArray[np.int64],
        first: _Array,
        gain: _Array,
        offset: _Array,
        ny: int,
        nx: int,
        *,
        final: bool = True,
    ) -> tuple[_Array, _Array, _Array, npt.NDArray[np.bool_]]:
        """Normal equations and statistics of every block whose partner ``first + (i, j)`` the window holds.

        ``first`` is each block's first partner in tile coordinates; a block is valid when the window
        holds it (``ny`` x ``nx``, the largest block, with the spline's margins) and at least 32 of its
        pixels have weight.
        """
        y0, x0 = first[:, 0] - self.y0, first[:, 1] - self.x0  # window coordinates of each block's first sample
        rows, cols = self.coef.shape
        valid = (y0 >= 1) & (y0 + ny + 2 < rows) & (x0 >= 1) & (x0 + nx + 2 < cols)
        hess = np.zeros((len(boxes), 4, 4))
        grad = np.zeros((len(boxes), 4))
        stats = np.zeros((len(boxes), N_STATS))
        if valid.any():
            hv, gv, sv = normal_equations(
                self.coef,
                self.weights,
                ref,
                ref_w,
                boxes[valid],
                np.stack([y0, x0], axis=1)[valid],
                gain[valid],
                offset[valid],
                (int(self.shape[0]), int(self.shape[1])),
                (self.y0, self.x0),
                final=final,
            )
            hess[valid], grad[valid], stats[valid] = hv, gv, sv
        valid &= stats[:, 9] >= 32
        return hess, grad, stats, valid


def _estimate(s: _Array, stats: _Array, hess: _Array, valid: bool, converged: bool, origin: _Array) -> ShiftEstimate:
    """Shift, its uncertainty (final linearisation), the NCC and the weighted centre of one block."""
    fail = ShiftEstimate((float(s[0]), float(s[1])), (np.inf, np.inf), -1.0, 0, False)
    wsum, wrr, wa, wb, waa, wbb, wab, wi, wj, nnz = (float(v) for v in stats)
    if not valid or wsum <= 0:
        return fail
    sigma2 = wrr / max(wsum - 4.0, 1.0)
    try:
        sig = np.sqrt(np.maximum(np.diag(np.linalg.inv(hess) * sigma2)[:2], 0.0))
    except np.linalg.LinAlgError:
        return fail
    # weighted (co)variances of ref and the resampled moving tile from the float64 sums
    am, bm = wa / wsum, wb / wsum
    vaa, vbb, vab = max(waa - wsum * am * am, 0.0), max(wbb - wsum * bm * bm, 0.0), wab - wsum * am * bm
    den = np.sqrt(vaa * vbb)
    ncc = float(vab / den) if den > 0 else -1.0
    # Both tiles' confidences shape the weights (a trimmed border of either tile drops out).
    cy, cx = origin[0] + wi / wsum, origin[1] + wj / wsum
    return ShiftEstimate(
        (float(s[0]), float(s[1])),
        (float(sig[0]), float(sig[1])),
        ncc,
        int(nnz),
        converged and bool(np.all(np.isfinite(sig))),
        (float(cy), float(cx)),
    )


def _padded_coefficients(image: _Array, y0: int, y1: int, x0: int, x1: int) -> _Array:
    """Cubic B-spline coefficients of ``image[y0:y1, x0:x1]`` (mirror boundary), window may leave the image."""
    h, w = image.shape
    cy0, cy1, cx0, cx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    coef: _Array = ndi.spline_filter(image[cy0:cy1, cx0:cx1], order=3, mode="mirror")
    pads = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1))
    if any(p for pair in pads for p in pair):
        # Outside the tile the samples get zero weight; mirrored values only keep the taps defined.
        coef = np.pad(coef, pads, mode="reflect")
    return coef


def window_crop(image: npt.NDArray[_T], y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[_T]:
    """``image[y0:y1, x0:x1]`` with zeros where the window leaves the image."""
    out = np.zeros((y1 - y0, x1 - x0), image.dtype)
    h, w = image.shape
    sy0, sy1, sx0, sx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if sy0 < sy1 and sx0 < sx1:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out
