"""How much each pair's offset scatters beyond its points' noise, and the normal matrix that knows it.

A pair's points are not independent: where the optics field outside the model varies along a seam, a
pair whose texture lies at one end of it measures that end's offset, and its neighbour the other's. Every
point of the pair then carries the same error, which no number of points averages away. The points'
scatter about the fit (the point-level chi-square) cannot see it; the pairs' mean residuals around the
graph's loops can. On the sweep's draw 80 (10 x 8 tiles of 256 px, sparse tissue) they scattered 1.9x
what their points' noise allows, and three tiles lay at 3.5-3.8 of the sigma the points gave.

The model: every point of pair ``p`` on axis ``a`` (a *block*) carries noise of variance ``s2 / w`` and a
common offset of variance ``tau2``. ``tau2`` is the moment estimate of Paule and Mandel (1982): the one
for which the blocks' mean residuals, each over its modelled variance, sum to their degrees of freedom
(:func:`excess_variance`). Each block's covariance ``s2 W^-1 + tau2 1 1^T`` has a rank-one inverse
correction (Sherman-Morrison), so the normal matrix that carries it stays sparse (:func:`block_normal`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import sparse

__all__ = ["block_noise", "block_normal", "excess_variance", "typical_noise"]

_Array = npt.NDArray[np.float64]


def _block_sums(blocks: npt.NDArray[np.int_], values: _Array, n_blocks: int) -> _Array:
    return np.bincount(blocks, weights=values, minlength=n_blocks).astype(np.float64)


def excess_variance(
    residual: _Array, weights: _Array, blocks: npt.NDArray[np.int_], s2: float | _Array, n_params: int
) -> float:
    """``tau2`` (px^2): the variance every point of a block shares beyond ``s2 / weight``, 0 when the blocks'
    mean residuals scatter no more than their points allow.

    ``residual`` (per equation row) is measured minus fitted, ``blocks`` the block of each row; ``n_params``
    the unknowns the blocks' means determine (the relative tile positions and the radial terms), so the
    degrees of freedom are the blocks with weight less ``n_params`` (none left: 0, nothing to say).

    >>> rng = np.random.default_rng(0)
    >>> blocks = np.repeat(np.arange(400), 50)
    >>> r = rng.normal(0, 1, 20000) + np.repeat(rng.normal(0, 0.3, 400), 50)
    >>> round(excess_variance(r, np.ones(20000), blocks, 1.0, 0), 2)
    0.09
    >>> excess_variance(rng.normal(0, 1, 20000), np.ones(20000), blocks, 1.0, 0) < 0.01
    True
    """
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    w_sum = _block_sums(blocks, weights, n_blocks)
    seen = w_sum > 0
    dof = int(seen.sum()) - int(n_params)
    if dof <= 0:
        return 0.0
    mean = _block_sums(blocks, weights * residual, n_blocks)[seen] / w_sum[seen]
    noise = (np.broadcast_to(np.asarray(s2, np.float64), (n_blocks,)))[seen] / w_sum[seen]

    def excess(tau2: float) -> float:  # decreasing in tau2: the chi-square of the means less its dof
        return float(np.sum(mean**2 / (noise + tau2))) - dof

    if excess(0.0) <= 0.0:
        return 0.0
    lo, hi = 0.0, max(float(np.mean(mean**2)), 1e-12)
    while excess(hi) > 0.0:
        hi *= 4.0
    for _ in range(60):  # bisection: to ~1e-18 of hi
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0.0 else (lo, mid)
    return 0.5 * (lo + hi)


def block_noise(residual: _Array, weights: _Array, blocks: npt.NDArray[np.int_], s2: float) -> _Array:
    """Per block, the scale of its points' variances: their own scatter about the block's mean, pooled as
    :data:`_PRIOR_POINTS` points' worth with what blocks of about as many points show (:func:`typical_noise`;
    ``s2``, the pooled scale, where too few blocks say), never below ``s2``.

    A pair with few points lies where texture is scarce, and there the points' weights say less than they
    claim: on draw 87 (101 photons) the quarter of pairs with the fewest points (median 4) scattered about
    their own mean at 11.8 times their weights' variance, the pooled value being 5.6 (set by the many-point
    pairs, 3.8 on the quarter with the most), and their mean residuals around the loops at 2x the z of the
    others. Pooled with the sample's value, a 4-point block kept a third of its scatter, and the excess left
    in such blocks' means passed, in :func:`excess_variance`, for a common error of every pair. The floor
    stays: on tiles cut from real images, the many-point pairs' own scatter understates their error (letting
    them below ``s2`` doubled the astronaut's median error, 0.035 -> 0.080 px).
    """
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    w_sum = _block_sums(blocks, weights, n_blocks)
    mean = _block_sums(blocks, weights * residual, n_blocks) / np.maximum(w_sum, 1e-300)
    dev = residual - mean[blocks]
    own = _block_sums(blocks, weights * dev * dev, n_blocks)
    points = np.bincount(blocks, minlength=n_blocks).astype(np.float64)
    dof = np.maximum(points - 1, 0)
    prior = typical_noise(own, dof, points, s2)
    pooled = (own + _PRIOR_POINTS * prior) / (dof + _PRIOR_POINTS)
    out: _Array = np.maximum(pooled, s2)
    return out


#: Points' worth of the typical scale in each block's own (a block of 4 points: its own scatter counts 3 / 11).
_PRIOR_POINTS = 8.0
#: Blocks with scatter to show per size class of :func:`typical_noise` (at most 5 classes).
_CLASS_BLOCKS = 12


def typical_noise(own: _Array, dof: _Array, points: _Array, s2: float) -> _Array:
    """Per block, the scale of point variance that blocks of about as many points show: the blocks split into
    up to 5 classes of equal count by their points, each class's pooled scatter (summed ``own`` over summed
    ``dof``, as ``s2`` is over all); ``s2`` where fewer than 2 x :data:`_CLASS_BLOCKS` blocks have scatter.

    >>> rng = np.random.default_rng(0)
    >>> dof = np.repeat([3.0, 29.0], 200)
    >>> own = rng.chisquare(dof) * np.repeat([9.0, 1.0], 200)  # the few-point blocks scatter 9x more
    >>> got = typical_noise(own, dof, dof + 1, 1.0)
    >>> bool(8.0 < got[0] < 10.0 and 0.9 < got[-1] < 1.1)
    True
    """
    use = dof >= 1
    n_classes = min(5, int(use.sum()) // _CLASS_BLOCKS)
    if n_classes < 2:
        return np.full(len(own), float(s2))
    inner = np.unique(np.quantile(points[use], np.linspace(0, 1, n_classes + 1)[1:-1]))
    # a class holds the sizes up to its edge, so blocks of one size never split
    cls = np.searchsorted(inner, points, side="left")
    n = len(inner) + 1
    total = np.bincount(cls[use], weights=own[use], minlength=n)
    count = np.bincount(cls[use], weights=dof[use], minlength=n)
    scale = np.where(count > 0, total / np.maximum(count, 1e-300), float(s2))
    return scale[cls]


def block_normal(
    design: sparse.spmatrix, weights: _Array, blocks: npt.NDArray[np.int_], s2: float | _Array, tau2: float
) -> sparse.csc_matrix:
    """The data normal matrix under the blocks' covariance ``s2 W^-1 + tau2 1 1^T`` (``s2`` one value, or one
    per block: :func:`block_noise`): ``A^T diag(w / s2) A`` less, per block, ``c (A^T w)(A^T w)^T`` with
    ``c = tau2 / (s2 (s2 + tau2 W_b))`` (``W_b`` the block's summed weight).
    """
    a = sparse.csr_matrix(design)
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    s2_b = np.broadcast_to(np.asarray(s2, np.float64), (n_blocks,))
    base = a.T @ a.multiply((weights / s2_b[blocks])[:, None]).tocsr()
    if tau2 <= 0.0 or not len(blocks):
        return sparse.csc_matrix(base)
    w_sum = _block_sums(blocks, weights, n_blocks)
    c = np.where(w_sum > 0, tau2 / (s2_b * (s2_b + tau2 * w_sum)), 0.0)
    member = sparse.csr_matrix((weights, (np.arange(len(blocks)), blocks)), shape=(len(blocks), n_blocks))
    u = (a.T @ member).tocsc()  # (unknowns, blocks): each block's A^T w
    return sparse.csc_matrix(base - u @ sparse.diags(c) @ u.T)
