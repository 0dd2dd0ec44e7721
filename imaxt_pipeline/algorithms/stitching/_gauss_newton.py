"""Compiled normal equations of the sub-pixel fit (:class:`._subpixel.MovingSpline`): one pass per block.

One Gauss-Newton iteration of a block needs, at every reference pixel ``p``, the cubic B-spline of the
moving tile and its gradient at ``p - s``, the bilinear confidence of the moving tile there, and the
residual ``ref(p) - g·mov(p - s) - o``; all that is summed into a 4 x 4 system. As numpy array passes
that was ~40 sweeps over (blocks, rows, cols) float32 arrays and ~85 ns per pixel (most of a pair
task's time); here one loop visits each pixel once (twice for the final linearisation) and keeps
nothing per pixel (float64 sums).

Because a block's shift is the same for all its pixels, the spline taps are separable: per row, a
4-tap pass along y of the coefficients (value and derivative), then 4-tap passes along x.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["N_STATS", "normal_equations"]

_Array = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]
_Taps = tuple[float, float, float, float]
#: Reassociation lets the compiler vectorise the sums (rounding-level differences; NaN semantics kept).
_FAST: set[str] = {"reassoc", "contract"}

#: Columns of the per-block statistics: Σw, Σw r², Σw ref, Σw mov, Σw ref², Σw mov², Σw ref·mov,
#: Σw·row, Σw·col (block coordinates) and the number of pixels of nonzero weight.
N_STATS = 10


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _row_taps(coef: _F32, r0: int, c0: int, wy: _Taps, dwy: _Taps, ay: _Array, day: _Array) -> None:
    """Along y: the spline (``ay``) and its y derivative (``day``) of rows ``r0..r0+3`` from column ``c0``."""
    for k in range(ay.size):
        c = c0 + k
        v0, v1, v2, v3 = coef[r0, c], coef[r0 + 1, c], coef[r0 + 2, c], coef[r0 + 3, c]
        ay[k] = wy[0] * v0 + wy[1] * v1 + wy[2] * v2 + wy[3] * v3
        day[k] = dwy[0] * v0 + dwy[1] * v1 + dwy[2] * v2 + dwy[3] * v3


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _row_sums(
    ay: _Array,
    day: _Array,
    ly: _Array,
    ref: _Array,
    ref_w: _Array,
    row: int,
    col: int,
    wx: _Taps,
    dwx: _Taps,
    tx: float,
    g: float,
    o: float,
    i: float,
    final: bool,
    acc: _Array,
) -> None:
    """Along x, then the normal equations' sums of ``ref[row, col:]`` (``acc``: 15 sums, then 6 of ``final``)."""
    ux = 1.0 - tx
    h00 = h01 = h02 = h03 = h11 = h12 = h13 = h22 = h23 = g0 = g1 = g2 = g3 = sw = nnz = 0.0
    for j in range(ly.size - 1):
        w = ref_w[row, col + j] * (ux * ly[j] + tx * ly[j + 1])
        a0, a1, a2, a3 = ay[j], ay[j + 1], ay[j + 2], ay[j + 3]
        v = wx[0] * a0 + wx[1] * a1 + wx[2] * a2 + wx[3] * a3
        gx = dwx[0] * a0 + dwx[1] * a1 + dwx[2] * a2 + dwx[3] * a3
        gy = wx[0] * day[j] + wx[1] * day[j + 1] + wx[2] * day[j + 2] + wx[3] * day[j + 3]
        r = ref[row, col + j] - g * v - o
        # Jacobian of r: (g gy, g gx, -v, -1); the gain factors are applied after the sums
        wgy, wgx, wv = w * gy, w * gx, w * v
        h00 += wgy * gy
        h01 += wgy * gx
        h02 += wgy * v
        h03 += wgy
        h11 += wgx * gx
        h12 += wgx * v
        h13 += wgx
        h22 += wv * v
        h23 += wv
        g0 += wgy * r
        g1 += wgx * r
        g2 += wv * r
        g3 += w * r
        sw += w
        nnz += 1.0 if w != 0 else 0.0
    for k, val in enumerate((h00, h01, h02, h03, h11, h12, h13, h22, h23, g0, g1, g2, g3, sw, nnz)):
        acc[k] += val
    if not final:
        return
    # what only the estimate needs (its uncertainty, NCC and centre): a second, cheaper pass
    srr = sa = saa = sab = sj = 0.0
    for j in range(ly.size - 1):
        w = ref_w[row, col + j] * (ux * ly[j] + tx * ly[j + 1])
        v = wx[0] * ay[j] + wx[1] * ay[j + 1] + wx[2] * ay[j + 2] + wx[3] * ay[j + 3]
        a = ref[row, col + j]
        r = a - g * v - o
        srr += w * r * r
        sa += w * a
        saa += w * a * a
        sab += w * a * v
        sj += w * j
    acc[15] += srr
    acc[16] += sa
    acc[17] += saa
    acc[18] += sab
    acc[19] += sj
    acc[20] += i * sw


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _kernel(
    coef: _F32,
    lin: _F32,
    ref: _Array,
    ref_w: _Array,
    boxes: npt.NDArray[np.int64],
    first: _Array,
    gain: _Array,
    offset: _Array,
    tile_shape: npt.NDArray[np.int64],
    window_origin: npt.NDArray[np.int64],
    final: bool,
    sums: _Array,
) -> None:
    """Each block's sums (:func:`_row_sums`, columns counted from the first inside the tile, then that column)."""
    for b in range(boxes.shape[0]):
        acc = sums[b]
        ry0, ry1, rx0, rx1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        ny, nx = ry1 - ry0, rx1 - rx0
        fy, fx = first[b, 0], first[b, 1]
        iy, ix = int(np.floor(fy)), int(np.floor(fx))
        ty, tx = fy - iy, fx - ix
        # cubic B-spline taps (value, derivative) in y and x
        uy, ux = 1.0 - ty, 1.0 - tx
        wy = (uy**3 / 6, (3 * ty**3 - 6 * ty**2 + 4) / 6, (-3 * ty**3 + 3 * ty**2 + 3 * ty + 1) / 6, ty**3 / 6)
        dwy = (-(uy**2) / 2, (3 * ty**2 - 4 * ty) / 2, (-3 * ty**2 + 2 * ty + 1) / 2, ty**2 / 2)
        wx = (ux**3 / 6, (3 * tx**3 - 6 * tx**2 + 4) / 6, (-3 * tx**3 + 3 * tx**2 + 3 * tx + 1) / 6, tx**3 / 6)
        dwx = (-(ux**2) / 2, (3 * tx**2 - 4 * tx) / 2, (-3 * tx**2 + 2 * tx + 1) / 2, tx**2 / 2)
        # partners outside the tile have no weight: the columns that stay inside, as a range
        jlo = max(0, int(np.ceil(-(fx + window_origin[1]))))
        jhi = min(nx, int(np.floor(tile_shape[1] - 1 - (fx + window_origin[1]))) + 1)
        acc[21] = jlo
        if jhi > jlo:
            ay, day, ly = np.empty(jhi - jlo + 3), np.empty(jhi - jlo + 3), np.empty(jhi - jlo + 1)
            for i in range(ny):
                qy = fy + window_origin[0] + i  # tile row of the samples
                if qy < 0 or qy > tile_shape[0] - 1:
                    continue
                _row_taps(coef, iy - 1 + i, ix - 1 + jlo, wy, dwy, ay, day)
                for k in range(ly.size):
                    ly[k] = uy * lin[iy + i, ix + jlo + k] + ty * lin[iy + i + 1, ix + jlo + k]
                _row_sums(
                    ay,
                    day,
                    ly,
                    ref,
                    ref_w,
                    ry0 + i,
                    rx0 + jlo,
                    wx,
                    dwx,
                    tx,
                    gain[b],
                    offset[b],
                    float(i),
                    final,
                    acc,
                )


def normal_equations(
    coef: npt.NDArray[np.float32],
    lin: npt.NDArray[np.float32],
    ref: _Array,
    ref_w: _Array,
    boxes: npt.NDArray[np.int64],
    first: _Array,
    gain: _Array,
    offset: _Array,
    tile_shape: tuple[int, int],
    window_origin: tuple[int, int],
    *,
    final: bool = True,
) -> tuple[_Array, _Array, _Array]:
    """Gauss-Newton Hessian (n, 4, 4), gradient (n, 4) and statistics (n, :data:`N_STATS`) of each block.

    Block ``b`` is the reference pixels ``ref[boxes[b, 0]:boxes[b, 1], boxes[b, 2]:boxes[b, 3]]``; its
    first pixel's partner lies at ``first[b]`` in the coefficient window ``coef`` (whose pixel (0, 0)
    is tile pixel ``window_origin``), ``lin`` is the moving tile's confidence over the same window. A
    pixel's weight is ``ref_w`` times the bilinear confidence at its partner, zero where the partner
    leaves the tile (``tile_shape``). Parameters are (shift y, shift x, gain, offset); residual
    ``ref - gain·mov - offset``. Every block must lie inside the window with the spline's margins.
    Without ``final`` (an iteration, not the final linearisation) only Σw, Σw mov, Σw mov² and the
    pixel count of the statistics are filled (the rest is zero): the sums only the estimate needs cost
    a third of the pass.
    """
    n = len(boxes)
    sums = np.zeros((n, 22))
    _kernel(
        np.ascontiguousarray(coef, np.float32),
        np.ascontiguousarray(lin, np.float32),
        np.ascontiguousarray(ref, np.float64),
        np.ascontiguousarray(ref_w, np.float64),
        np.ascontiguousarray(boxes, np.int64),
        np.ascontiguousarray(first, np.float64),
        np.ascontiguousarray(gain, np.float64),
        np.ascontiguousarray(offset, np.float64),
        np.asarray(tile_shape, np.int64),
        np.asarray(window_origin, np.int64),
        final,
        sums,
    )
    g = np.asarray(gain, np.float64)
    h00, h01, h02, h03, h11, h12, h13, h22, h23, g0, g1, g2, g3, sw, nnz = sums[:, :15].T
    # the Jacobian's gain factors, applied to the sums
    upper = [g * g * h00, g * g * h01, -g * h02, -g * h03, g * g * h11, -g * h12, -g * h13, h22, h23, sw]
    hess = np.zeros((n, 4, 4))
    iu = np.triu_indices(4)
    hess[:, iu[0], iu[1]] = np.stack(upper, axis=1)
    hess[:, iu[1], iu[0]] = hess[:, iu[0], iu[1]]
    grad = np.stack([g * g0, g * g1, -g2, -g3], axis=1)
    srr, sa, saa, sab, sj, si, jlo = sums[:, 15:].T
    stats = np.stack([sw, srr, sa, h23, saa, h22, sab, si, sj + jlo * sw, nnz], axis=1)
    return hess, grad, stats
