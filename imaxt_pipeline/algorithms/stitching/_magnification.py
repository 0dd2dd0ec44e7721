"""The linear part of the optics (magnification, shear) from the stage statistics of all tiles.

The overlaps cannot see any linear term of the distortion: ``D(p) = M p`` changes every pairwise
shift by ``M`` times the tile spacing, exactly what a scaled (or sheared) set of tile positions
does (:mod:`._positions`). Only the stage can tell them apart. Regressing the recorded stage
positions ``s`` of the solved tiles on their detector-frame positions ``Q`` (each section centred
on itself, since every section has its own translation)::

    s - mean_section(s) = A (Q - mean_section(Q)) + stage error

gives ``A = 1 + M`` with covariance ``sigma_stage^2 (X^T X)^-1``: about ``sigma_stage / sqrt(sum
lever^2)`` per term, which falls with the square root of the number of tiles (and sections).
``sigma_stage`` is the scatter about the fit, pooled with the stated stage error as a weak prior
(:data:`PRIOR_DOF` degrees of freedom), because a 2 x 2 grid leaves two residual degrees of freedom
per axis, too few to trust on their own.

Each term, the diagonal (magnification) and the off-diagonal ones (a camera turned or sheared against
the stage: :attr:`..optics.DistortionModel.shear_yx`, ``shear_xy``), is applied when it is significant
(:func:`significance_threshold`, the same Student-t rule for all four). Either way the record says what
error in the tile positions each part's sigma implies (:attr:`MagnificationEstimate.predicted_px`,
:attr:`MagnificationEstimate.shear_predicted_px`, both together :attr:`MagnificationEstimate.linear_predicted_px`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "PRIOR_DOF",
    "SIGNIFICANT_NSIGMA",
    "MagnificationEstimate",
    "significance_threshold",
    "stage_magnification",
]

_Array = npt.NDArray[np.float64]
_Mask = npt.NDArray[np.bool_]

#: Degrees of freedom given to the stated stage error when pooling it with the measured scatter.
PRIOR_DOF = 4.0
#: A magnification is applied when it differs from the nominal one by more than this many sigma (with
#: many tiles; with few, the Student-t quantile of the same two-sided probability, 0.27 %).
SIGNIFICANT_NSIGMA = 3.0
#: A linear-map term further than this from its nominal value is never applied, however significant: a
#: magnification 2 % off, or a camera turned by more than ~1.1 degrees, is outside what an instrument's
#: nominal calibration allows, while stage statistics corrupted by a few false matches produce such slopes
#: (a 3 x 3 grid of 256 px tiles once "found" -3.3 % at 4 sigma, against a true -0.13 %, 7 px off).
PLAUSIBLE_LINEAR = 0.02


def significance_threshold(dof: float) -> float:
    """Sigmas a magnification must exceed with ``dof`` degrees of freedom in its stage error.

    The stage error is estimated from the scatter (plus :data:`PRIOR_DOF`): with few tiles the ratio is
    Student-t, whose tails would let a 2 x 2 grid apply a stage-noise slope one time in 40 at 3 sigma.

    >>> round(significance_threshold(6), 2), round(significance_threshold(1e6), 2)
    (4.9, 3.0)
    """
    # scipy.special, not scipy.stats: the same quantiles (to 1e-15), without stats' 2 s import on the client
    from scipy import special

    p = float(special.erfc(SIGNIFICANT_NSIGMA / np.sqrt(2.0)))  # two-sided normal tail at 3 sigma
    return float(-special.stdtrit(max(dof, 1.0), p / 2))


@dataclass(frozen=True)
class MagnificationEstimate:
    """Linear map ``stage = (1 + M) detector`` estimated from the stage positions of the solved tiles.

    Attributes
    ----------
    mag, mag_sigma : (y, x) relative magnification (total, nominal included) and its 1-sigma.
    shear, shear_sigma : (y from x, x from y) off-diagonal terms of ``M`` (total, nominal included) and their
        1-sigma: ``shear_yx``, ``shear_xy`` of :class:`..optics.DistortionModel`.
    nominal : (y, x) magnification the solve started from (calibration file or 0).
    applied : (y, x) whether the estimate replaced the nominal value (significant, plausible: within
        :data:`PLAUSIBLE_LINEAR` of it, and allowed).
    shear_nominal, shear_applied : the same for the off-diagonal terms (yx, xy).
    stage_sigma_px : stage error used (measured scatter pooled with the stated one).
    n_tiles, dof : tiles in the regression and the residual degrees of freedom (both axes).
    predicted_px : median over tiles of the 1-sigma position error (relative to the section centre) that
        the magnification's sigma implies: the translation-only error reachable with the magnification
        from the stage (reached where applied; where not, the nominal one is kept and this is the
        dominant uncertainty of the positions' scale).
    shear_predicted_px, linear_predicted_px : the same for the off-diagonal terms' sigma, and for the whole
        linear map's (all four terms at each tile's lever arm): the translation-only error reachable.
    """

    mag: tuple[float, float]
    mag_sigma: tuple[float, float]
    shear: tuple[float, float]
    shear_sigma: tuple[float, float]
    nominal: tuple[float, float]
    applied: tuple[bool, bool]
    stage_sigma_px: float
    n_tiles: int
    dof: int
    predicted_px: float
    shear_nominal: tuple[float, float] = (0.0, 0.0)
    shear_applied: tuple[bool, bool] = (False, False)
    shear_predicted_px: float = float("inf")
    linear_predicted_px: float = float("inf")

    @property
    def significant(self) -> tuple[bool, bool]:
        """Per axis, ``|mag - nominal| > significance_threshold(dof + PRIOR_DOF) * sigma``."""
        k = significance_threshold(self.dof + PRIOR_DOF)
        y, x = (bool(abs(m - n) > k * s) for m, n, s in zip(self.mag, self.nominal, self.mag_sigma, strict=True))
        return y, x

    @property
    def shear_significant(self) -> tuple[bool, bool]:
        """Per off-diagonal term (yx, xy), the rule of :attr:`significant`."""
        k = significance_threshold(self.dof + PRIOR_DOF)
        pairs = zip(self.shear, self.shear_nominal, self.shear_sigma, strict=True)
        yx, xy = (bool(abs(m - n) > k * s) for m, n, s in pairs)
        return yx, xy

    @property
    def rotation_deg(self) -> float:
        """Rotation of the estimated map (antisymmetric off-diagonal part), degrees, +x towards +y."""
        return float(np.degrees(0.5 * (self.shear[0] - self.shear[1])))

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record (the stitch attrs and metrics); an undetermined value (infinite sigma) is None."""

        def num(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        return {
            "mag_y": num(self.mag[0]),
            "mag_x": num(self.mag[1]),
            "mag_sigma_y": num(self.mag_sigma[0]),
            "mag_sigma_x": num(self.mag_sigma[1]),
            "shear_yx": num(self.shear[0]),
            "shear_xy": num(self.shear[1]),
            "shear_sigma_yx": num(self.shear_sigma[0]),
            "shear_sigma_xy": num(self.shear_sigma[1]),
            "nominal_y": self.nominal[0],
            "nominal_x": self.nominal[1],
            "significant": list(self.significant),
            "applied": list(self.applied),
            "stage_sigma_px": self.stage_sigma_px,
            "n_tiles": self.n_tiles,
            "dof": self.dof,
            "predicted_translation_error_px": num(self.predicted_px),
            "shear_nominal_yx": self.shear_nominal[0],
            "shear_nominal_xy": self.shear_nominal[1],
            "shear_significant": list(self.shear_significant),
            "shear_applied": list(self.shear_applied),
            "rotation_deg": num(self.rotation_deg),
            "predicted_shear_error_px": num(self.shear_predicted_px),
            "predicted_linear_error_px": num(self.linear_predicted_px),
            "source": "stage statistics of all solved tiles of all sections",
        }


def stage_magnification(
    detector: npt.ArrayLike,
    stage: npt.ArrayLike,
    groups: npt.ArrayLike,
    use: npt.ArrayLike,
    *,
    nominal: tuple[float, float] = (0.0, 0.0),
    stage_sigma_px: float = 5.0,
    allow: bool = True,
    joint: tuple[Sequence[float], Sequence[float]] | None = None,
    shear_nominal: tuple[float, float] = (0.0, 0.0),
) -> MagnificationEstimate:
    """Fit ``stage = (1 + M) detector`` per section-centred tile (see module docstring).

    Parameters
    ----------
    detector : (T, 2)
        Tile positions in the detector frame (what the overlaps fix), any origin.
    stage : (T, 2)
        Recorded stage positions (px).
    groups : (T,) int
        Section (connected component) of each tile: each has its own translation.
    use : (T,) bool
        Tiles placed by their overlaps (a tile placed by the stage would pull ``M`` to 0).
    nominal : (y, x)
        Magnification the solve assumed (kept where the estimate is not significant).
    shear_nominal : (yx, xy)
        Off-diagonal terms the solve assumed (the same rule).
    stage_sigma_px : float
        Stated stage error, pooled with the measured scatter.
    allow : bool
        False where the magnification is fixed from elsewhere (a calibration file): report, never apply.
    joint : (values, sigmas), optional
        ``(mag_y, mag_x[, shear_yx, shear_xy])`` and their sigmas from the joint solve of overlaps and stage priors
        (:mod:`._positions`, stage error set to the scatter measured here). Its values are preferred to the
        regression's: ``detector`` comes from a solve whose stage priors pulled it towards the stage's scale (a
        few % of the magnification with an accurate stage), and the joint sigma includes the overlaps' own
        error. Each sigma is the larger of the joint's and the regression's over the tiles ``use`` holds.
    """
    q = np.asarray(detector, np.float64).reshape(-1, 2)
    s = np.asarray(stage, np.float64).reshape(-1, 2)
    g = np.asarray(groups).ravel()
    keep = np.asarray(use, bool).ravel().copy()
    xq, xs = np.zeros_like(q), np.zeros_like(s)
    n_groups = 0
    for c in np.unique(g[keep]):
        members = keep & (g == c)
        if members.sum() < 2:  # a lone tile says nothing about scale
            keep &= ~members
            continue
        n_groups += 1
        xq[members] = q[members] - q[members].mean(axis=0)
        xs[members] = s[members] - s[members].mean(axis=0)
    n = int(keep.sum())
    xtx = xq[keep].T @ xq[keep]
    dof_axis = n - n_groups - 2
    if n < 3 or dof_axis < 0 or np.linalg.cond(xtx) > 1e12:
        # one row or column only: the map is not determined in every direction
        big = (float("inf"), float("inf"))
        pred = float("inf")  # nothing said about the scale
        no = (False, False)
        return MagnificationEstimate(
            nominal, big, shear_nominal, big, nominal, no, stage_sigma_px, n, 0, pred, shear_nominal, no
        )
    coef = np.linalg.solve(xtx, xq[keep].T @ xs[keep])  # (2 in, 2 out): xs ~ xq @ coef
    resid = xs[keep] - xq[keep] @ coef
    dof = 2 * dof_axis
    pooled = (float(np.sum(resid**2)) + PRIOR_DOF * stage_sigma_px**2) / (dof + PRIOR_DOF)
    sig = float(np.sqrt(pooled))
    cov = np.linalg.inv(xtx) * pooled
    se = np.sqrt(np.diag(cov))  # same for both output axes: (sigma of the y-input term, of the x-input term)
    mag = (float(coef[0, 0] - 1.0), float(coef[1, 1] - 1.0))
    mag_sigma = (float(se[0]), float(se[1]))
    shear = (float(coef[1, 0]), float(coef[0, 1]))  # y from x, x from y
    shear_sigma = (float(se[1]), float(se[0]))
    if joint is not None:
        # The joint value, but never a smaller sigma than the regression's: the joint solve counts every
        # tile's stage prior as if its overlaps were right, and a false match on a pair no loop checks
        # (draw 70 of the 12 Mpx sweep: two of them, 60-100 px off) then passes for a significant shear
        # (-1.2 % at "7.7 sigma", 1.7 of the regression's over the tiles loops verify).
        mag = (float(joint[0][0]), float(joint[0][1]))
        mag_sigma = (max(float(joint[1][0]), mag_sigma[0]), max(float(joint[1][1]), mag_sigma[1]))
        if len(joint[0]) == 4:
            shear = (float(joint[0][2]), float(joint[0][3]))
            shear_sigma = (max(float(joint[1][2]), shear_sigma[0]), max(float(joint[1][3]), shear_sigma[1]))
    k = significance_threshold(dof + PRIOR_DOF)

    def applies(value: tuple[float, float], nom: tuple[float, float], sd: tuple[float, float]) -> tuple[bool, bool]:
        a, b = (
            bool(allow and k * s < abs(m - n0) <= PLAUSIBLE_LINEAR) for m, n0, s in zip(value, nom, sd, strict=True)
        )
        return a, b

    # what the linear map from the stage can deliver: each term's sigma at each tile's lever arm
    lev = xq[keep]
    on_y = (mag_sigma[0] * lev[:, 0], shear_sigma[0] * lev[:, 1])  # y error: mag_y on y, shear_yx on x
    on_x = (shear_sigma[1] * lev[:, 0], mag_sigma[1] * lev[:, 1])
    predicted = float(np.median(np.hypot(on_y[0], on_x[1])))
    shear_pred = float(np.median(np.hypot(on_y[1], on_x[0])))
    linear_pred = float(np.median(np.sqrt(on_y[0] ** 2 + on_y[1] ** 2 + on_x[0] ** 2 + on_x[1] ** 2)))
    return MagnificationEstimate(
        mag,
        mag_sigma,
        shear,
        shear_sigma,
        nominal,
        applies(mag, nominal, mag_sigma),
        sig,
        n,
        dof,
        predicted,
        shear_nominal,
        applies(shear, shear_nominal, shear_sigma),
        shear_pred,
        linear_pred,
    )
