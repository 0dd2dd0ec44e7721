"""The weighted sparse least-squares problem of :func:`._positions.solve_positions`.

Unknowns: ``Q`` (the detector-frame position of every tile), ``k~`` (the cubic distortion per axis,
in detector units, and the quintic where asked: ``k5~``) and optionally the linear map ``A = 1 + M``
(mag_y, mag_x, shear_yx, shear_xy);
equations: every seam correspondence, the stage priors ``A Q = stage`` and zero-mean priors on the
coefficients (see :mod:`._positions` for why the residuals are written in the detector frame).
:class:`Problem` builds and solves it and gives the coefficients' and positions' sigmas.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import linalg as splinalg

from ..optics import DistortionModel
from ._overlap import PairMatch
from ._pair_scatter import block_noise, block_normal, excess_variance
from ._uncertainty import components, relative_sigma

__all__ = ["Normal", "Problem", "Solved"]

_Array = npt.NDArray[np.float64]
_Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Normal:
    """What :meth:`Problem.sigma` needs of a solve."""

    prior: sparse.csc_matrix  # prior normal matrix at the solution
    design: sparse.csr_matrix  # data design, right-hand side and weights
    rhs: _Array
    weights: _Array
    blocks: npt.NDArray[np.int_]  # per equation row: 2 * pair + axis (the points that share a pair's error)
    x: _Array  # the solution vector
    mag: _Array  # (mag_y, mag_x)
    kt: _Array  # (axis, order): k~ of the cubic and quintic terms, detector units


@dataclass(frozen=True)
class Solved:
    positions: _Array
    model: DistortionModel
    residuals: list[_Array]
    normal: Normal
    detector: _Array  # Q: the detector-frame positions (T, 2) about the stage centre


#: Columns of the model's design per radial order (cubic, quintic) and axis (y, x).
_K_COLUMNS = tuple(tuple(DistortionModel.COEFFICIENTS.index(k) for k in ks) for ks in DistortionModel.RADIAL)


def _matrix(lin: _Array) -> _Array:
    """``A = 1 + M`` (2, 2) from the linear terms in :attr:`DistortionModel.LINEAR` order."""
    return np.array([[1.0 + lin[0], lin[2]], [lin[3], 1.0 + lin[1]]])


def _radial_design(points: _Array, shape: tuple[int, int]) -> _Array:
    """(K, axis, order): ``D_axis`` per unit radial term of each order (cubic, quintic) at detector points (K, 2)."""
    gy, gx = DistortionModel.design(points[:, 0], points[:, 1], shape)
    return np.stack([np.stack([gy[:, cy], gx[:, cx]], axis=1) for cy, cx in _K_COLUMNS], axis=2)


class Problem:
    """The least-squares problem in ``Q`` (2 per tile), ``k~`` (k_y, k_x) and the linear map.

    Column layout: ``Q`` of tile t axis a at ``2 t + a``, then the fitted
    ``k~`` per axis, then the fitted quintic ``k5~`` (the axes in ``fit_k5``), then the fitted linear
    terms in :attr:`LINEAR` order (``fit_mag``: the whole map, magnification and shear, jointly).
    A radial term not fitted is held at the base model's value (in detector units).
    """

    #: Fitted linear terms, in column order.
    LINEAR = DistortionModel.LINEAR

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
        fit_k5: tuple[bool, bool] = (False, False),
    ) -> None:
        self.matches, self.tile_shape = matches, tile_shape
        self.n_tiles = int(stage.shape[0])
        self.centre: _Array = stage.mean(axis=0) if self.n_tiles else np.zeros(2)
        self.stage_c = stage - self.centre
        self.w_coef = 1.0 / dist_prior**2
        self._configure(base, fit_k, fit_mag, prior_sigma, fit_k5)
        # Per match: D(p_b) - D(p_a) per unit radial term, (points, axis, order).
        self.dg: list[_Array] = [
            _radial_design(m.points_mov, tile_shape) - _radial_design(m.points_ref, tile_shape)
            if len(m.point_weights)
            else np.zeros((0, 2, 2))
            for m in matches
        ]

    def _configure(
        self, base: DistortionModel, fit_k: bool, fit_mag: bool, prior_sigma: float, fit_k5: tuple[bool, bool]
    ) -> None:
        self.fit_k, self.fit_mag = fit_k, fit_mag
        self.fit_k5 = (bool(fit_k and fit_k5[0]), bool(fit_k and fit_k5[1]))
        self.mag0 = np.array([base.mag_y, base.mag_x])
        self.k0 = np.array([[getattr(base, k) for k in axis] for axis in zip(*DistortionModel.RADIAL, strict=True)])
        self.lin0 = np.array([getattr(base, k) for k in self.LINEAR])
        self.kt_fixed = self.k0 / (1 + self.mag0[:, None])  # (axis, order)
        n = 2 * self.n_tiles
        # Empty when the term is not fitted; (axis, order) -> column for the fitted radial terms.
        self.radial_col: dict[tuple[int, int], int] = {}
        if fit_k:
            self.radial_col = {(0, 0): n, (1, 0): n + 1}
            for axis in (0, 1):
                if self.fit_k5[axis]:
                    self.radial_col[(axis, 1)] = n + len(self.radial_col)
        self.k_col: list[int] = list(self.radial_col.values())
        self.mag_col: list[int] = list(range(n + len(self.k_col), n + len(self.k_col) + 4)) if fit_mag else []
        self.n_unk = n + len(self.k_col) + len(self.mag_col)
        self.w_prior = 1.0 / prior_sigma**2
        self._cached: tuple[bytes, tuple[sparse.csr_matrix, _Array, _Array, npt.NDArray[np.int_]]] | None = None

    def variant(
        self,
        base: DistortionModel,
        fit_k: bool,
        fit_mag: bool,
        prior_sigma: float,
        fit_k5: tuple[bool, bool] | None = None,
    ) -> Problem:
        """The same seams (their design is not recomputed) with another base model, terms or stage error
        (the quintic axes fitted: this problem's unless given)."""
        out = copy.copy(self)
        out._configure(base, fit_k, fit_mag, prior_sigma, self.fit_k5 if fit_k5 is None else fit_k5)
        return out

    def _data(
        self, active: _Mask, point_keep: list[_Mask]
    ) -> tuple[sparse.csr_matrix, _Array, _Array, npt.NDArray[np.int_]]:
        """Sparse design, right-hand side, weights and block (``2 * pair + axis``) of the seam equations (the
        last kept: a jackknife solves the same pairs and points with some pairs' weights set to 0)."""
        key = active.tobytes() + b"".join(k.tobytes() for k in point_keep)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        out = self._build(active, point_keep)
        self._cached = (key, out)
        return out

    def _build(
        self, active: _Mask, point_keep: list[_Mask]
    ) -> tuple[sparse.csr_matrix, _Array, _Array, npt.NDArray[np.int_]]:
        rows: list[npt.NDArray[np.int_]] = []
        cols: list[npt.NDArray[np.int_]] = []
        vals: list[_Array] = []
        rhs: list[_Array] = []
        wts: list[_Array] = []
        block: list[npt.NDArray[np.int_]] = []
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
                for order in (0, 1):
                    col = self.radial_col.get((axis, order))
                    if col is not None:
                        rows.append(r)
                        cols.append(np.full(k, col))
                        vals.append(dg[:, axis, order])
                    elif self.kt_fixed[axis, order]:
                        target = target - dg[:, axis, order] * self.kt_fixed[axis, order]
                rhs.append(target)
                wts.append(w)
                block.append(np.full(k, 2 * i + axis))
                eq += k

        def cat(x: Sequence[npt.NDArray[Any]], dt: type = float) -> npt.NDArray[Any]:
            return np.concatenate(x).astype(dt) if x else np.zeros(0, dt)

        a = sparse.csr_matrix((cat(vals), (cat(rows, int), cat(cols, int))), shape=(eq, self.n_unk))
        return a, cat(rhs), cat(wts), cat(block, int)

    def _prior(self, q0: _Array, lin0: _Array) -> tuple[sparse.csr_matrix, _Array, _Array]:
        """Linearised stage priors ``A Q = stage - centre`` and the coefficient priors."""
        n_t, idx = self.n_tiles, np.arange(2 * self.n_tiles)
        axis = idx % 2
        other = idx + 1 - 2 * axis  # the same tile's other axis
        a0 = _matrix(lin0)
        rows, cols, vals = [idx], [idx], [a0[axis, axis]]
        if a0[0, 1] or a0[1, 0]:  # a sheared map ties each axis to the other
            rows, cols, vals = rows + [idx], cols + [other], vals + [a0[axis, 1 - axis]]
        rhs = [self.stage_c.ravel().copy()]
        if self.fit_mag:
            # A Q ~ A0 Q + (A - A0) Q0: mag_a multiplies Q0_a, the off-diagonal term of axis a the other axis
            q0f = q0.ravel()
            mag_cols, shear_cols = np.array(self.mag_col[:2]), np.array(self.mag_col[2:])
            rows += [idx, idx]
            cols += [mag_cols[axis], shear_cols[axis]]
            vals += [q0f, q0f[other]]
            lin_a = np.array([lin0[0], lin0[1]])[axis] * q0f + np.array([lin0[2], lin0[3]])[axis] * q0f[other]
            rhs[0] = rhs[0] + lin_a
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

    def solve(self, active: _Mask, point_keep: list[_Mask], without: _Mask | None = None) -> Solved:
        """Positions and distortion for the pairs and points kept (Gauss-Newton in ``mag`` when fitted);
        ``without`` (per pair) leaves those pairs out of the active ones."""
        ad, bd, wd, block = self._data(active, point_keep)
        if without is not None:
            wd = np.where(without[block // 2], 0.0, wd)
        x, lin, npr = self._weighted(ad, bd, wd, self.lin0)
        if len(bd):
            # Feasible GLS, one step: a pair whose points scatter about their own mean beyond what their weights
            # claim (few points, where texture is scarce) is weighted by that scatter (:func:`block_noise`) and
            # the whole is solved again. The weights' overall scale is kept: only pairs' relative noise moves.
            s2, s2_b = self._noise(ad @ x - bd, wd, block)
            x, lin, npr = self._weighted(ad, bd, wd * (s2 / s2_b)[block], lin)
        q = x[: 2 * self.n_tiles].reshape(-1, 2)
        kt = self.kt_fixed.copy()
        for (axis, order), col in self.radial_col.items():
            kt[axis, order] = x[col]
        a = _matrix(lin)
        positions = self.centre + q @ a.T
        mag = lin[:2]
        k = (1.0 + mag)[:, None] * kt if self.fit_k else self.k0
        model = DistortionModel(
            mag_y=float(mag[0]),
            mag_x=float(mag[1]),
            k_y=float(k[0, 0]),
            k_x=float(k[1, 0]),
            shear_yx=float(lin[2]),
            shear_xy=float(lin[3]),
            k5_y=float(k[0, 1]),
            k5_x=float(k[1, 1]),
        )
        normal = Normal(npr, ad, bd, wd, block, x, mag, kt)
        return Solved(positions, model, self._residuals(q, kt), normal, q)

    def _weighted(
        self, ad: sparse.csr_matrix, bd: _Array, wd: _Array, lin: _Array
    ) -> tuple[_Array, _Array, sparse.csc_matrix]:
        """Solution vector, linear map and prior normal matrix for the data weights ``wd`` (Gauss-Newton in the
        linear map when it is fitted, from ``lin``: the stage prior depends on it)."""
        nd = (ad.T @ ad.multiply(wd[:, None]).tocsr()).tocsc()
        rd = ad.T @ (wd * bd)
        lin = lin.copy()
        q = np.linalg.solve(_matrix(lin), self.stage_c.T).T if self.n_tiles else self.stage_c.copy()
        for _ in range(20 if self.fit_mag else 1):
            ap, bp, wp = self._prior(q, lin)
            npr = (ap.T @ ap.multiply(wp[:, None]).tocsr()).tocsc()
            rhs = rd + ap.T @ (wp * bp)
            x = np.atleast_1d(splinalg.spsolve((nd + npr).tocsc(), rhs)) if self.n_unk else np.zeros(0)
            q = x[: 2 * self.n_tiles].reshape(-1, 2)
            if not self.fit_mag:
                break
            new = x[self.mag_col]
            step, lin = np.max(np.abs(new - lin)), new
            if step < 1e-12:
                break
        return x, lin, npr

    def _noise(self, r: _Array, weights: _Array, blocks: npt.NDArray[np.int_]) -> tuple[float, _Array]:
        """The points' variance per unit weight (reduced chi-square, at least 1) and each block's own
        (:func:`block_noise`) for residuals ``r``."""
        dof = max(len(r) - self.n_unk, 1)
        s2 = max(1.0, float(np.sum(weights * r * r)) / dof) if len(r) else 1.0
        return s2, block_noise(r, weights, blocks, s2)

    def _residuals(self, q: _Array, kt: _Array) -> list[_Array]:
        """Per match, measured minus model over *all* its points, in detector px."""
        out = []
        for m, dg in zip(self.matches, self.dg, strict=True):
            if not len(m.point_weights):
                out.append(np.zeros((0, 2)))
                continue
            pred = q[m.moving] - q[m.reference] + np.einsum("kao,ao->ka", dg, kt)
            out.append(m.points_ref - m.points_mov - pred)
        return out

    def _scaled_normal(self, nm: Normal) -> sparse.csc_matrix:
        """Normal matrix with the data weights scaled to their observed scatter (reduced chi-square >= 1) and
        each pair's common error, where the pairs' mean residuals show one (:mod:`._pair_scatter`)."""
        r = nm.design @ nm.x - nm.rhs
        _s2, s2_b = self._noise(r, nm.weights, nm.blocks)
        used = np.unique(nm.blocks[nm.weights > 0] // 2)
        comp = components(self.n_tiles, [(self.matches[i].reference, self.matches[i].moving) for i in used])
        # what the pairs' means fix: each island's tiles relative to one another, and the radial terms
        n_params = 2 * (self.n_tiles - len(np.unique(comp))) + len(self.radial_col)
        tau2 = excess_variance(r, nm.weights, nm.blocks, s2_b, n_params)
        return (block_normal(nm.design, nm.weights, nm.blocks, s2_b, tau2) + nm.prior).tocsc()

    def position_sigma(self, solved: Solved, comp: npt.NDArray[np.int_], gauge: _Mask) -> _Array:
        """1-sigma of each tile's position relative to its component (see :mod:`._uncertainty`)."""
        if not self.n_tiles:
            return np.zeros(0)
        normal = self._scaled_normal(solved.normal)
        return relative_sigma(normal, self.n_tiles, comp, 1.0 + solved.normal.mag, gauge)

    def sigma(self, solved: Solved) -> dict[str, float]:
        """1-sigma of each coefficient from the normal matrix, data weights scaled to their scatter."""
        nm = solved.normal
        sigma = dict.fromkeys(DistortionModel.COEFFICIENTS, 0.0)
        cols = self.k_col + self.mag_col
        if not cols:
            return sigma
        # Point weights from match_pair are often optimistic: scaled to the observed scatter.
        lu = splinalg.splu(self._scaled_normal(nm))
        e = np.zeros((self.n_unk, len(cols)))
        e[cols, np.arange(len(cols))] = 1.0
        cov = lu.solve(e)[cols]
        var = dict(zip(cols, np.diag(cov), strict=True))
        mag, kt = nm.mag, nm.kt
        if self.fit_mag:
            for name, col in zip(self.LINEAR, self.mag_col, strict=True):
                sigma[name] = float(np.sqrt(var[col]))
        for (axis, order), kc in self.radial_col.items():
            # k = (1 + mag) k~
            v = (1 + mag[axis]) ** 2 * var[kc]
            if self.fit_mag:
                mc, ktv = self.mag_col[axis], kt[axis, order]
                v += ktv**2 * var[mc] + 2 * (1 + mag[axis]) * ktv * cov[cols.index(kc), cols.index(mc)]
            sigma[DistortionModel.RADIAL[order][axis]] = float(np.sqrt(max(v, 0.0)))
        return sigma
