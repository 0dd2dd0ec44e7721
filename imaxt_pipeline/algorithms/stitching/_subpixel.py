"""Sub-pixel shift of one image against another by Gauss-Newton on the intensity residual.

Minimises ``Σ w (ref(p) - g·mov(p - s) - o)^2`` over the shift ``s``, a gain
``g`` and an offset ``o``. ``mov`` is a cubic B-spline; because a region is a
rectangle and its shift is the same over all of it, values and gradients at
``p - s`` are separable 4-tap filters of the spline coefficients (no
per-pixel coordinate arrays), and the blocks of one seam are iterated
together as arrays, so one iteration for a whole seam is a few array
operations. The per-pixel arrays are float32 (half the memory traffic of the taps and the Jacobian,
which are most of a pair's time); the 4 x 4 systems are solved in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

__all__ = ["MovingSpline", "ShiftEstimate", "refine_shift", "window_crop"]

_Array = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]
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

        Each region gets its own shift, gain and offset; all are iterated
        together as arrays (blocks of one seam differ by a pixel in size at
        most: smaller ones are padded with zero weight).
        """
        n = len(regions)
        ny = max((r[0].stop - r[0].start for r in regions), default=0)
        nx = max((r[1].stop - r[1].start for r in regions), default=0)
        if ny < 2 or nx < 2:
            first = (float(start[0]), float(start[1]))
            return [ShiftEstimate(first, (np.inf, np.inf), -1.0, 0, False) for _ in regions]
        refs = np.zeros((n, ny, nx), np.float32)
        wref = np.zeros((n, ny, nx), np.float32)
        for i, (ys, xs) in enumerate(regions):
            h, w = ys.stop - ys.start, xs.stop - xs.start
            refs[i, :h, :w] = ref[ys, xs]
            wref[i, :h, :w] = 1.0 if ref_weights is None else ref_weights[ys, xs]
        origin = np.array([(r[0].start, r[1].start) for r in regions], np.float64)
        s = np.tile(np.asarray(start, np.float64), (n, 1))
        gain, offset = np.ones(n), np.zeros(n)
        active, ok = np.ones(n, bool), np.ones(n, bool)
        for _ in range(iterations):
            idx = np.flatnonzero(active)  # converged blocks stop costing anything
            if idx.size == 0:
                break
            model = self._sample(refs[idx], wref[idx], origin[idx] - s[idx])
            _, hess, grad = _linearise(model, refs[idx], gain[idx], offset[idx])
            trace = np.trace(hess, axis1=1, axis2=2)
            good = model.valid & (trace > 0)
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
        model = self._sample(refs, wref, origin - s)  # the final linearisation, for every block
        ok &= model.valid
        converged = ok & ~active
        r, hess, _ = _linearise(model, refs, gain, offset)
        return [self._estimate(i, s[i], model, refs[i], r[i], hess[i], bool(converged[i]), origin[i]) for i in range(n)]

    def _sample(self, refs: _F32, wref: _F32, first: _Array) -> _Samples:
        """Spline value, gradient and combined weight at ``first + (i, j)`` for every block."""
        n, ny, nx = refs.shape
        y0, x0 = first[:, 0] - self.y0, first[:, 1] - self.x0  # window coordinates of each block's first sample
        valid = (y0 >= 1) & (y0 + ny + 2 < self.coef.shape[0]) & (x0 >= 1) & (x0 + nx + 2 < self.coef.shape[1])
        y0 = np.where(valid, y0, 1.0)
        x0 = np.where(valid, x0, 1.0)
        iy, ix = np.floor(y0).astype(int), np.floor(x0).astype(int)
        ty, tx = y0 - iy, x0 - ix
        # Each block's window of coefficients (and of the confidence) is a plain slice: copying n slices
        # is several times faster than one fancy-indexed gather of the same pixels.
        win = np.empty((n, ny + 3, nx + 3), np.float32)
        lin = np.empty((n, ny + 1, nx + 1), np.float32)
        for i, (yy, xx) in enumerate(zip(iy.tolist(), ix.tolist(), strict=True)):
            win[i] = self.coef[yy - 1 : yy + ny + 2, xx - 1 : xx + nx + 2]
            lin[i] = self.weights[yy : yy + ny + 1, xx : xx + nx + 1]
        wy, dwy = _cubic_weights(ty)
        wx, dwx = _cubic_weights(tx)
        along_y, d_along_y = _taps(win, wy, ny, 1), _taps(win, dwy, ny, 1)
        value, grad_x, grad_y = _taps(along_y, wx, nx, 2), _taps(along_y, dwx, nx, 2), _taps(d_along_y, wx, nx, 2)
        wlin = _taps(_taps(lin, np.stack([1 - ty, ty], 1), ny, 1), np.stack([1 - tx, tx], 1), nx, 2)
        qy = y0[:, None] + self.y0 + np.arange(ny)  # tile coordinates of the samples
        qx = x0[:, None] + self.x0 + np.arange(nx)
        in_y = (qy >= 0) & (qy <= self.shape[0] - 1) & valid[:, None]
        in_x = (qx >= 0) & (qx <= self.shape[1] - 1)
        weight = wref * wlin
        weight *= in_y[:, :, None]
        weight *= in_x[:, None, :]
        valid &= np.count_nonzero(weight.reshape(n, -1), axis=1) >= 32
        return _Samples(value, grad_y, grad_x, weight, valid)

    @staticmethod
    def _estimate(
        i: int, s: _Array, model: _Samples, ref32: _F32, r32: _F32, hess: _Array, converged: bool, origin: _Array
    ) -> ShiftEstimate:
        """Shift, its uncertainty (final linearisation) and the NCC of block ``i``."""
        fail = ShiftEstimate((float(s[0]), float(s[1])), (np.inf, np.inf), -1.0, 0, False)
        # float64 here: the NCC decides whether a block is kept
        wt, bq = model.weight[i].astype(np.float64), model.value[i].astype(np.float64)
        ref, r = ref32.astype(np.float64), r32.astype(np.float64)
        wsum = float(wt.sum())
        if not model.valid[i] or wsum <= 0:
            return fail
        sigma2 = float(np.sum(wt * r * r)) / max(wsum - 4.0, 1.0)
        try:
            sig = np.sqrt(np.maximum(np.diag(np.linalg.inv(hess) * sigma2)[:2], 0.0))
        except np.linalg.LinAlgError:
            return fail
        am, bm = np.sum(wt * ref) / wsum, np.sum(wt * bq) / wsum
        den = np.sqrt(np.sum(wt * (ref - am) ** 2) * np.sum(wt * (bq - bm) ** 2))
        ncc = float(np.sum(wt * (ref - am) * (bq - bm)) / den) if den > 0 else -1.0
        # Both tiles' confidences shape the weights (a trimmed border of either tile drops out).
        cy = origin[0] + float(np.sum(wt.sum(axis=1) * np.arange(wt.shape[0]))) / wsum
        cx = origin[1] + float(np.sum(wt.sum(axis=0) * np.arange(wt.shape[1]))) / wsum
        return ShiftEstimate(
            (float(s[0]), float(s[1])),
            (float(sig[0]), float(sig[1])),
            ncc,
            int(np.count_nonzero(wt)),
            converged and bool(np.all(np.isfinite(sig))),
            (cy, cx),
        )


def _linearise(model: _Samples, refs: _F32, gain: _Array, offset: _Array) -> tuple[_F32, _Array, _Array]:
    """Residuals ``ref - g·mov - o``, Gauss-Newton Hessian and gradient of every block.

    d r / d s = +g ∇mov(q) (q = p - s); d r / d g = -mov; d r / d o = -1. The Jacobian is built
    parameter-major, (n, 4, P), so the two products are batched matrix products with no transposed copy.
    """
    n = refs.shape[0]
    g = gain[:, None, None].astype(refs.dtype)
    r: _F32 = refs - g * model.value - offset[:, None, None].astype(refs.dtype)
    jac = np.empty((n, 4, refs[0].size), refs.dtype)
    jac[:, 0] = (g * model.grad_y).reshape(n, -1)
    jac[:, 1] = (g * model.grad_x).reshape(n, -1)
    jac[:, 2] = -model.value.reshape(n, -1)
    jac[:, 3] = -1.0
    jw = jac * model.weight.reshape(n, 1, -1)
    hess = (jw @ jac.transpose(0, 2, 1)).astype(np.float64)
    return r, hess, (jw @ r.reshape(n, -1, 1))[..., 0].astype(np.float64)


@dataclass(frozen=True)
class _Samples:
    value: _F32
    grad_y: _F32
    grad_x: _F32
    weight: _F32
    valid: npt.NDArray[np.bool_]


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


def _cubic_weights(t: _Array) -> tuple[_Array, _Array]:
    """Cubic B-spline tap weights (B, 4) and their derivatives for samples ``t`` in [0, 1) past tap 1."""
    u = 1.0 - t
    w = np.stack([u**3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1) / 6.0
    dw = np.stack([-(u**2), 3 * t**2 - 4 * t, -3 * t**2 + 2 * t + 1, t**2], axis=1) / 2.0
    return w, dw


def _taps(arr: _F32, weights: _Array, n: int, axis: int) -> _F32:
    """``Σ_k weights[b, k] * arr[b, ..., k : k + n, ...]`` along ``axis``, per block ``b``."""
    idx = [slice(None)] * arr.ndim
    shape = [-1] + [1] * (arr.ndim - 1)
    idx[axis] = slice(0, n)
    wts = weights.astype(arr.dtype)  # float32 arrays stay float32
    out: _F32 = arr[tuple(idx)] * wts[:, 0].reshape(shape)
    for k in range(1, wts.shape[1]):
        idx[axis] = slice(k, k + n)
        out += arr[tuple(idx)] * wts[:, k].reshape(shape)
    return out


def window_crop(image: npt.NDArray[_T], y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[_T]:
    """``image[y0:y1, x0:x1]`` with zeros where the window leaves the image."""
    out = np.zeros((y1 - y0, x1 - x0), image.dtype)
    h, w = image.shape
    sy0, sy1, sx0, sx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if sy0 < sy1 and sx0 < sx1:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out
