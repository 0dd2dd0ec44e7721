"""Global tile positions (and the shared distortion) from pairwise matches.

Every correspondence ``(p_a, p_b)`` between tiles ``a`` and ``b`` says that
both detector points see the same scene point::

    P_a + p_a + D(p_a) = P_b + p_b + D(p_b)

with ``P`` the tile's top-left position and ``D`` the distortion of
:mod:`.distortion`, which is linear in its four coefficients. All
correspondences of all slices, plus weak priors tying each ``P`` to the
recorded stage position, form one weighted sparse linear least-squares
problem in the positions and (optionally) the distortion coefficients.
Inconsistent pairs are rejected iteratively from their residuals.

The magnification terms are only fixed by the stage priors (they trade off
against the tile spacing), the cubic terms by how the local shift bends
along each seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse import linalg as splinalg

from .distortion import DistortionModel
from .overlap import PairMatch

__all__ = ["PositionSolution", "distortion_design", "solve_positions"]

_PARAMS = ("mag_y", "k_y", "mag_x", "k_x")


@dataclass(frozen=True)
class PositionSolution:
    """Result of :func:`solve_positions`.

    Attributes
    ----------
    positions : ndarray (T, 2)
        Top-left (y, x) of each undistorted tile, in the stage pixel frame.
    distortion : DistortionModel
        Fitted (or the given, fixed) distortion.
    pairs : pandas.DataFrame
        One row per pair: reference, moving, ok, used, n_points, ncc,
        measured/predicted shift and residual (dy, dx, norm) in px.
    rejected : int
        Pairs dropped as inconsistent.
    constrained : ndarray (T,) of bool
        Tiles with at least one used pair; the others (e.g. tiles of empty
        agarose) sit at their stage prior, as uncertain as the stage.
    """

    positions: np.ndarray
    distortion: DistortionModel
    pairs: pd.DataFrame
    rejected: int
    constrained: np.ndarray | None = None

    def residual_stats(self) -> dict[str, float | int]:
        """Median / p95 / max of residual norms over used pairs (px)."""
        used = self.pairs[self.pairs["used"]]
        r = used["residual"].to_numpy(float)
        if r.size == 0:
            return {"n_pairs": int(len(self.pairs)), "n_used": 0, "rejected": self.rejected}
        return {"n_pairs": int(len(self.pairs)), "n_used": int(len(used)), "rejected": self.rejected,
                "median_px": float(np.median(r)), "p95_px": float(np.percentile(r, 95)), "max_px": float(r.max())}


def distortion_design(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``D_y`` and ``D_x`` as linear functions of (mag_y, k_y, mag_x, k_x).

    Returns
    -------
    gy, gx : ndarray (K, 4)
        ``D_y(p) = gy @ c`` and ``D_x(p) = gx @ c`` with ``c`` in ``_PARAMS`` order.
    """
    h, w = shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = points[:, 0], points[:, 1]
    u, v = (x - cx) / cx, (y - cy) / cy
    r2 = u * u + v * v
    z = np.zeros_like(u)
    gy = np.stack([cy * v, cy * v * r2, z, z], axis=1)
    gx = np.stack([z, z, cx * u, cx * u * r2], axis=1)
    return gy, gx


def solve_positions(matches: Sequence[PairMatch], stage_px: np.ndarray, *, tile_shape: tuple[int, int],
                    estimate_distortion: bool = True, distortion: DistortionModel | None = None,
                    fit_magnification: bool = True, prior_sigma_px: float = 5.0, distortion_prior: float = 0.05,
                    reject_px: float = 1.0, reject_nsigma: float = 4.0, max_rounds: int = 10) -> PositionSolution:
    """Weighted least-squares tile positions with iterative outlier rejection.

    Parameters
    ----------
    matches : sequence of PairMatch
        Pairwise results; tile indices refer to rows of ``stage_px``.
    stage_px : ndarray (T, 2)
        Recorded stage (y, x) positions in px: weak priors and the gauge.
    tile_shape : (int, int)
        Detector tile shape (the distortion model is in tile coordinates).
    estimate_distortion : bool
        Fit the distortion coefficients jointly with the positions; else
        keep ``distortion`` (identity if None) fixed.
    distortion : DistortionModel, optional
        Fixed model, or the model whose magnification is kept when
        ``fit_magnification`` is False.
    fit_magnification : bool
        Include mag_y/mag_x among the fitted terms (they are constrained only
        by the stage spacing, so with few tiles it may be wiser to fix them).
    prior_sigma_px : float
        Standard deviation of the stage positions' error.
    distortion_prior : float
        Standard deviation of the zero-mean prior on each coefficient
        (keeps the system regular when seams carry no signal).
    reject_px, reject_nsigma : float
        A pair is rejected when its residual exceeds
        ``max(reject_px, reject_nsigma * robust sigma)``.
    max_rounds : int
        Rejection rounds.

    Returns
    -------
    PositionSolution

    Raises
    ------
    ValueError
        If a match names a tile outside ``stage_px``.
    """
    stage = np.asarray(stage_px, np.float64)
    n_tiles = stage.shape[0]
    base = distortion or DistortionModel()
    matches = list(matches)
    for m in matches:
        if not (0 <= m.reference < n_tiles and 0 <= m.moving < n_tiles):
            raise ValueError(f"pair ({m.reference}, {m.moving}) outside the {n_tiles} tiles of stage_px")
    fit = [p for p in _PARAMS if estimate_distortion and (fit_magnification or not p.startswith("mag"))]
    fixed = {p: getattr(base, p) for p in _PARAMS if p not in fit}
    active = np.array([m.ok and len(m.point_weights) > 0 for m in matches], bool)
    point_keep = [np.ones(len(m.point_weights), bool) for m in matches]
    rejected = 0
    for _ in range(max_rounds + 1):
        pos, coef, res = _solve(matches, active, point_keep, stage, tile_shape, fit, fixed, prior_sigma_px,
                                distortion_prior)
        norms = np.array([np.hypot(*r[k].mean(axis=0)) if a and k.any() else np.nan
                          for r, k, a in zip(res, point_keep, active)])
        if np.isfinite(norms).sum() < 2:
            break
        # Scale from the best quarter of pairs (Rayleigh q25 = 0.758 sigma): an outlier in a small
        # grid spreads its error over all pairs of its loops and would inflate a median.
        thr = max(reject_px, reject_nsigma * float(np.nanpercentile(norms, 25)) / 0.758)
        worst = int(np.nanargmax(norms))
        if norms[worst] > thr:
            # One pair per round: a gross outlier spreads its error over its loops.
            active[worst] = False
            rejected += 1
            continue
        changed = False
        for i, r in enumerate(res):
            if not active[i]:
                continue
            bad_pts = (np.hypot(r[:, 0], r[:, 1]) > thr) & point_keep[i]
            if bad_pts.any() and bad_pts.sum() < point_keep[i].sum():
                point_keep[i] = point_keep[i] & ~bad_pts
                changed = True
        if not changed:
            break
    model = DistortionModel(**{**fixed, **dict(zip(fit, coef))})
    rows = []
    for i, m in enumerate(matches):
        r, keep_i = res[i], point_keep[i]
        meas = np.asarray(m.shift, float)
        rows.append({"reference": m.reference, "moving": m.moving, "ok": bool(m.ok), "used": bool(active[i]),
                     "n_points": int(point_keep[i].sum()) if active[i] else 0, "ncc": float(m.ncc),
                     "expected_dy": m.expected[0], "expected_dx": m.expected[1], "measured_dy": meas[0],
                     "measured_dx": meas[1], "solved_dy": float(pos[m.moving, 0] - pos[m.reference, 0]),
                     "solved_dx": float(pos[m.moving, 1] - pos[m.reference, 1]),
                     "residual_dy": float(r[keep_i, 0].mean()) if keep_i.any() else np.nan,
                     "residual_dx": float(r[keep_i, 1].mean()) if keep_i.any() else np.nan,
                     "residual": float(np.hypot(*r[keep_i].mean(axis=0))) if keep_i.any() else np.nan})
    constrained = np.zeros(n_tiles, bool)
    for i, m in enumerate(matches):
        if active[i]:
            constrained[[m.reference, m.moving]] = True
    return PositionSolution(pos, model, pd.DataFrame(rows), rejected, constrained)


def _solve(matches, active, point_keep, stage, tile_shape, fit, fixed, prior_sigma, dist_prior):
    n_tiles = stage.shape[0]
    n_fit = len(fit)
    n_unk = 2 * n_tiles + n_fit
    col_of = {p: 2 * n_tiles + i for i, p in enumerate(fit)}
    fixed_vec = np.array([fixed.get(p, 0.0) for p in _PARAMS])  # zeros at fitted terms
    rows, cols, vals, rhs, wts = [], [], [], [], []
    eq = 0
    for i, m in enumerate(matches):
        if not active[i]:
            continue
        keep = point_keep[i]
        pa, pb, w = m.points_ref[keep], m.points_mov[keep], m.point_weights[keep]
        gya, gxa = distortion_design(pa, tile_shape)
        gyb, gxb = distortion_design(pb, tile_shape)
        for axis, (ga, gb) in enumerate(((gya, gyb), (gxa, gxb))):
            diff = gb - ga  # D(pb) - D(pa)
            target = pa[:, axis] - pb[:, axis] - diff @ fixed_vec
            for k in range(len(w)):
                rows += [eq, eq]
                cols += [2 * m.moving + axis, 2 * m.reference + axis]
                vals += [1.0, -1.0]
                for p, c in col_of.items():
                    d = diff[k, _PARAMS.index(p)]
                    if d != 0.0:
                        rows.append(eq)
                        cols.append(c)
                        vals.append(d)
                rhs.append(target[k])
                wts.append(w[k])
                eq += 1
    for t in range(n_tiles):
        for axis in range(2):
            rows.append(eq)
            cols.append(2 * t + axis)
            vals.append(1.0)
            rhs.append(stage[t, axis])
            wts.append(1.0 / prior_sigma**2)
            eq += 1
    for c in col_of.values():
        rows.append(eq)
        cols.append(c)
        vals.append(1.0)
        rhs.append(0.0)
        wts.append(1.0 / dist_prior**2)
        eq += 1
    a = sparse.csr_matrix((vals, (rows, cols)), shape=(eq, n_unk))
    wv = np.asarray(wts)
    b = np.asarray(rhs)
    aw = a.multiply(wv[:, None]).tocsr()
    normal = (a.T @ aw).tocsc()
    sol = splinalg.spsolve(normal, a.T @ (wv * b))
    sol = np.atleast_1d(sol)
    pos = sol[: 2 * n_tiles].reshape(n_tiles, 2)
    coef = sol[2 * n_tiles:]
    # Residuals per pair over *all* of its points (measured minus model), in px.
    full = fixed_vec.copy()
    for p, val in zip(fit, coef):
        full[_PARAMS.index(p)] = val
    res = []
    for m in matches:
        if not len(m.point_weights):
            res.append(np.zeros((0, 2)))
            continue
        gya, gxa = distortion_design(m.points_ref, tile_shape)
        gyb, gxb = distortion_design(m.points_mov, tile_shape)
        pred_y = pos[m.moving, 0] - pos[m.reference, 0] + (gyb - gya) @ full
        pred_x = pos[m.moving, 1] - pos[m.reference, 1] + (gxb - gxa) @ full
        meas = m.points_ref - m.points_mov
        res.append(np.stack([meas[:, 0] - pred_y, meas[:, 1] - pred_x], axis=1))
    return pos, coef, res
