"""What the overlaps cannot see of an optics field outside the model: every seam of one direction biased alike.

Every tile has the same optics, so a displacement field the model lacks shifts every horizontal pair's
offset by one vector ``b_h`` and every vertical pair's by ``b_v``. Such a bias closes around every loop:
the solve takes it for tile positions and leaves no residual. Along the pair it is a scale (the
magnification, which the stage statistics estimate); across it (``y`` on horizontal seams, ``x`` on
vertical ones) it is a shear of the whole mosaic that only the stage could see, to ``σ_stage`` over
the lever arm: a few 1e-3 on small grids, against biases of 1e-4.

What the overlaps do see is how the field varies *along* each seam. Neighbouring blocks of one pair
move together under a smooth field, while their matching noise is independent, so the lag-one
covariance of the residuals along a seam measures the field's variation free of the noise
(:func:`seam_variation`). The constant part the solve cannot see is taken to be as large as that
variation: a field with no preferred scale has no reason to be flatter along a seam than across it.
Each tile's systematic error is then its lever in the graph of used pairs times that size
(:func:`seam_levers`): on a regular grid, its column (for the horizontal seams' ``y`` bias) and its
row (for the vertical seams' ``x`` bias) about its island's centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import linalg as splinalg

if TYPE_CHECKING:
    from ._overlap import PairMatch

__all__ = ["correct_seam_bias", "orientation", "seam_levers", "seam_systematic", "seam_variation"]

_Array = npt.NDArray[np.float64]
_Mask = npt.NDArray[np.bool_]

#: Residuals of two blocks of one seam further apart than this fraction of the seam are not compared.
_NEAR = 0.125
#: Fewest kept points a pair needs to say anything about its seam.
_MIN_POINTS = 4


def orientation(match: PairMatch) -> tuple[int, float]:
    """``(0, sign)`` for a horizontal pair (the moving tile beside the reference), ``(1, sign)`` for a vertical
    one; ``sign`` is that of the stage's step along the pair (a seam's bias flips with the pair's order)."""
    dy, dx = match.expected
    if abs(dx) >= abs(dy):
        return 0, 1.0 if dx >= 0 else -1.0
    return 1, 1.0 if dy >= 0 else -1.0


def seam_variation(
    matches: Sequence[PairMatch], residuals: Sequence[_Array], point_keep: Sequence[_Mask], active: _Mask
) -> _Array:
    """(2,) rms (px) of the structured residual across horizontal seams (its ``y``) and vertical ones (``x``).

    Pooled over the used pairs of each direction: the mean product of the residuals of neighbouring points
    along a seam (each pair's mean removed); 0 where it is within :data:`_SIGNIFICANT` standard errors of 0
    (noise alone) or no pair has :data:`_MIN_POINTS` points.
    """
    prods: list[list[_Array]] = [[], []]
    diffs: list[list[_Array]] = [[], []]
    for m, r, keep, used in zip(matches, residuals, point_keep, active, strict=True):
        if not used or keep.sum() < _MIN_POINTS:
            continue
        o, _ = orientation(m)
        along = m.points_ref[keep, o]  # y along a horizontal seam, x along a vertical one
        res = r[keep, o]  # the component across the pair: y on a horizontal seam
        order = np.argsort(along, kind="stable")
        s, v = along[order], res[order] - res.mean()
        span = max(float(np.ptp(s)), 1.0)
        near = np.diff(s) <= _NEAR * span
        prods[o].append((v[:-1] * v[1:])[near])
        diffs[o].append(np.asarray(np.diff(v) ** 2, np.float64)[near])
    out = np.zeros(2)
    for o in range(2):
        p = np.concatenate(prods[o]) if prods[o] else np.zeros(0)
        if len(p) < 2:
            continue
        # noise alone gives products of either sign, of standard error noise^2 / sqrt(n); the noise from
        # the neighbours' differences, which a smooth field hardly moves: a covariance within it is no field
        noise_var = 0.5 * float(np.concatenate(diffs[o]).mean())
        cov = float(p.mean())
        out[o] = np.sqrt(cov) if cov > _SIGNIFICANT * noise_var / np.sqrt(len(p)) else 0.0
    return out


#: Standard errors (of noise alone) the residuals' neighbour covariance must clear to count as a field.
_SIGNIFICANT = 3.0


def seam_levers(n_tiles: int, matches: Sequence[PairMatch], active: _Mask, islands: npt.NDArray[np.int_]) -> _Array:
    """(T, 2): how far each tile moves (about its island's mean) when every used pair of one direction is
    biased by 1 px: column 0 for the horizontal pairs, 1 for the vertical ones.

    The least-squares response of the pair graph (unit weights) to that bias: on a full grid, the tile's
    column and row about the grid's centre. ``islands`` are the components of the graph of used pairs.
    """
    used = [(m, orientation(m)) for m, a in zip(matches, active, strict=True) if a]
    out = np.zeros((n_tiles, 2))
    if not used:
        return out
    e = len(used)
    rows = np.repeat(np.arange(e), 2)
    cols = np.array([[m.reference, m.moving] for m, _ in used]).ravel()
    vals = np.tile([-1.0, 1.0], e)
    inc = sparse.csr_matrix((vals, (rows, cols)), shape=(e, n_tiles))
    bias = np.zeros((e, 2))
    for k, (_, (o, sign)) in enumerate(used):
        bias[k, o] = sign
    # a tiny ridge fixes each island's free translation; the island's mean is removed below
    lap = (inc.T @ inc + 1e-9 * sparse.identity(n_tiles)).tocsc()
    out = np.asarray(splinalg.spsolve(lap, inc.T @ bias)).reshape(n_tiles, 2)
    touched = np.zeros(n_tiles, bool)
    touched[cols] = True
    for c in np.unique(islands[touched]):
        members = touched & (islands == c)
        out[members] -= out[members].mean(axis=0)
    out[~touched] = 0.0
    return out


def seam_systematic(variation: npt.ArrayLike, levers: _Array) -> _Array:
    """(T,) 1-sigma (px, larger axis) each tile's position carries from the seams' unseen bias: ``y`` from
    the horizontal seams (``variation[0]`` times the tile's horizontal lever), ``x`` from the vertical ones.

    >>> seam_systematic([0.2, 0.1], np.array([[0.5, -0.5], [-1.5, 0.5]])).round(2).tolist()
    [0.1, 0.3]
    """
    v = np.asarray(variation, np.float64)
    out: _Array = np.max(np.abs(levers) * v[None, :], axis=1)
    return out


def correct_seam_bias(matches: Sequence[PairMatch], bias: npt.ArrayLike) -> list[PairMatch]:
    """The matches with a calibrated seam bias taken out: ``bias`` (2, 2) is the (dy, dx) px every
    horizontal (row 0) and vertical (row 1) pair's measured offset carries when its stage step is positive.

    The moving tile's points move by the bias (its measured ``shift`` with them), so the solve sees the
    offsets the optics would give without the field; a pair stepping the other way carries minus the bias.
    """
    b = np.asarray(bias, np.float64).reshape(2, 2)
    out = []
    for m in matches:
        o, sign = orientation(m)
        d = sign * b[o]
        out.append(
            replace(
                m,
                shift=(float(m.shift[0] - d[0]), float(m.shift[1] - d[1])) if m.ok else m.shift,
                points_mov=m.points_mov + d if len(m.points_mov) else m.points_mov,
            )
        )
    return out
