"""The seams' common bias measured on a seam acquisition: the same optics at the production overlap, a precise stage.

The bias an optics field outside the model puts on every seam of one direction (:mod:`._seam_bias`) closes
around every loop, so no overlap sees it; the stage does, when it is precise. A *seam acquisition* images a
textured sample through the same optics, at the production overlap (the seam then falls on the same detector
band), with a stage good to ~0.1 px. With the fitted distortion taken out, each correspondence's offset minus
the stage's step is the bias at that point of the seam plus the stage's error; averaged over the pairs of each
direction it is the bias, as a profile along the seam (it varies along it), with its standard error from the
scatter of the pairs (each pair's points share its stage error, so a pair, not a point, is one sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._seam_bias import correct_seam_bias, orientation

if TYPE_CHECKING:
    from ..optics import DistortionModel
    from ._overlap import PairMatch

__all__ = ["SeamCalibration", "correct_seam_profile", "measure_seam_bias", "overlap_px"]

_Array = npt.NDArray[np.float64]

#: Bins of the profile along the seam (the field varies on the scale of a tile, not finer).
N_BINS = 8
#: The production overlap may differ from the calibrated one by this fraction of the tile and still use it.
OVERLAP_TOLERANCE = 0.01


@dataclass(frozen=True)
class SeamCalibration:
    """The bias of every seam of a direction, measured at one overlap.

    Attributes
    ----------
    profile : ndarray (2, B, 2)
        ``[direction, bin, axis]``: the (dy, dx) px a horizontal (0) / vertical (1) pair's measured offset
        carries, for a positive stage step, in ``B`` equal bins along the seam (``y`` on a horizontal seam,
        ``x`` on a vertical one) over the tile. One bin is a constant bias.
    sigma : ndarray (2, B, 2)
        1-sigma of each bin's value.
    overlap_px : (float, float)
        The overlap (px) at which it was measured: across the horizontal seams (along ``x``), the vertical (``y``).
    tile_shape : (int, int)
    n_pairs : (int, int)
        Pairs of each direction that measured it.
    """

    profile: _Array
    sigma: _Array
    overlap_px: tuple[float, float]
    tile_shape: tuple[int, int]
    n_pairs: tuple[int, int] = (0, 0)

    def seam_sigma(self) -> tuple[float, float]:
        """1-sigma (px) of the constant part left across the horizontal seams (``y``) and the vertical ones
        (``x``) once the profile is taken out: the sigma of its mean over the bins (``seam_sigma`` of
        :func:`.solve_positions`)."""
        s = np.asarray(self.sigma, np.float64)
        b = s.shape[1]
        return float(np.sqrt(np.sum(s[0, :, 0] ** 2)) / b), float(np.sqrt(np.sum(s[1, :, 1] ** 2)) / b)

    def applies(self, overlap_px: Sequence[float], tile_shape: Sequence[int]) -> tuple[bool, str]:
        """Whether it holds for an acquisition of ``overlap_px`` (as :attr:`overlap_px`) and ``tile_shape``,
        and one plain line saying so."""
        shape = (int(tile_shape[0]), int(tile_shape[1]))
        cal = 100.0 * self.overlap_px[0] / self.tile_shape[1]
        here = 100.0 * float(overlap_px[0]) / shape[1]
        if shape != tuple(self.tile_shape):
            return False, (
                f"calibrated on {self.tile_shape[0]} x {self.tile_shape[1]} px tiles, this acquisition has "
                f"{shape[0]} x {shape[1]}: not applied"
            )
        off = [abs(float(o) - c) / n for o, c, n in zip(overlap_px, self.overlap_px, (shape[1], shape[0]), strict=True)]
        off = [x for x in off if np.isfinite(x)]  # a single row or column has one direction only
        if not off or max(off) > OVERLAP_TOLERANCE:
            return False, f"calibrated at {cal:.1f} %, this acquisition has {here:.1f} %: not applied"
        sy, sx = self.seam_sigma()
        return True, (
            f"calibrated at {cal:.1f} %, this acquisition has {here:.1f} %: applied "
            f"(sigma {sy:.3f} px across the horizontal seams, {sx:.3f} px across the vertical ones)"
        )


def measure_seam_bias(
    matches: Sequence[PairMatch],
    stage_px: npt.ArrayLike,
    distortion: DistortionModel,
    *,
    tile_shape: tuple[int, int],
    n_bins: int = N_BINS,
    min_pairs: int = 2,
) -> SeamCalibration:
    """The seams' common bias from a seam acquisition's matches, its stage (precise) and the fitted distortion.

    Each informative pair's correspondences give ``(p_ref + D(p_ref)) - (p_mov + D(p_mov))`` (``D`` the model's
    displacement) minus the stage's step: the bias at that point of the seam, signed by the step (a pair
    stepping backwards carries minus it). Per direction and bin the mean over the pairs of each pair's mean
    in the bin; its sigma their scatter over ``sqrt(n)`` (a bin with one pair: the scatter of all its
    direction's pair means).

    Raises
    ------
    ValueError
        When a direction has fewer than ``min_pairs`` informative pairs.
    """
    stage = np.asarray(stage_px, np.float64).reshape(-1, 2)
    h, w = int(tile_shape[0]), int(tile_shape[1])
    per_bin: list[list[list[_Array]]] = [[[] for _ in range(n_bins)] for _ in range(2)]
    whole: list[list[_Array]] = [[], []]
    overlap: list[list[float]] = [[], []]
    for m in matches:
        if not m.ok or len(m.point_weights) == 0:
            continue
        o, sign = orientation(m)
        dya, dxa = distortion.displacement(m.points_ref[:, 0], m.points_ref[:, 1], (h, w))
        dyb, dxb = distortion.displacement(m.points_mov[:, 0], m.points_mov[:, 1], (h, w))
        world = m.points_ref + np.stack([dya, dxa], 1) - m.points_mov - np.stack([dyb, dxb], 1)
        step = stage[m.moving] - stage[m.reference]
        res = sign * (world - step)
        wts = np.asarray(m.point_weights, np.float64)
        whole[o].append(np.average(res, axis=0, weights=wts))
        overlap[o].append((w, h)[o] - abs(float(step[1 - o])))
        along = m.points_ref[:, o]
        k = np.clip((along / (h, w)[o] * n_bins).astype(int), 0, n_bins - 1)
        for b in np.unique(k):
            sel = k == b
            per_bin[o][b].append(np.average(res[sel], axis=0, weights=wts[sel]))
    counts = (len(whole[0]), len(whole[1]))
    if min(counts) < min_pairs:
        raise ValueError(
            f"{counts[0]} horizontal and {counts[1]} vertical informative pairs (need {min_pairs} of each) "
            "to measure the seams' bias"
        )
    profile = np.zeros((2, n_bins, 2))
    sigma = np.zeros((2, n_bins, 2))
    for o in range(2):
        spread = np.std(np.asarray(whole[o]), axis=0, ddof=1)
        for b in range(n_bins):
            v = np.asarray(per_bin[o][b]).reshape(-1, 2)
            if len(v) == 0:  # no texture there: the direction's mean, with its whole spread
                profile[o, b] = np.mean(whole[o], axis=0)
                sigma[o, b] = spread
                continue
            profile[o, b] = v.mean(axis=0)
            s = np.std(v, axis=0, ddof=1) if len(v) > 1 else spread
            sigma[o, b] = s / np.sqrt(len(v))
    return SeamCalibration(
        profile=profile,
        sigma=sigma,
        overlap_px=(float(np.median(overlap[0])), float(np.median(overlap[1]))),
        tile_shape=(h, w),
        n_pairs=counts,
    )


def correct_seam_profile(matches: Sequence[PairMatch], calibration: SeamCalibration) -> list[PairMatch]:
    """The matches with the calibrated bias taken out, each point by the profile where it lies along its seam.

    One bin is the constant bias of :func:`._seam_bias.correct_seam_bias` (which this is then). Otherwise the
    profile is interpolated linearly between the bins' centres (held flat beyond the outer ones); each moving
    point moves by it and the measured ``shift`` by its weighted mean over the pair's points.
    """
    prof = np.asarray(calibration.profile, np.float64)
    n_bins = prof.shape[1]
    if n_bins == 1:
        return correct_seam_bias(matches, prof[:, 0, :])
    h, w = calibration.tile_shape
    out = []
    for m in matches:
        if not len(m.points_ref):
            out.append(m)
            continue
        o, sign = orientation(m)
        length = (h, w)[o]
        centres = (np.arange(n_bins) + 0.5) * length / n_bins
        along = m.points_ref[:, o]
        d = sign * np.stack([np.interp(along, centres, prof[o, :, a]) for a in range(2)], axis=1)
        wts = np.asarray(m.point_weights, np.float64)
        mean = np.average(d, axis=0, weights=wts) if wts.sum() > 0 else d.mean(axis=0)
        shift = (float(m.shift[0] - mean[0]), float(m.shift[1] - mean[1])) if m.ok else m.shift
        out.append(replace(m, shift=shift, points_mov=m.points_mov + d))
    return out


def overlap_px(matches: Sequence[PairMatch], tile_shape: tuple[int, int]) -> tuple[float, float]:
    """(horizontal, vertical) overlap px of an acquisition from its pairs' stage steps (the median; NaN for a
    direction without pairs): what :meth:`SeamCalibration.applies` compares."""
    out: list[list[float]] = [[], []]
    for m in matches:
        o, _ = orientation(m)
        out[o].append((tile_shape[1], tile_shape[0])[o] - abs(float(m.expected[1 - o])))
    h, v = (float(np.median(x)) if x else float("nan") for x in out)
    return h, v
