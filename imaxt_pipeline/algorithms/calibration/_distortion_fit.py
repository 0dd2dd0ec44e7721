"""Distortion and magnification, with uncertainties, from a calibration acquisition.

A calibration acquisition images a densely textured sample with a large tile
overlap (40-45 %) and a slow, accurate stage. The large overlaps put every
detector region in correspondence with several others, which pins the cubic
terms (and the quintic ones, fitted where significant: :func:`..stitching.solve_positions`); the
magnification is a global scale that only the stage can measure
(see :mod:`..stitching`), as are the off-diagonal terms of the linear map (a
camera turned against the stage, ``shear_yx``, ``shear_xy``, fitted with it), so
its uncertainty is the stated stage accuracy over the lever arm of the grid,
``sigma_stage / sqrt(sum_t (x_t - x_mean)**2)``:
1e-4 for 5 x 5 tiles of 256 px at 45 % overlap and a 0.1 px stage (0.02 px
at 230 px from the centre of a normal sample), against 5e-3 for a normal
3 x 3 acquisition with a 3 px stage.

Known bias: each correspondence is a block-averaged shift placed at the
block's centre, so the cubic term leaks into an apparent magnification of
``k * (3 s_u**2 + s_v**2)``, ``s**2 = (B / c)**2 / 12`` for a block of ``B`` px
and a tile half-width ``c``: ``4/3 k (B / W)**2`` for square blocks on a tile
``W`` px wide, 1.5e-4 for 32 px blocks on 256 px tiles, 0.4e-4 for 16 px.

Honest sigmas: the formal ones assume independent correspondences and a field the model holds, and neither
is so (a field outside the model is coherent over the detector). Each coefficient's stated sigma is the
larger of the formal one and a jackknife over ``J x J`` blocks of the detector: the fit repeated with one
block's correspondences left out at a time (:func:`_jackknife_sigma`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from ..optics import DistortionModel
from ..stitching import PairMatch, PositionSolution, adjacent_pairs, solve_positions

__all__ = ["DistortionFit", "calibration_pairs", "fit_calibration_distortion"]


def calibration_pairs(rows: int, cols: int, *, diagonal: bool = False) -> list[tuple[int, int]]:
    """Neighbour pairs ``(a, b)`` of a row-major grid, optionally with the diagonal ones.

    With an overlap ``f`` a diagonal neighbour shares ``f**2`` of a tile, all
    of it in a corner where the cubic terms are largest.
    """
    out = adjacent_pairs(rows, cols)
    if diagonal:
        for r in range(rows - 1):
            for c in range(cols):
                i = r * cols + c
                out += [(i, i + cols + d) for d in (1, -1) if 0 <= c + d < cols]
    return out


@dataclass(frozen=True)
class DistortionFit:
    """Result of :func:`fit_calibration_distortion`.

    Attributes
    ----------
    model : DistortionModel
    sigma : dict of str to float
        1-sigma uncertainty of each coefficient.
    positions : ndarray (T, 2)
        Solved tile positions (stage pixel frame).
    n_pairs, n_used, n_points : int
        Pairs given, pairs used, correspondences used.
    residual_px : float
        Median residual of the used pairs (px).
    stage_scatter_px : float
        Root-mean-square of solved minus recorded positions after removing a
        translation and the fitted scale: an estimate of the stage error to
        compare with the stated one.
    """

    model: DistortionModel
    sigma: dict[str, float]
    positions: npt.NDArray[np.float64]
    n_pairs: int
    n_used: int
    n_points: int
    residual_px: float
    stage_scatter_px: float

    def coefficients(self) -> npt.NDArray[np.float64]:
        """The fitted coefficients in :attr:`.DistortionModel.COEFFICIENTS` order (that of calibration files)."""
        return self.model.coefficients()

    def sigmas(self) -> npt.NDArray[np.float64]:
        """Uncertainties in the order of :meth:`coefficients`."""
        # a term the fit did not estimate (a record made before the shear terms) is fixed: sigma 0
        return np.array([self.sigma.get(k, 0.0) for k in DistortionModel.COEFFICIENTS], np.float64)

    def describe(self) -> str:
        """Human-readable coefficients ± sigma and fit quality."""
        lines = [
            f"distortion from {self.n_used} of {self.n_pairs} pairs ({self.n_points} points), "
            f"median pair residual {self.residual_px:.3f} px, stage scatter {self.stage_scatter_px:.3f} px"
        ]
        # sigma 0 is a term the fit held (a quintic not significant, a term the record lacks), not one it knows exactly
        lines += [
            f"  {k:5} = {v:+.6f} " + (f"± {s:.6f}" if s > 0 else "(not fitted: held at this value)")
            for k, v, s in zip(DistortionModel.COEFFICIENTS, self.coefficients(), self.sigmas(), strict=True)
        ]
        return "\n".join(lines)


def fit_calibration_distortion(
    matches: Sequence[PairMatch],
    stage_px: npt.ArrayLike,
    *,
    tile_shape: tuple[int, int],
    stage_sigma_px: float,
    min_pairs: int = 4,
    jackknife: int = 4,
) -> DistortionFit:
    """Fit ``mag_y, mag_x, k_y, k_x, shear_yx, shear_xy`` (and ``k5_y``, ``k5_x`` where significant) with
    uncertainties from a calibration acquisition.

    Parameters
    ----------
    matches : sequence of PairMatch
        All neighbour pairs (see :func:`calibration_pairs`); tile indices refer
        to rows of ``stage_px``.
    stage_px : ndarray (T, 2)
        Recorded positions in px.
    tile_shape : (int, int)
        Detector tile shape.
    stage_sigma_px : float
        Stated stage accuracy (1 sigma, per axis): the weight of the stage,
        which alone fixes the magnification.
    min_pairs : int
        Fewest informative pairs accepted.
    jackknife : int
        Blocks per detector axis of the jackknife (0: the formal sigmas alone).

    Returns
    -------
    DistortionFit
        The linear map's sigmas (magnification and shear) are scaled up when the observed stage scatter
        exceeds ``stage_sigma_px``; the cubic sigmas are scaled to the observed
        scatter of the correspondences (see :class:`..stitching.PositionSolution`).

    Raises
    ------
    ValueError
        If fewer than ``min_pairs`` pairs are informative or fewer than
        three tiles are tied to a neighbour (no lever arm for the scale).
    """
    if not stage_sigma_px > 0:
        raise ValueError(f"stage_sigma_px must be > 0, got {stage_sigma_px}")
    stage = np.asarray(stage_px, np.float64)

    def solve(ms: Sequence[PairMatch]) -> PositionSolution:
        return solve_positions(
            ms,
            stage,
            tile_shape=tile_shape,
            estimate_distortion=True,
            fit_magnification=True,
            quintic=True,  # the large overlaps separate it from the cubic (normal ones do not)
            prior_sigma_px=stage_sigma_px,
        )

    sol = solve(matches)
    used = sol.pairs[sol.pairs["used"]]
    if len(used) < min_pairs:
        raise ValueError(
            f"only {len(used)} of {len(sol.pairs)} tile pairs could be matched (need {min_pairs}): "
            "is the calibration sample textured and the overlap large?"
        )
    keep = sol.constrained
    if keep.sum() < 3:
        raise ValueError(f"only {int(keep.sum())} tiles are tied to a neighbour: no lever arm for the magnification")
    d = sol.positions[keep] - stage[keep]
    d -= d.mean(axis=0)
    dof = max(2 * int(keep.sum()) - 6, 1)  # translation and the linear map's two terms per axis
    scatter = float(np.sqrt(np.sum(d * d) / dof))
    sigma = dict(sol.distortion_sigma)
    inflate = max(1.0, scatter / stage_sigma_px)
    for k in DistortionModel.LINEAR:
        sigma[k] *= inflate
    if jackknife > 1:
        jack = _jackknife_sigma(matches, solve, tile_shape, jackknife, list(sigma))
        sigma = {k: max(v, jack.get(k, 0.0)) for k, v in sigma.items()}
    return DistortionFit(
        model=sol.distortion,
        sigma=sigma,
        positions=sol.positions,
        n_pairs=len(sol.pairs),
        n_used=len(used),
        n_points=int(used["n_points"].sum()),
        residual_px=float(np.median(used["residual"])),
        stage_scatter_px=scatter,
    )


def _jackknife_sigma(
    matches: Sequence[PairMatch],
    solve: Callable[[Sequence[PairMatch]], PositionSolution],
    tile_shape: tuple[int, int],
    blocks: int,
    keys: list[str],
) -> dict[str, float]:
    """Delete-one-block jackknife sigma of each coefficient in ``keys``: the fit without the correspondences
    that touch detector block ``(i, j)`` of a ``blocks x blocks`` grid (in either tile), for each block.

    ``sqrt((n - 1) / n * sum (c_i - mean)^2)`` over the ``n`` blocks whose refit succeeded (none: empty).
    """
    h, w = tile_shape

    def block(p: npt.NDArray[np.float64]) -> npt.NDArray[np.int_]:
        by = np.clip((p[:, 0] / h * blocks).astype(int), 0, blocks - 1)
        bx = np.clip((p[:, 1] / w * blocks).astype(int), 0, blocks - 1)
        return np.asarray(by * blocks + bx, np.int_)

    labels = [(block(m.points_ref), block(m.points_mov)) if len(m.points_ref) else None for m in matches]
    coefs = []
    for b in range(blocks * blocks):
        kept = []
        for m, lab in zip(matches, labels, strict=True):
            if lab is None:
                kept.append(m)
                continue
            keep = (lab[0] != b) & (lab[1] != b)
            kept.append(
                replace(
                    m, points_ref=m.points_ref[keep], points_mov=m.points_mov[keep], point_weights=m.point_weights[keep]
                )
            )
        try:
            model = solve(kept).distortion
        except (ValueError, np.linalg.LinAlgError):  # a block whose loss leaves the system singular: no sample
            continue
        coefs.append([getattr(model, k) for k in keys])
    if len(coefs) < 2:
        return {}
    c = np.asarray(coefs, np.float64)
    n = len(c)
    var = (n - 1) / n * np.sum((c - c.mean(axis=0)) ** 2, axis=0)
    return {k: float(np.sqrt(v)) for k, v in zip(keys, var, strict=True)}
