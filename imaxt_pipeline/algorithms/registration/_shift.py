"""Order-1 (bilinear) shift of an image by a constant sub-pixel offset: two lerps per sample, compiled.

A constant offset puts every sample at the same fraction ``(ty, tx)`` between its four taps, so
bilinear interpolation is separable with fixed weights: per output row, a lerp along y between two
input rows, then a lerp along x of that. :func:`scipy.ndimage.shift` (``order=1``) weighs the same four
taps in float64 through its general per-sample loop (~35-45 ns per pixel); here the same sums, in
float64 and cast to float32 once, take ~2 ns per pixel (``benchmarks/fusion_kernels.py``), and they
equal scipy's to the float32 rounding. Taps outside the image are zero (scipy's ``mode="grid-constant"``).

This is the one order-1 shift of the cube: :func:`apply_offset` (a whole plane) and the cube's
block tasks (a window of the plane, ``origin`` placing the block in it) split the same offset into
the same integer part and fraction (:func:`split_shift`), so a block equals the plane's shift bit for
bit. The float arithmetic is strict (no ``fastmath``): vectorised or not, every sample rounds the same.
Numba is imported and the kernel loaded (from its on-disk cache) on the first shift, not when this
package is (the client and the CLI import it; numba costs ~1 s to import).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import numpy.typing as npt

__all__ = ["SNAP", "shift_linear", "split_shift"]

_F32 = npt.NDArray[np.float32]
#: A fraction this close to an integer is that integer: the shift is then a copy of the image
#: (offsets solved in float64 land a few ulp off an integral shift).
SNAP = 1e-9


def split_shift(offset: Sequence[float] | npt.ArrayLike) -> tuple[tuple[int, int], tuple[float, float]]:
    """``(iy, ix), (ty, tx)``: integer parts and fractions in ``[0, 1)`` of ``offset`` (within :data:`SNAP`: 0).

    >>> split_shift((2.25, -0.5))
    ((2, -1), (0.25, 0.5))
    >>> split_shift((3.0 - 1e-12, 1e-12))
    ((3, 0), (0.0, 0.0))
    """
    ints: list[int] = []
    fracs: list[float] = []
    for v in np.asarray(offset, np.float64).ravel():
        i = float(np.floor(v))
        t = float(v) - i  # exact in float64 (the fraction's bits of v)
        if t < SNAP or t > 1.0 - SNAP:
            i, t = float(np.round(v)), 0.0
        ints.append(int(i))
        fracs.append(t)
    if len(ints) != 2:
        raise ValueError(f"offset of {len(ints)} values, want (dy, dx)")
    return (ints[0], ints[1]), (fracs[0], fracs[1])


def shift_linear(
    data: npt.ArrayLike,
    offset: Sequence[float] | npt.ArrayLike,
    out_shape: tuple[int, int],
    *,
    origin: tuple[int, int] = (0, 0),
) -> _F32:
    """``out[..., y, x]`` = ``data`` sampled at ``(y, x) + origin + offset``, bilinear, zero outside ``data``.

    Parameters
    ----------
    data : array_like (..., H, W)
        Image(s), computed in float32 (each leading index on its own).
    offset : (float, float)
        ``(dy, dx)`` of the samples in ``data`` px; its fraction sets the interpolation weights.
    out_shape : (int, int)
        ``(h, w)`` of the output.
    origin : (int, int), optional
        Integral ``(y, x)`` added to every sample: a window of a larger image, cut at ``-origin``
        relative to that image's samples, gives that image's values bit for bit.

    Returns
    -------
    ndarray (..., h, w) of float32
        Equal to ``scipy.ndimage.shift(data, -offset, order=1, mode="grid-constant")`` (on a
        canvas of ``out_shape``) to float32 rounding; an integral offset copies ``data`` exactly.
    """
    arr = np.asarray(data, np.float32)
    lead = arr.shape[:-2]
    flat = np.ascontiguousarray(arr.reshape(-1, *arr.shape[-2:]))
    (iy, ix), (ty, tx) = split_shift(offset)
    h, w = (int(v) for v in out_shape)
    r0, c0 = int(origin[0]) + iy, int(origin[1]) + ix
    if ty == 0.0 and tx == 0.0:
        out = np.zeros((flat.shape[0], h, w), np.float32)
        _copy(flat, r0, c0, out)
    else:
        out = np.empty((flat.shape[0], h, w), np.float32)  # every sample written: no zeroing pass
        _compiled()(flat, r0, c0, ty, tx, out)
    return out.reshape(*lead, h, w)


def _copy(data: _F32, r0: int, c0: int, out: _F32) -> None:
    """``out[:, y, x] = data[:, r0 + y, c0 + x]`` where that lies in ``data`` (``out`` holds zeros)."""
    _, height, width = data.shape
    _, h, w = out.shape
    y0, y1 = max(0, -r0), min(h, height - r0)
    x0, x1 = max(0, -c0), min(w, width - c0)
    if y1 > y0 and x1 > x0:
        out[:, y0:y1, x0:x1] = data[:, r0 + y0 : r0 + y1, c0 + x0 : c0 + x1]


@cache
def _compiled() -> Callable[[_F32, int, int, float, float, _F32], None]:
    import numba

    kernel: Callable[[_F32, int, int, float, float, _F32], None] = numba.njit(cache=True, nogil=True)(_lerp2)
    return kernel


def _lerp2(data: _F32, r0: int, c0: int, ty: float, tx: float, out: _F32) -> None:  # pragma: no cover - compiled
    """``out[n, y, x]``: the bilinear sample of ``data[n]`` at ``(r0 + y + ty, c0 + x + tx)``, zero outside ``data``."""
    n, height, width = data.shape
    _, h, w = out.shape
    uy, ux = 1.0 - ty, 1.0 - tx
    # columns c0 .. c0 + w of the y-lerped row; those outside data stay zero
    k0, k1 = max(0, -c0), min(w + 1, width - c0)
    if k1 <= k0:
        out[...] = 0.0
        return
    row = np.zeros(w + 1, np.float64)
    zeros = np.zeros(width, np.float32)
    seg, lo, hi = row[k0:k1], row[:w], row[1:]
    # slices indexed from 0: no negative-index test per tap, so both loops vectorise (~2x)
    for c in range(n):
        for y in range(h):
            r = r0 + y
            if r + 1 < 0 or r >= height:
                out[c, y] = 0.0  # both taps above or below the image
                continue
            a = (data[c, r] if r >= 0 else zeros)[c0 + k0 : c0 + k1]
            b = (data[c, r + 1] if r + 1 < height else zeros)[c0 + k0 : c0 + k1]
            for k in range(k1 - k0):
                seg[k] = uy * np.float64(a[k]) + ty * np.float64(b[k])
            dst = out[c, y]
            for x in range(w):
                dst[x] = np.float32(ux * lo[x] + tx * hi[x])
