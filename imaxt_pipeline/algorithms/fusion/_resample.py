"""Compiled bilinear resampling of tiles into a mosaic region: :func:`correct_window`, :func:`add_bilinear`,
:func:`normalise`.

Per tile, the part of the detector a region samples is dark-, stray- and flat-corrected into a float32
buffer (one pass). Then per output pixel: its detector pixel (the knot-interpolated inverse distortion of
:class:`._fuse._DetectorGrid`), the bilinear confidence there (0 off the detector), and for every
channel the bilinear value of the corrected tile, accumulated as ``acc += w·value``, ``wsum += w``.
As numpy passes this was ~20 sweeps over float64 and float32 strips per tile and most of a fusion
task's time; here the coordinates, taps and weight of an output row are found once for every channel.

The arithmetic is the numpy version's, operation for operation (float32 ``(raw - dark - stray) / flat``,
float32 lerps along x then y, float64 coordinates) and there is no ``fastmath``: the compiler may not
contract or reorder, so the result is that of ``map_coordinates(order=1)`` on the corrected tile to
float32 rounding.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["add_bilinear", "correct_window", "normalise"]

_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]
_Real = float | np.float32  # numba's float32 scalars (taps, fractions) or Python floats


@numba.njit(cache=True, nogil=True, inline="always")
def _lerp(a: _Real, b: _Real, c: _Real, d: _Real, ty: _Real, tx: _Real) -> _Real:
    """Two lerps along x (``a→b``, ``c→d``), one along y: the numpy kernel's order of operations."""
    top = a + (b - a) * tx
    bottom = c + (d - c) * tx
    return top + (bottom - top) * ty


@numba.njit(cache=True, nogil=True, error_model="numpy")
def correct_window(
    out: _F32, tile: npt.NDArray[np.generic], origin: tuple[int, int], dark: _F32, stray: _F32, flat: _F32
) -> None:
    """``out = (tile - dark - stray) / flat`` (float32) of the detector part ``out.shape`` from ``origin``.

    ``tile`` is the whole detector (C, H, W), any real dtype; ``stray`` and ``flat`` (C, H, W) float32,
    or of shape (0, 0, 0) for none; ``dark`` (C,) float32.
    """
    n_ch, n, m = out.shape
    y0, x0 = origin
    has_stray, has_flat = stray.shape[0] > 0, flat.shape[0] > 0
    for ch in range(n_ch):
        d = dark[ch]
        for i in range(n):
            # one loop per combination of terms, each a single pass the compiler can vectorise
            dst, src = out[ch, i], tile[ch, y0 + i, x0 : x0 + m]
            if has_stray and has_flat:
                s, f = stray[ch, y0 + i, x0 : x0 + m], flat[ch, y0 + i, x0 : x0 + m]
                for k in range(m):
                    dst[k] = (np.float32(src[k]) - d - s[k]) / f[k]
            elif has_flat:
                f = flat[ch, y0 + i, x0 : x0 + m]
                for k in range(m):
                    dst[k] = (np.float32(src[k]) - d) / f[k]
            elif has_stray:
                s = stray[ch, y0 + i, x0 : x0 + m]
                for k in range(m):
                    dst[k] = np.float32(src[k]) - d - s[k]
            else:
                for k in range(m):
                    dst[k] = np.float32(src[k]) - d


@numba.njit(cache=True, nogil=True, error_model="numpy")
def add_bilinear(
    acc: _F32,
    wsum: _F32,
    offset: tuple[int, int],
    window: _F32,
    origin: tuple[int, int],
    base: _F32,
    detector: tuple[int, int],
    rows: _F64,
    knot: npt.NDArray[np.intp],
    frac: _F64,
    fields: tuple[_F64, _F64, _F64, _F64],
) -> None:
    """``acc[:, r0 + r, c0 + c] += w·window(p)``, ``wsum[r0 + r, c0 + c] += w``, ``w = base(p)``, ``p``
    the detector pixel of grid point (r, c).

    Parameters
    ----------
    acc, wsum : float32 (C, N, M), (N, M), C-contiguous
        Accumulators of the whole region (updated in place): whole buffers and an ``offset`` ``(r0, c0)``
        rather than views, so that every call has the same argument types (one compiled version).
    window : float32 (C, h, w), C-contiguous, h, w >= 2
        The corrected detector part starting at detector pixel ``origin`` that holds every tap of the
        samples on the detector (:meth:`._fuse._DetectorGrid.window`).
    base : float32 (H', W'), C-contiguous
        Confidence of the whole detector (which is ``[0, H-1] x [0, W-1]``, ``detector`` ``(H, W)``;
        0 off it), ``H' = max(H, 2)``, ``W' = max(W, 2)`` (a one-pixel edge replicated).
    rows : float64 (n,)
        Tile-frame row of each output row.
    knot, frac : (n,)
        Each output row's knot interval ``j`` and its fraction ``t`` of the way to knot row ``j + 1``.
    fields : (ly, sy, lx, sx), float64 (K, m) each
        Per knot row and output column: the row displacement and its step to the next knot row, the
        detector column (columns folded in) and its step. Row ``r``'s detector pixel is
        ``(t·sy + ly + rows[r], t·sx + lx)`` at knot row ``j``.
    """
    ly, sy, lx, sx = fields
    n_ch, hc, wc = window.shape
    h, w = detector
    wb = base.shape[1]
    n, m = rows.size, ly.shape[1]
    r0, c0 = offset
    y0, x0 = origin
    hi_y, hi_x = float(h - 1), float(w - 1)
    # taps clipped to the window (and so to the detector): the last pixel is the end of the last interval
    lo_fy, lo_fx = float(y0), float(x0)
    top_fy, top_fx = float(y0 + hc - 2), float(x0 + wc - 2)
    values = window.reshape(n_ch, hc * wc)
    weights = base.reshape(base.size)
    at = np.empty(m, np.intp)  # flat index of the top-left tap in the window, per output column
    fy_, fx_, wt_ = np.empty(m, np.float32), np.empty(m, np.float32), np.zeros(m, np.float32)
    for r in range(n):
        j, t, row = knot[r], frac[r], rows[r]
        for c in range(m):
            wt_[c] = 0.0
            y = t * sy[j, c] + ly[j, c] + row
            x = t * sx[j, c] + lx[j, c]
            if not (y >= 0.0 and y <= hi_y and x >= 0.0 and x <= hi_x):
                continue  # off the detector: weight 0
            fy = min(max(math.floor(y), lo_fy), top_fy)
            fx = min(max(math.floor(x), lo_fx), top_fx)
            ty = min(max(np.float32(y - fy), np.float32(0.0)), np.float32(1.0))
            tx = min(max(np.float32(x - fx), np.float32(0.0)), np.float32(1.0))
            iy, ix = int(fy), int(fx)
            q = iy * wb + ix
            wt = _lerp(weights[q], weights[q + 1], weights[q + wb], weights[q + wb + 1], ty, tx)
            wsum[r0 + r, c0 + c] += wt
            at[c], fy_[c], fx_[c], wt_[c] = (iy - y0) * wc + (ix - x0), ty, tx, wt
        for ch in range(n_ch):
            v = values[ch]
            out = acc[ch, r0 + r]
            for c in range(m):
                wt = wt_[c]
                if wt == 0.0:  # off the detector or weightless: nothing added (a non-finite tap stays out)
                    continue
                q = at[c]
                out[c0 + c] += _lerp(v[q], v[q + 1], v[q + wc], v[q + wc + 1], fy_[c], fx_[c]) * wt


@numba.njit(cache=True, nogil=True, error_model="numpy")
def normalise(acc: _F32, wsum: _F32) -> None:
    """``acc /= wsum`` where ``wsum > 0``, 0 elsewhere, in place (``acc`` (C, n, m), ``wsum`` (n, m))."""
    n_ch, n, m = acc.shape
    for ch in range(n_ch):
        for r in range(n):
            out, w = acc[ch, r], wsum[r]
            for c in range(m):
                out[c] = out[c] / w[c] if w[c] > 0 else np.float32(0.0)
