"""2-D affine transforms of (x, y) points: fits with uncertainties, exact leave-one-out residuals, robust fits.

Convention: an affine is a (2, 3) array ``A`` mapping a point (x, y) (x along columns, y along
rows) to ``A[:, :2] @ (x, y) + A[:, 2]``; :func:`compose_affine` chains them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "AffineFit",
    "apply_affine",
    "compose_affine",
    "decompose_affine",
    "fit_affine",
    "invert_affine",
    "robust_affine",
    "similarity_from_pairs",
]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class AffineFit:
    """A least-squares affine fit.

    Attributes
    ----------
    affine : ndarray (2, 3)
    sigma : ndarray (2, 3)
        1-sigma uncertainty of every parameter (from the residual scatter and the design).
    inliers : ndarray of bool (N,)
        Points kept by the fit.
    residual_px : ndarray (N,)
        Distance between mapped source and target, every point.
    loo_residual_px : ndarray (N,)
        Residual of each inlier when the fit is made without it (exact leave-one-out), NaN for outliers.
    """

    affine: Array
    sigma: Array
    inliers: NDArray[np.bool_]
    residual_px: Array
    loo_residual_px: Array


def apply_affine(affine: Array, xy: Array) -> Array:
    """Map (N, 2) points (x, y) by a (2, 3) affine."""
    a = np.asarray(affine, np.float64)
    p = np.asarray(xy, np.float64).reshape(-1, 2)
    out: Array = p @ a[:, :2].T + a[:, 2]
    return out


def compose_affine(outer: Array, inner: Array) -> Array:
    """The affine ``outer(inner(p))``."""
    o, i = np.asarray(outer, np.float64), np.asarray(inner, np.float64)
    return np.hstack([o[:, :2] @ i[:, :2], (o[:, :2] @ i[:, 2] + o[:, 2])[:, None]])


def invert_affine(affine: Array) -> Array:
    """The inverse map of a (2, 3) affine."""
    a = np.asarray(affine, np.float64)
    m = np.linalg.inv(a[:, :2])
    return np.hstack([m, (-m @ a[:, 2])[:, None]])


def decompose_affine(affine: Array) -> tuple[bool, float, float]:
    """``(flip, rotation_deg, scale)`` of an affine: flip when its determinant is negative.

    A flipped map is read as a left/right flip of the source (x -> -x) followed by a rotation
    (an up/down flip is that plus 180 degrees); rotation in [-180, 180), counter-clockwise in (x, y).
    """
    m = np.asarray(affine, np.float64)[:, :2]
    flip = bool(np.linalg.det(m) < 0)
    if flip:
        m = m @ np.diag([-1.0, 1.0])
    rot = float(np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))
    scale = float(np.sqrt(abs(np.linalg.det(m))))
    return flip, (rot + 180.0) % 360.0 - 180.0, scale


def _design(src: Array) -> Array:
    return np.column_stack([src, np.ones(len(src))])


def fit_affine(src: Array, dst: Array, weights: Array | None = None) -> AffineFit:
    """Weighted least-squares affine ``dst ~ A(src)`` with parameter sigmas and leave-one-out residuals.

    The same design serves both output coordinates, so the hat matrix ``H = X (X'WX)^-1 X'W`` gives
    the exact leave-one-out residual ``r_i / (1 - h_ii)`` without refitting.

    Raises
    ------
    ValueError
        Fewer than 3 points of non-zero weight, or all on one line.
    """
    src, dst = np.asarray(src, np.float64).reshape(-1, 2), np.asarray(dst, np.float64).reshape(-1, 2)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    use = w > 0
    if use.sum() < 3:
        raise ValueError(f"an affine needs 3 points, got {int(use.sum())}")
    x = _design(src)
    xw = x[use] * w[use, None]
    normal = x[use].T @ xw
    if np.linalg.cond(normal) > 1e12:
        raise ValueError("points are collinear: the affine is not determined")
    inv = np.linalg.inv(normal)
    coef = inv @ (xw.T @ dst[use])  # (3, 2)
    affine = coef.T.copy()
    resid_vec = dst - x @ coef
    resid = np.hypot(resid_vec[:, 0], resid_vec[:, 1])
    n, k = int(use.sum()), 3
    dof = max(n - k, 1)
    var = np.sum(w[use, None] * resid_vec[use] ** 2, axis=0) / dof  # per output coordinate
    sigma = np.sqrt(np.outer(var, np.diag(inv)))
    h = np.einsum("ij,jk,ik->i", x[use], inv, xw)
    loo = np.full(len(src), np.nan)
    loo[use] = resid[use] / np.maximum(1.0 - h, 1e-6)
    return AffineFit(affine=affine, sigma=sigma, inliers=use, residual_px=resid, loo_residual_px=loo)


def robust_affine(src: Array, dst: Array, *, clip: float = 4.0, floor_px: float = 0.3, max_iter: int = 10) -> AffineFit:
    """Iteratively reweighted affine: Tukey biweight on residuals scaled by their robust sigma.

    ``floor_px`` bounds the scale from below, so that near-perfect fits do not reject good points
    for sub-pixel noise. Points with zero final weight are the outliers.
    """
    w = np.ones(len(np.asarray(src).reshape(-1, 2)))
    fit = fit_affine(src, dst, w)
    for _ in range(max_iter):
        r = fit.residual_px
        s = max(1.4826 * float(np.median(r[w > 0])), floor_px)
        u = r / (clip * s)
        new = np.where(u < 1.0, (1.0 - u**2) ** 2, 0.0)
        if (new > 0).sum() < 3:
            break
        if np.allclose(new, w, atol=1e-4):
            break
        w = new
        fit = fit_affine(src, dst, w)
    # report plain least squares on the kept points: sigmas and LOO residuals of an unweighted fit
    return fit_affine(src, dst, (w > 0).astype(np.float64))


def similarity_from_pairs(src: Array, dst: Array, *, flip: bool) -> Array:
    """Batched similarity (rotation, scale, translation, optional x flip) from point pairs.

    Parameters
    ----------
    src, dst : ndarray (H, 2, 2)
        For each hypothesis, two source and two target points (x, y).
    flip : bool
        Whether the source is mirrored (x -> -x) before the rotation.

    Returns
    -------
    ndarray (H, 2, 3)
    """
    s = np.asarray(src, np.float64).copy()
    d = np.asarray(dst, np.float64)
    if flip:
        s[..., 0] = -s[..., 0]
    vs = (s[:, 1, 0] - s[:, 0, 0]) + 1j * (s[:, 1, 1] - s[:, 0, 1])
    vd = (d[:, 1, 0] - d[:, 0, 0]) + 1j * (d[:, 1, 1] - d[:, 0, 1])
    z = vd / np.where(np.abs(vs) > 0, vs, np.nan)
    a, b = z.real, z.imag
    m = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)  # (H, 2, 2)
    if flip:
        m = m * np.array([-1.0, 1.0])
    t = d[:, 0] - np.einsum("hij,hj->hi", m, np.asarray(src, np.float64)[:, 0])
    return np.concatenate([m, t[..., None]], axis=-1)
