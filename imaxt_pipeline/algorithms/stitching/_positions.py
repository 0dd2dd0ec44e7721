"""Global tile positions (and the shared distortion) from pairwise matches.

Every correspondence ``(p_a, p_b)`` between tiles ``a`` and ``b`` says that
both detector points see the same scene point::

    P_a + p_a + D(p_a) = P_b + p_b + D(p_b)

with ``P`` the tile's top-left position and ``D`` the distortion of
:class:`..optics.DistortionModel`. All correspondences of all slices, plus weak priors tying
each ``P`` to the recorded stage position, form one weighted sparse
least-squares problem in the positions and (optionally) the distortion
coefficients. Inconsistent pairs are rejected iteratively from their
residuals.

The magnification terms trade off exactly against the tile spacing. Per axis,
with ``P = c + (1 + mag) Q`` and ``k = (1 + mag) k~``, the equation divided
by ``1 + mag`` reads ``Q_a + p_a + k~ g(p_a) = Q_b + p_b + k~ g(p_b)``: free
of ``mag``. So the overlaps fix ``Q`` and ``k~`` in detector pixels (where the
measurement errors live) and only the stage priors ``c + (1 + mag) Q = stage``
fix ``mag``; that bilinear term is solved by Gauss-Newton. Writing the
residuals in the mosaic frame instead (``1 + mag`` times the detector ones)
lets a fit shrink the world to shrink its residuals, which biases ``mag`` by
about ``-chi2_data / (chi2_data + I_stage)``: several per cent on a 3 x 3 grid
with hundreds of precise points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import linalg as splinalg

from ..optics import DistortionModel
from ._overlap import PairMatch
from ._uncertainty import TileFlag, components, flag_tiles, relative_sigma, stage_placement, unverified_tiles

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PositionSolution", "solve_positions"]

_Array = npt.NDArray[np.float64]
_Mask = npt.NDArray[np.bool_]


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
    distortion_sigma : dict of str to float
        1-sigma uncertainty of each coefficient (0 for fixed terms). The point
        weights are rescaled by the data's reduced chi-square when it exceeds
        1; the stage error is taken as stated (``prior_sigma_px``).
    position_sigma : ndarray (T,)
        1-sigma (px, larger axis) of each tile's position relative to its
        section (:mod:`._uncertainty`); for an unconstrained tile the stage
        scatter measured on the section's constrained tiles.
    flags : tuple of TileFlag
        Tiles placed by the stage, or weakly constrained (3-sigma above
        ``WEAK_3SIGMA_PX``); :func:`describe_flags` words them.
    """

    positions: _Array
    distortion: DistortionModel
    pairs: pd.DataFrame
    rejected: int
    constrained: _Mask
    distortion_sigma: dict[str, float]
    position_sigma: _Array = field(default_factory=lambda: np.zeros(0))
    flags: tuple[TileFlag, ...] = ()

    @property
    def flagged(self) -> _Mask:
        """(T,) True for every tile in :attr:`flags`."""
        out = np.zeros(len(self.positions), bool)
        out[[f.tile for f in self.flags]] = True
        return out

    def residual_stats(self) -> dict[str, float | int]:
        """Median / p95 / max of residual norms over used pairs (px)."""
        used = self.pairs[self.pairs["used"]]
        r = used["residual"].to_numpy(float)
        if r.size == 0:
            return {"n_pairs": int(len(self.pairs)), "n_used": 0, "rejected": self.rejected}
        return {
            "n_pairs": int(len(self.pairs)),
            "n_used": int(len(used)),
            "rejected": self.rejected,
            "median_px": float(np.median(r)),
            "p95_px": float(np.percentile(r, 95)),
            "max_px": float(r.max()),
        }


def solve_positions(
    matches: Sequence[PairMatch],
    stage_px: npt.ArrayLike,
    *,
    tile_shape: tuple[int, int],
    estimate_distortion: bool = True,
    distortion: DistortionModel | None = None,
    fit_magnification: bool = True,
    prior_sigma_px: float = 5.0,
    distortion_prior: float = 0.05,
    reject_px: float = 1.0,
    reject_nsigma: float = 4.0,
    max_rounds: int = 10,
) -> PositionSolution:
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
        Include mag_y/mag_x among the fitted terms. Only the stage priors
        constrain them: their error is about ``prior_sigma_px`` over the
        root-sum-square distance of the tiles from their centre, so with few
        tiles and a coarse stage it is wiser to fix them (from a calibration).
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
    import pandas as pd  # only for the per-pair table: keeps the package import light

    stage = np.asarray(stage_px, np.float64).reshape(-1, 2)
    n_tiles = stage.shape[0]
    base = distortion or DistortionModel()
    matches = list(matches)
    for m in matches:
        if not (0 <= m.reference < n_tiles and 0 <= m.moving < n_tiles):
            raise ValueError(f"pair ({m.reference}, {m.moving}) outside the {n_tiles} tiles of stage_px")
    fit_mag = estimate_distortion and fit_magnification
    active = np.array([m.ok and len(m.point_weights) > 0 for m in matches], bool)
    point_keep = [np.ones(len(m.point_weights), bool) for m in matches]
    rejected = 0
    problem = _Problem(matches, stage, tile_shape, base, estimate_distortion, fit_mag, prior_sigma_px, distortion_prior)
    for _ in range(max_rounds + 1):
        sol = problem.solve(active, point_keep)
        res = sol.residuals
        norms = np.array(
            [
                np.hypot(*r[k].mean(axis=0)) if a and k.any() else np.nan
                for r, k, a in zip(res, point_keep, active, strict=True)
            ]
        )
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
    pos = sol.positions
    rows = []
    for i, m in enumerate(matches):
        r, keep_i = sol.residuals[i], point_keep[i]
        meas = np.asarray(m.shift, float)
        rows.append(
            {
                "reference": m.reference,
                "moving": m.moving,
                "ok": bool(m.ok),
                "used": bool(active[i]),
                "n_points": int(point_keep[i].sum()) if active[i] else 0,
                "ncc": float(m.ncc),
                "expected_dy": m.expected[0],
                "expected_dx": m.expected[1],
                "measured_dy": meas[0],
                "measured_dx": meas[1],
                "solved_dy": float(pos[m.moving, 0] - pos[m.reference, 0]),
                "solved_dx": float(pos[m.moving, 1] - pos[m.reference, 1]),
                "residual_dy": float(r[keep_i, 0].mean()) if keep_i.any() else np.nan,
                "residual_dx": float(r[keep_i, 1].mean()) if keep_i.any() else np.nan,
                "residual": float(np.hypot(*r[keep_i].mean(axis=0))) if keep_i.any() else np.nan,
            }
        )
    constrained = np.zeros(n_tiles, bool)
    for i, m in enumerate(matches):
        if active[i]:
            constrained[[m.reference, m.moving]] = True
    comp = components(n_tiles, [(m.reference, m.moving) for m in matches])
    pos, scatter = stage_placement(pos, stage, constrained, comp, prior_sigma_px)
    psig = problem.position_sigma(sol, comp, constrained)
    loose = unverified_tiles(n_tiles, [(m.reference, m.moving) for m, a in zip(matches, active, strict=True) if a])
    psig = np.where(constrained & ~loose, psig, np.maximum(psig, scatter))
    flags = flag_tiles(matches, active, constrained, psig, loose)
    # a single-tile section (an IMC acquisition, a one-field coverslip) has no pairs: keep the columns anyway
    # (and boolean flags: an empty object column used as a mask would select columns, not rows)
    table = pd.DataFrame(rows, columns=_PAIR_COLUMNS).astype({"ok": bool, "used": bool})
    return PositionSolution(pos, sol.model, table, rejected, constrained, problem.sigma(sol), psig, tuple(flags))


_PAIR_COLUMNS = (
    "reference moving ok used n_points ncc expected_dy expected_dx measured_dy measured_dx "
    "solved_dy solved_dx residual_dy residual_dx residual"
).split()


@dataclass(frozen=True)
class _Normal:
    """What :meth:`_Problem.sigma` needs of a solve."""

    data: sparse.csc_matrix  # data normal matrix
    prior: sparse.csc_matrix  # prior normal matrix at the solution
    design: sparse.csr_matrix  # data design, right-hand side and weights
    rhs: _Array
    weights: _Array
    x: _Array  # the solution vector
    mag: _Array
    kt: _Array


@dataclass(frozen=True)
class _Solved:
    positions: _Array
    model: DistortionModel
    residuals: list[_Array]
    normal: _Normal


_K_COLUMNS = (DistortionModel.COEFFICIENTS.index("k_y"), DistortionModel.COEFFICIENTS.index("k_x"))


def _cubic_design(points: _Array, shape: tuple[int, int]) -> _Array:
    """``(D_y, D_x)`` per unit ``(k_y, k_x)`` at detector points (K, 2): the cubic columns of the model's design."""
    gy, gx = DistortionModel.design(points[:, 0], points[:, 1], shape)
    return np.stack([gy[:, _K_COLUMNS[0]], gx[:, _K_COLUMNS[1]]], axis=1)


class _Problem:
    """The least-squares problem in ``Q`` (2 per tile), ``k~`` (k_y, k_x) and ``mag`` (mag_y, mag_x).

    Column layout: ``Q`` of tile t axis a at ``2 t + a``, then the fitted
    ``k~`` per axis, then the fitted ``mag`` per axis.
    """

    def __init__(
        self,
        matches: list[PairMatch],
        stage: _Array,
        tile_shape: tuple[int, int],
        base: DistortionModel,
        fit_k: bool,
        fit_mag: bool,
        prior_sigma: float,
        dist_prior: float,
    ) -> None:
        self.matches, self.tile_shape = matches, tile_shape
        self.n_tiles = int(stage.shape[0])
        self.centre: _Array = stage.mean(axis=0) if self.n_tiles else np.zeros(2)
        self.stage_c = stage - self.centre
        self.fit_k, self.fit_mag = fit_k, fit_mag
        self.mag0, self.k0 = np.array([base.mag_y, base.mag_x]), np.array([base.k_y, base.k_x])
        self.kt_fixed = np.array([base.k_y, base.k_x]) / (1 + self.mag0)
        n = 2 * self.n_tiles
        # Empty when the term is not fitted.
        self.k_col: list[int] = [n, n + 1] if fit_k else []
        self.mag_col: list[int] = [n + len(self.k_col), n + len(self.k_col) + 1] if fit_mag else []
        self.n_unk = n + len(self.k_col) + len(self.mag_col)
        self.w_prior, self.w_coef = 1.0 / prior_sigma**2, 1.0 / dist_prior**2
        # Per match: D(p_b) - D(p_a) per unit k (the cubic columns of the design), y and x.
        self.dg: list[_Array] = [
            _cubic_design(m.points_mov, tile_shape) - _cubic_design(m.points_ref, tile_shape)
            if len(m.point_weights)
            else np.zeros((0, 2))
            for m in matches
        ]

    def _data(self, active: _Mask, point_keep: list[_Mask]) -> tuple[sparse.csr_matrix, _Array, _Array]:
        """Sparse design, right-hand side and weights of the seam equations."""
        rows: list[npt.NDArray[np.int_]] = []
        cols: list[npt.NDArray[np.int_]] = []
        vals: list[_Array] = []
        rhs: list[_Array] = []
        wts: list[_Array] = []
        eq = 0
        for i, m in enumerate(self.matches):
            if not active[i]:
                continue
            keep = point_keep[i]
            k = int(keep.sum())
            pa, pb, w, dg = m.points_ref[keep], m.points_mov[keep], m.point_weights[keep], self.dg[i][keep]
            for axis in range(2):
                r = eq + np.arange(k)
                rows += [r, r]
                cols += [np.full(k, 2 * m.moving + axis), np.full(k, 2 * m.reference + axis)]
                vals += [np.ones(k), -np.ones(k)]
                target = pa[:, axis] - pb[:, axis]
                if self.fit_k:
                    rows.append(r)
                    cols.append(np.full(k, self.k_col[axis]))
                    vals.append(dg[:, axis])
                else:
                    target = target - dg[:, axis] * self.kt_fixed[axis]
                rhs.append(target)
                wts.append(w)
                eq += k

        def cat(x: Sequence[npt.NDArray[Any]], dt: type = float) -> npt.NDArray[Any]:
            return np.concatenate(x).astype(dt) if x else np.zeros(0, dt)

        a = sparse.csr_matrix((cat(vals), (cat(rows, int), cat(cols, int))), shape=(eq, self.n_unk))
        return a, cat(rhs), cat(wts)

    def _prior(self, q0: _Array, mag0: _Array) -> tuple[sparse.csr_matrix, _Array, _Array]:
        """Linearised stage priors ``(1 + mag) Q = stage - centre`` and the coefficient priors."""
        n_t, idx = self.n_tiles, np.arange(2 * self.n_tiles)
        axis = idx % 2
        rows, cols, vals = [idx], [idx], [1.0 + mag0[axis]]
        rhs = [self.stage_c.ravel().copy()]
        if self.fit_mag:
            # (1 + mag) Q ~ (1 + mag0) Q + Q0 (mag - mag0)
            rows.append(idx)
            cols.append(np.array(self.mag_col)[axis])
            vals.append(q0.ravel())
            rhs[0] = rhs[0] + q0.ravel() * mag0[axis]
        wts = [np.full(2 * n_t, self.w_prior)]
        coef_cols = self.k_col + self.mag_col
        n = len(coef_cols)
        rows.append(2 * n_t + np.arange(n))
        cols.append(np.array(coef_cols, int))
        vals.append(np.ones(n))
        rhs.append(np.zeros(n))
        wts.append(np.full(n, self.w_coef))
        a = sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(2 * n_t + n, self.n_unk)
        )
        return a, np.concatenate(rhs), np.concatenate(wts)

    def solve(self, active: _Mask, point_keep: list[_Mask]) -> _Solved:
        """Positions and distortion for the pairs and points kept (Gauss-Newton in ``mag`` when fitted)."""
        ad, bd, wd = self._data(active, point_keep)
        nd = (ad.T @ ad.multiply(wd[:, None]).tocsr()).tocsc()
        rd = ad.T @ (wd * bd)
        mag = self.mag0.copy()
        q = self.stage_c / (1.0 + mag)
        for _ in range(20 if self.fit_mag else 1):
            ap, bp, wp = self._prior(q, mag)
            npr = (ap.T @ ap.multiply(wp[:, None]).tocsr()).tocsc()
            rhs = rd + ap.T @ (wp * bp)
            x = np.atleast_1d(splinalg.spsolve((nd + npr).tocsc(), rhs)) if self.n_unk else np.zeros(0)
            q = x[: 2 * self.n_tiles].reshape(-1, 2)
            if not self.fit_mag:
                break
            new = x[self.mag_col]
            step, mag = np.max(np.abs(new - mag)), new
            if step < 1e-12:
                break
        kt = x[self.k_col] if self.fit_k else self.kt_fixed
        positions = self.centre + (1.0 + mag) * q
        k = (1.0 + mag) * kt if self.fit_k else self.k0
        model = DistortionModel(mag_y=float(mag[0]), mag_x=float(mag[1]), k_y=float(k[0]), k_x=float(k[1]))
        return _Solved(positions, model, self._residuals(q, kt), _Normal(nd, npr, ad, bd, wd, x, mag, kt))

    def _residuals(self, q: _Array, kt: _Array) -> list[_Array]:
        """Per match, measured minus model over *all* its points, in detector px."""
        out = []
        for m, dg in zip(self.matches, self.dg, strict=True):
            if not len(m.point_weights):
                out.append(np.zeros((0, 2)))
                continue
            pred = q[m.moving] - q[m.reference] + dg * kt
            out.append(m.points_ref - m.points_mov - pred)
        return out

    def _scaled_normal(self, nm: _Normal) -> sparse.csc_matrix:
        """Normal matrix with the data weights scaled to their observed scatter (reduced chi-square >= 1)."""
        r = nm.design @ nm.x - nm.rhs
        dof = max(len(nm.rhs) - self.n_unk, 1)
        s2 = max(1.0, float(np.sum(nm.weights * r * r)) / dof) if len(nm.rhs) else 1.0
        return (nm.data / s2 + nm.prior).tocsc()

    def position_sigma(self, solved: _Solved, comp: npt.NDArray[np.int_], gauge: _Mask) -> _Array:
        """1-sigma of each tile's position relative to its component (see :mod:`._uncertainty`)."""
        if not self.n_tiles:
            return np.zeros(0)
        normal = self._scaled_normal(solved.normal)
        return relative_sigma(normal, self.n_tiles, comp, 1.0 + solved.normal.mag, gauge)

    def sigma(self, solved: _Solved) -> dict[str, float]:
        """1-sigma of each coefficient from the normal matrix, data weights scaled to their scatter."""
        nm = solved.normal
        sigma = dict.fromkeys(DistortionModel.COEFFICIENTS, 0.0)
        cols = self.k_col + self.mag_col
        if not cols:
            return sigma
        # Point weights from match_pair are often optimistic: scale them to the observed scatter.
        r = nm.design @ nm.x - nm.rhs
        dof = max(len(nm.rhs) - self.n_unk, 1)
        s2 = max(1.0, float(np.sum(nm.weights * r * r)) / dof) if len(nm.rhs) else 1.0
        lu = splinalg.splu((nm.data / s2 + nm.prior).tocsc())
        e = np.zeros((self.n_unk, len(cols)))
        e[cols, np.arange(len(cols))] = 1.0
        cov = lu.solve(e)[cols]
        var = dict(zip(cols, np.diag(cov), strict=True))
        mag, kt = nm.mag, nm.kt
        for axis, (kn, mn) in enumerate((("k_y", "mag_y"), ("k_x", "mag_x"))):
            if self.fit_mag:
                sigma[mn] = float(np.sqrt(var[self.mag_col[axis]]))
            if self.fit_k:
                # k = (1 + mag) k~
                kc = self.k_col[axis]
                v = (1 + mag[axis]) ** 2 * var[kc]
                if self.fit_mag:
                    mc = self.mag_col[axis]
                    v += kt[axis] ** 2 * var[mc] + 2 * (1 + mag[axis]) * kt[axis] * cov[cols.index(kc), cols.index(mc)]
                sigma[kn] = float(np.sqrt(max(v, 0.0)))
        return sigma
