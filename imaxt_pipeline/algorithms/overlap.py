"""Pairwise registration of neighbouring tiles over their overlap.

Convention: for a pair (reference ``a``, moving ``b``) the *shift* ``s`` is
such that detector pixel ``p`` of ``a`` shows the same scene as pixel
``p - s`` of ``b``; without distortion ``s = P_b - P_a``, the difference of
the tiles' top-left positions. With distortion the local shift varies over
the overlap, so :func:`match_pair` also returns point correspondences along
the overlap (one per block) from which :mod:`.positions` fits tile
positions and the distortion model together.

Steps: masked (confidence-weighted) normalised cross-correlation over all
integer shifts within ``max_shift`` of the stage prediction (FFT, Padfield
2012), then Gauss-Newton minimisation of the weighted intensity residual
``Σ w (a(p) - g b(p - s) - o)^2`` for sub-pixel shift, gain and offset, on
the whole overlap and then block by block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

__all__ = ["PairMatch", "ShiftEstimate", "adjacent_pairs", "masked_ncc_shift", "match_pair", "refine_shift"]


@dataclass(frozen=True)
class ShiftEstimate:
    """Sub-pixel shift of one region with its uncertainty and match quality."""

    shift: tuple[float, float]
    sigma: tuple[float, float]
    ncc: float
    n_pixels: int
    converged: bool

    def __bool__(self) -> bool:
        return self.converged


@dataclass(frozen=True)
class PairMatch:
    """Registration of tile ``moving`` against tile ``reference``.

    Attributes
    ----------
    reference, moving : int
        Tile indices (any global numbering the caller chooses).
    expected : (float, float)
        Shift predicted by the stage positions.
    shift : (float, float)
        Measured shift over the whole overlap (equal to ``expected`` when the
        pair failed).
    ncc : float
        Weighted normalised cross-correlation after alignment (quality).
    ok : bool
        Whether the pair carries information (enough signal and correlation).
    points_ref, points_mov : ndarray (K, 2)
        Corresponding (y, x) detector positions in the two tiles.
    point_weights : ndarray (K,)
        Inverse variance (1/px²) of each correspondence.
    """

    reference: int
    moving: int
    expected: tuple[float, float]
    shift: tuple[float, float]
    ncc: float
    ok: bool
    points_ref: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    points_mov: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __bool__(self) -> bool:
        return self.ok


def adjacent_pairs(rows: int, cols: int) -> list[tuple[int, int]]:
    """4-neighbour pairs ``(a, b)`` of a row-major grid, ``b`` right of or below ``a``."""
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be positive, got {rows}x{cols}")
    out = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                out.append((i, i + 1))
            if r + 1 < rows:
                out.append((i, i + cols))
    return out


def masked_ncc_shift(reference_image: np.ndarray, moving_image: np.ndarray, *, reference_mask: np.ndarray,
                     moving_mask: np.ndarray, max_shift: int, min_overlap: float = 0.5) -> tuple[tuple[int, int], float]:
    """Integer shift ``d`` maximising the masked NCC of ``ref(p)`` and ``mov(p - d)``.

    Parameters
    ----------
    reference_image, moving_image : ndarray (H, W)
        Same-shape images.
    reference_mask, moving_mask : ndarray (H, W)
        Non-negative weights (0 = ignore).
    max_shift : int
        Only ``|d_y|, |d_x| <= max_shift`` are considered.
    min_overlap : float
        Shifts whose overlapping weight is below this fraction of the best
        possible are ignored (tiny overlaps give spurious peaks).

    Returns
    -------
    shift : (int, int)
    ncc : float
        NCC at the peak (-1 if no admissible shift).

    References
    ----------
    D. Padfield, "Masked object registration in the Fourier domain",
    IEEE Trans. Image Process. 21 (2012) 2706-2718.
    """
    a = np.asarray(reference_image, np.float64)
    b = np.asarray(moving_image, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    ma = np.asarray(reference_mask, np.float64)
    mb = np.asarray(moving_mask, np.float64)
    h, w = a.shape
    shape = (sfft.next_fast_len(h + max_shift + 1), sfft.next_fast_len(w + max_shift + 1))
    fa = {k: sfft.rfft2(v, shape) for k, v in (("m", ma), ("a", ma * a), ("aa", ma * a * a))}
    fb = {k: np.conj(sfft.rfft2(v, shape)) for k, v in (("m", mb), ("b", mb * b), ("bb", mb * b * b))}

    def corr(x: str, y: str) -> np.ndarray:
        full = sfft.irfft2(fa[x] * fb[y], shape)
        idx_y = np.arange(-max_shift, max_shift + 1) % shape[0]
        idx_x = np.arange(-max_shift, max_shift + 1) % shape[1]
        return full[np.ix_(idx_y, idx_x)]

    n = corr("m", "m")
    sa, sb = corr("a", "m"), corr("m", "b")
    saa, sbb = corr("aa", "m"), corr("m", "bb")
    fab = sfft.irfft2(sfft.rfft2(ma * a, shape) * fb["b"], shape)
    sab = fab[np.ix_(np.arange(-max_shift, max_shift + 1) % shape[0], np.arange(-max_shift, max_shift + 1) % shape[1])]
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.maximum(n, 1e-9)
        num = sab - sa * sb / nn
        den = np.sqrt(np.maximum(saa - sa * sa / nn, 0) * np.maximum(sbb - sb * sb / nn, 0))
        ncc = np.where(den > 1e-12 * max(1.0, float(np.max(den))), num / den, -1.0)
    ncc[n < min_overlap * float(np.max(n))] = -1.0
    k = int(np.argmax(ncc))
    iy, ix = np.unravel_index(k, ncc.shape)
    return (int(iy) - max_shift, int(ix) - max_shift), float(ncc[iy, ix])


def refine_shift(reference_image: np.ndarray, moving_image: np.ndarray, shift: tuple[float, float], *,
                 reference_weights: np.ndarray | None = None, moving_weights: np.ndarray | None = None,
                 region: tuple[slice, slice] | None = None, iterations: int = 15, tol: float = 1e-3,
                 max_step: float = 3.0) -> ShiftEstimate:
    """Sub-pixel shift minimising ``Σ w (ref(p) - g·mov(p - s) - o)^2`` by Gauss-Newton.

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
    b = np.asarray(moving_image, np.float64)
    wa = np.ones_like(a) if reference_weights is None else np.asarray(reference_weights, np.float64)
    wb = np.ones_like(b) if moving_weights is None else np.asarray(moving_weights, np.float64)
    region = region or (slice(0, a.shape[0]), slice(0, a.shape[1]))
    ys = np.arange(a.shape[0])[region[0]]
    xs = np.arange(a.shape[1])[region[1]]
    py, px = np.meshgrid(ys.astype(np.float64), xs.astype(np.float64), indexing="ij")
    av = a[region].ravel()
    wav = wa[region].ravel()
    py, px = py.ravel(), px.ravel()
    s = np.array(shift, np.float64)
    # Only the part of ``b`` the search can reach is interpolated: crop it (with a spline margin).
    pad = int(np.ceil(max_step)) + 4
    if py.size == 0:
        return ShiftEstimate((float(s[0]), float(s[1])), (np.inf, np.inf), -1.0, 0, False)
    by0 = max(0, int(np.floor(py.min() - s[0])) - pad)
    by1 = min(b.shape[0], int(np.ceil(py.max() - s[0])) + pad + 1)
    bx0 = max(0, int(np.floor(px.min() - s[1])) - pad)
    bx1 = min(b.shape[1], int(np.ceil(px.max() - s[1])) + pad + 1)
    if by1 - by0 < 4 or bx1 - bx0 < 4:
        return ShiftEstimate((float(s[0]), float(s[1])), (np.inf, np.inf), -1.0, 0, False)
    bcrop, wb = b[by0:by1, bx0:bx1], wb[by0:by1, bx0:bx1]
    py, px = py - by0, px - bx0
    s_off = np.array([by0, bx0], np.float64)
    coef = ndi.spline_filter(bcrop, order=3, mode="mirror")
    b = bcrop
    start = s.copy()
    g, o = 1.0, 0.0
    fail = ShiftEstimate((float(s[0]), float(s[1])), (np.inf, np.inf), -1.0, 0, False)
    converged = False
    for _ in range(iterations):
        qy, qx = py - s[0], px - s[1]
        inside = (qy >= 0) & (qy <= b.shape[0] - 1) & (qx >= 0) & (qx <= b.shape[1] - 1)
        wbq = ndi.map_coordinates(wb, [qy, qx], order=1, mode="constant", cval=0.0)
        wt = wav * wbq * inside
        sel = wt > 0
        if sel.sum() < 32:
            return fail
        qy, qx, wt, av_s = qy[sel], qx[sel], wt[sel], av[sel]
        bq = ndi.map_coordinates(coef, [qy, qx], order=3, mode="mirror", prefilter=False)
        gy = 0.5 * (ndi.map_coordinates(coef, [qy + 0.5, qx], order=3, mode="mirror", prefilter=False)
                    - ndi.map_coordinates(coef, [qy - 0.5, qx], order=3, mode="mirror", prefilter=False)) * 2
        gx = 0.5 * (ndi.map_coordinates(coef, [qy, qx + 0.5], order=3, mode="mirror", prefilter=False)
                    - ndi.map_coordinates(coef, [qy, qx - 0.5], order=3, mode="mirror", prefilter=False)) * 2
        r = av_s - g * bq - o
        # d r / d s = +g ∇b(q) (q = p - s); d r / d g = -b; d r / d o = -1
        jac = np.stack([g * gy, g * gx, -bq, -np.ones_like(bq)], axis=1)
        jw = jac * wt[:, None]
        hess = jac.T @ jw
        grad = jw.T @ r
        try:
            step = -np.linalg.solve(hess + 1e-9 * np.eye(4) * np.trace(hess), grad)
        except np.linalg.LinAlgError:
            return fail
        s += step[:2]
        g += step[2]
        o += step[3]
        if not np.all(np.isfinite(s)) or np.max(np.abs(s - start)) > max_step or g <= 0:
            return fail
        if np.max(np.abs(step[:2])) < tol:
            converged = True
            break
    # Uncertainty from the final linearisation.
    dof = max(float(wt.sum()) - 4.0, 1.0)
    sigma2 = float(np.sum(wt * r * r)) / dof
    try:
        cov = np.linalg.inv(hess) * sigma2
        sig = np.sqrt(np.maximum(np.diag(cov)[:2], 0.0))
    except np.linalg.LinAlgError:
        return fail
    am = np.sum(wt * av_s) / wt.sum()
    bm = np.sum(wt * bq) / wt.sum()
    cov_ab = np.sum(wt * (av_s - am) * (bq - bm))
    den = np.sqrt(np.sum(wt * (av_s - am) ** 2) * np.sum(wt * (bq - bm) ** 2))
    ncc = float(cov_ab / den) if den > 0 else -1.0
    return ShiftEstimate((float(s[0]), float(s[1])), (float(sig[0]), float(sig[1])), ncc, int(len(r)),
                         converged and bool(np.all(np.isfinite(sig))))


def match_pair(reference_tile: np.ndarray, moving_tile: np.ndarray, expected_shift: tuple[float, float], *,
               reference_weights: np.ndarray | None = None, moving_weights: np.ndarray | None = None,
               reference: int = 0, moving: int = 1, max_shift: int = 15, block_size: int = 32,
               min_ncc: float = 0.5, smooth: float = 1.0, sigma_floor: float = 0.05) -> PairMatch:
    """Register two neighbouring tiles and return point correspondences.

    Parameters
    ----------
    reference_tile, moving_tile : ndarray (H, W)
        Flat-field corrected tiles (sum of channels, say).
    expected_shift : (float, float)
        Stage prediction of the shift (``stage_moving - stage_reference``).
    reference_weights, moving_weights : ndarray (H, W), optional
        Confidence maps (0 on trimmed borders).
    reference, moving : int
        Indices stored in the result.
    max_shift : int
        Search radius around the prediction in px (stage error + distortion).
    block_size : int
        Length of the overlap blocks along the seam that give one
        correspondence each.
    min_ncc : float
        Pairs (and blocks) whose NCC after alignment is lower carry no
        information (empty agarose, noise) and are marked not ok.
    smooth : float
        Gaussian sigma applied to both tiles before matching (noise).
    sigma_floor : float
        Added in quadrature to each block's uncertainty (interpolation,
        model error) before weights are formed.

    Returns
    -------
    PairMatch
        ``ok`` is False (and ``shift == expected``) when no reliable match exists.
    """
    a = np.asarray(reference_tile, np.float64)
    b = np.asarray(moving_tile, np.float64)
    wa = np.ones_like(a) if reference_weights is None else np.asarray(reference_weights, np.float64)
    wb = np.ones_like(b) if moving_weights is None else np.asarray(moving_weights, np.float64)
    if smooth > 0:
        a, b = ndi.gaussian_filter(a, smooth), ndi.gaussian_filter(b, smooth)
    expected = (float(expected_shift[0]), float(expected_shift[1]))
    failed = PairMatch(reference, moving, expected, expected, -1.0, False)
    e = np.rint(expected).astype(int)
    h, w = a.shape
    # Reference box = predicted overlap grown by max_shift, clipped to the tile.
    y0, y1 = max(0, e[0] - max_shift), min(h, h + e[0] + max_shift)
    x0, x1 = max(0, e[1] - max_shift), min(w, w + e[1] + max_shift)
    if y1 - y0 < 8 or x1 - x0 < 8:
        return failed
    box = (slice(y0, y1), slice(x0, x1))
    ca, cwa = a[box], wa[box]
    cb, cwb = _crop(b, y0 - e[0], y1 - e[0], x0 - e[1], x1 - e[1]), _crop(wb, y0 - e[0], y1 - e[0], x0 - e[1], x1 - e[1])
    d, ncc0 = masked_ncc_shift(ca, cb, reference_mask=cwa, moving_mask=cwb, max_shift=max_shift)
    if ncc0 < min_ncc:
        return PairMatch(reference, moving, expected, expected, ncc0, False)
    s0 = (float(e[0] + d[0]), float(e[1] + d[1]))
    # The integer NCC peak can sit a few px off when one object (a bead) dominates the overlap:
    # allow the refinement to travel, and fall back to the stage prediction as a start.
    overall = refine_shift(a, b, s0, reference_weights=wa, moving_weights=wb, region=_overlap_box(a.shape, b.shape, s0),
                           max_step=6.0)
    if not overall:
        overall = refine_shift(a, b, expected, reference_weights=wa, moving_weights=wb,
                               region=_overlap_box(a.shape, b.shape, expected), max_step=float(max_shift))
    if not overall or overall.ncc < min_ncc:
        return PairMatch(reference, moving, expected, expected, max(ncc0, overall.ncc), False)
    pref, pmov, pw = [], [], []
    box = _overlap_box(a.shape, b.shape, overall.shift)
    # A grid of blocks over the overlap (long seams: one row of blocks; wide overlaps: several),
    # each small enough that the distortion is nearly linear across it.
    edges = [np.linspace(sl.start, sl.stop, max(1, int(round((sl.stop - sl.start) / block_size))) + 1).astype(int)
             for sl in box]
    regions = [(slice(y0, y1), slice(x0, x1)) for y0, y1 in zip(edges[0][:-1], edges[0][1:])
               for x0, x1 in zip(edges[1][:-1], edges[1][1:])]
    for reg in regions:
        est = refine_shift(a, b, overall.shift, reference_weights=wa, moving_weights=wb, region=reg, max_step=4.0)
        if not est or est.ncc < min_ncc:
            continue
        ww = wa[reg]
        yy, xx = np.mgrid[reg]
        tot = ww.sum()
        if tot <= 0:
            continue
        cy, cx = float((yy * ww).sum() / tot), float((xx * ww).sum() / tot)
        var = max(est.sigma) ** 2 + sigma_floor**2
        pref.append((cy, cx))
        pmov.append((cy - est.shift[0], cx - est.shift[1]))
        pw.append(1.0 / var)
    if not pref:
        return PairMatch(reference, moving, expected, expected, overall.ncc, False)
    return PairMatch(reference, moving, expected, overall.shift, overall.ncc, True, np.array(pref), np.array(pmov),
                     np.array(pw))


def _overlap_box(shape_a: tuple[int, int], shape_b: tuple[int, int], shift: tuple[float, float],
                 inset: int = 2) -> tuple[slice, slice]:
    """Pixels ``p`` of a whose partner ``p - shift`` lies inside b (minus an inset)."""
    sy, sx = shift
    y0 = int(np.ceil(max(0.0, sy) + inset))
    y1 = int(np.floor(min(shape_a[0], shape_b[0] + sy) - inset))
    x0 = int(np.ceil(max(0.0, sx) + inset))
    x1 = int(np.floor(min(shape_a[1], shape_b[1] + sx) - inset))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _crop(image: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` with zeros where the window leaves the image."""
    out = np.zeros((y1 - y0, x1 - x0), image.dtype)
    h, w = image.shape
    sy0, sy1, sx0, sx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if sy0 < sy1 and sx0 < sx1:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out
