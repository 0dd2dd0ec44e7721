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

The same holds for the whole linear map ``A = 1 + M`` (magnification and the
off-diagonal terms of a camera turned against the stage, ``P = c + A Q``): the
overlaps never see it. Unless ``fit_magnification`` asks for the joint fit (of all
of ``A``), the solve keeps the nominal map, then estimates it from the stage
statistics of all solved tiles (:mod:`._magnification`, estimate and sigma from the
joint fit with the measured stage scatter) and solves again under the map with each
significant term applied, so the positions and the recorded map agree. The
least-squares problem itself is :mod:`._lsq`.

The quintic radial terms (``k5_y``, ``k5_x``) are seen by the overlaps like the cubic ones, but with
the cubic fitted they are weakly determined on normal overlaps: where asked (``quintic``), a probe
fits them after the rejection rounds and each axis is kept only where significant
(:func:`_significant_quintic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..optics import DistortionModel
from ._lsq import Problem, Solved
from ._magnification import MagnificationEstimate, significance_threshold, stage_magnification
from ._overlap import PairMatch
from ._seam_bias import seam_levers, seam_systematic, seam_variation
from ._uncertainty import (
    TileFlag,
    components,
    flag_tiles,
    stage_disagreement,
    stage_placement,
    stage_tied_islands,
    unverified_tiles,
)

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
    magnification : MagnificationEstimate, optional
        The linear map (magnification and shear) from the stage statistics of all solved tiles, with
        its sigma, which terms were applied (significant, distortion not from a file) and the position
        error each part leaves (:mod:`._magnification`).
    seam_variation : ndarray (2,)
        rms (px) of the residual the model leaves along the seams, across horizontal seams (``y``) and
        vertical ones (``x``): the optics field outside the model, taken as the size of the bias it puts on
        every seam of that direction alike; each tile's sigma carries it times its lever
        (:mod:`._seam_bias`).
    """

    positions: _Array
    distortion: DistortionModel
    pairs: pd.DataFrame
    rejected: int
    constrained: _Mask
    distortion_sigma: dict[str, float]
    position_sigma: _Array = field(default_factory=lambda: np.zeros(0))
    flags: tuple[TileFlag, ...] = ()
    magnification: MagnificationEstimate | None = None
    seam_variation: _Array = field(default_factory=lambda: np.zeros(2))

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
    quintic: bool = False,
    prior_sigma_px: float = 5.0,
    distortion_prior: float = 0.05,
    reject_px: float = 1.0,
    reject_nsigma: float = 4.0,
    max_rounds: int = 10,
    seam_sigma: tuple[float, float] | None = None,
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
        Include the linear map (mag_y/mag_x and shear_yx/shear_xy) among the fitted terms. Only the stage priors
        constrain them: their error is about ``prior_sigma_px`` over the
        root-sum-square distance of the tiles from their centre, so with few
        tiles and a coarse stage it is wiser to fix them (from a calibration).
        When False (and the distortion is estimated), the linear map is
        still estimated from the stage statistics after the solve and each term
        applied where it is significant (:func:`._magnification.stage_magnification`).
    quintic : bool
        With the distortion estimated, also probe the quintic radial terms (``k5_y``, ``k5_x``) and fit
        each where it is significant (:func:`_significant_quintic`); else they stay at the base model's.
        Off by default: on the seams of a normal overlap (5-20 %) the quintic and cubic columns correlate
        at -0.99, so a smooth field outside the model (or noise) passes for a quintic and trades with the
        cubic (on the sweep's 2 x 2 samples 8 and 20 it was applied, moved the scale, and made every tile's
        sigma 3-4x larger); a calibration acquisition's large overlaps separate them
        (:func:`..calibration.fit_calibration_distortion` turns it on).
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
    seam_sigma : (float, float), optional
        1-sigma (px) of the bias left on every horizontal / vertical seam (its ``y`` / ``x``) once a
        calibration took the measured bias out (:func:`._seam_bias.correct_seam_bias`). It replaces the
        variation measured along the seams as the size of that bias in each tile's sigma.

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
    problem = Problem(matches, stage, tile_shape, base, estimate_distortion, fit_mag, prior_sigma_px, distortion_prior)
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
    comp = components(n_tiles, [(m.reference, m.moving) for m in matches])
    constrained = np.zeros(n_tiles, bool)
    for i, m in enumerate(matches):
        if active[i]:
            constrained[[m.reference, m.moving]] = True
    if estimate_distortion and quintic:
        k5 = _significant_quintic(problem, active, point_keep, base, prior_sigma_px)
        if any(k5):  # solve again with the significant axes fitted (the pairs and points kept stay)
            problem = problem.variant(base, True, fit_mag, prior_sigma_px, k5)
            sol = problem.solve(active, point_keep)
    used_pairs = [(m.reference, m.moving) for m, a in zip(matches, active, strict=True) if a]
    # a tile no loop checks may sit px off: it must not set the scale
    use = constrained & ~unverified_tiles(n_tiles, used_pairs)
    allow = estimate_distortion and not fit_mag

    def regress(
        detector: _Array, joint: tuple[Sequence[float], Sequence[float]] | None = None
    ) -> MagnificationEstimate:
        return stage_magnification(
            detector,
            stage,
            comp,
            use,
            nominal=(base.mag_y, base.mag_x),
            shear_nominal=(base.shear_yx, base.shear_xy),
            stage_sigma_px=prior_sigma_px,
            allow=allow,
            joint=joint,
        )

    def linear(model: DistortionModel, sig: dict[str, float]) -> tuple[list[float], list[float]]:
        return [getattr(model, k) for k in DistortionModel.LINEAR], [sig[k] for k in DistortionModel.LINEAR]

    mag_est = regress(sol.detector)
    if fit_mag:  # the joint fit already used the stage: report its estimate as applied
        mag_est = regress(sol.detector, linear(sol.model, problem.sigma(sol)))
        mag_est = replace(mag_est, applied=(True, True), shear_applied=(True, True))
    elif estimate_distortion and np.isfinite(mag_est.mag_sigma).all():
        # the estimate and sigma of the joint fit (the whole map), the stage weighted by the scatter just measured
        probe = problem.variant(base, True, True, mag_est.stage_sigma_px)
        psol = probe.solve(active, point_keep)
        mag_est = regress(sol.detector, linear(psol.model, probe.sigma(psol)))
    if not fit_mag and (any(mag_est.applied) or any(mag_est.shear_applied)):
        # significant terms: solve again under that map (k~ and Q do not depend on it, P and k do)
        est = (*mag_est.mag, *mag_est.shear)
        nom = (*mag_est.nominal, *mag_est.shear_nominal)
        use_est = (*mag_est.applied, *mag_est.shear_applied)
        terms = {k: float(e if a else n) for k, e, n, a in zip(DistortionModel.LINEAR, est, nom, use_est, strict=True)}
        base = replace(base, **terms)
        problem = problem.variant(base, estimate_distortion, False, prior_sigma_px)
        sol = problem.solve(active, point_keep)
    placed = _place(problem, sol, matches, active, point_keep, stage, constrained, comp, prior_sigma_px, seam_sigma)
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
    pos, psig, flags, variation = placed
    # a single-tile section (an IMC acquisition, a one-field coverslip) has no pairs: keep the columns anyway
    # (and boolean flags: an empty object column used as a mask would select columns, not rows)
    table = pd.DataFrame(rows, columns=_PAIR_COLUMNS).astype({"ok": bool, "used": bool})
    return PositionSolution(
        pos, sol.model, table, rejected, constrained, problem.sigma(sol), psig, tuple(flags), mag_est, variation
    )


def _significant_quintic(
    problem: Problem, active: _Mask, point_keep: list[_Mask], base: DistortionModel, prior_sigma_px: float
) -> tuple[bool, bool]:
    """Per axis, whether the quintic radial term of a probe fitting it departs from the base model's by
    more than the Student-t threshold (the magnification's rule) in units of a pair-level sigma.

    The cubic alone cannot follow a field with 5th-order terms (on 3 x 3 tiles of 512 px, 2-3 px of them at
    the corners leave ~3 px of scale-like error); fitted where it is not there, the quintic only trades
    variance with the cubic, so it must earn its place. The
    seams' point errors are not independent (a smooth field the model does not have moves every point of
    a pair together), so the normal matrix's sigma is optimistic: the sigma used is the larger of it and a
    grouped jackknife over the used pairs (:data:`_JACKKNIFE_GROUPS` groups at most), with the jackknife's
    degrees of freedom: 4.5 sigma with 8 groups; a 2 x 2 grid (4 pairs, 3 dof) needs 9.2.
    """
    probe = problem.variant(base, True, problem.fit_mag, prior_sigma_px, (True, True))
    psol = probe.solve(active, point_keep)
    sig = probe.sigma(psol)
    names = DistortionModel.RADIAL[1]
    est = np.array([getattr(psol.model, k) for k in names])
    formal = np.array([sig[k] for k in names])
    used = np.flatnonzero(active)
    groups = min(len(used), _JACKKNIFE_GROUPS)
    nominal = np.array([getattr(base, k) for k in names])
    thr = significance_threshold(float(groups - 1))
    if groups < 3 or not np.all(formal > 0) or not np.any(np.abs(est - nominal) > thr * formal):
        return False, False  # not significant even by the (smaller) formal sigma: no jackknife needed
    leave = []
    for g in range(groups):
        out = np.zeros(len(active), bool)
        out[used[g::groups]] = True
        m = probe.solve(active, point_keep, without=out).model
        leave.append([getattr(m, k) for k in names])
    jk = np.asarray(leave)
    jk_sigma = np.sqrt((groups - 1) / groups * np.sum((jk - jk.mean(axis=0)) ** 2, axis=0))
    sd = np.maximum(formal, jk_sigma)
    y, x = (bool(v) for v in np.abs(est - nominal) > thr * sd)
    return y, x


#: Groups of used pairs the quintic's jackknife leaves out in turn (a solve each).
_JACKKNIFE_GROUPS = 8


def _place(
    problem: Problem,
    sol: Solved,
    matches: list[PairMatch],
    active: _Mask,
    point_keep: list[_Mask],
    stage: _Array,
    constrained: _Mask,
    comp: npt.NDArray[np.int_],
    prior_sigma_px: float,
    seam_sigma: tuple[float, float] | None,
) -> tuple[_Array, _Array, list[TileFlag], _Array]:
    """Positions with unconstrained tiles placed by the stage, each tile's sigma, and the flags."""
    used = [(m.reference, m.moving) for m, a in zip(matches, active, strict=True) if a]
    islands = components(len(stage), used)
    pos, scatter = stage_placement(sol.positions, stage, constrained, comp, prior_sigma_px, islands)
    psig = problem.position_sigma(sol, comp, constrained)
    loose = unverified_tiles(len(stage), used)
    # placed by the stage: the stage's sigma alone (the solve's is the stated prior's, not the data's);
    # on bridges only: a false match could be as far off as the stage, the solve's sigma cannot see it
    psig = np.where(constrained, np.where(loose, np.maximum(psig, scatter), psig), scatter)
    # ... and at least as far as the stage disagrees with it: which of the two is wrong, no loop says
    gap = np.where(constrained & loose, stage_disagreement(sol.positions, stage, islands), 0.0)
    psig = np.maximum(psig, gap)
    # an island beside the main one of its section sits where the stage put it: its offset's sigma too
    tied, group = stage_tied_islands(comp, islands, constrained, scatter)
    # every seam of one direction biased alike by the optics the model lacks: a shear only the stage sees
    variation = seam_variation(matches, sol.residuals, point_keep, active)
    size = variation if seam_sigma is None else np.asarray(seam_sigma, np.float64)
    seam = seam_systematic(size, seam_levers(len(stage), matches, active, islands))
    psig = np.where(constrained & ~loose, np.sqrt(psig**2 + tied**2 + seam**2), psig)
    flags = flag_tiles(matches, active, constrained, psig, loose, group, seam, gap)
    return pos, psig, list(flags), variation


_PAIR_COLUMNS = (
    "reference moving ok used n_points ncc expected_dy expected_dx measured_dy measured_dx "
    "solved_dy solved_dx residual_dy residual_dx residual"
).split()
