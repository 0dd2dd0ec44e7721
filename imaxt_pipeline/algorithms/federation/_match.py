"""Bead correspondences between two modalities from an approximate pose: RANSAC, then a robust affine.

From the coarse pose every source bead has a few candidate partners within ``search_px``;
two candidate pairs fix a similarity (the flip is known from the coarse pose), and the hypothesis
whose similarity maps the most source beads within ``tol_px`` of a target bead wins (RANSAC with
every hypothesis tried when there are few). The winner's matches seed an iteratively reweighted
affine (:func:`robust_affine`), re-matched until the match set is stable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from ._affine import AffineFit, apply_affine, decompose_affine, robust_affine, similarity_from_pairs

__all__ = ["BeadMatch", "match_beads", "pose_from_beads"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class BeadMatch:
    """Matched beads: ``pairs`` (M, 2) source/target indices (inliers of ``fit``), ``fit`` None when < 3."""

    pairs: NDArray[np.int64]
    fit: AffineFit | None

    @property
    def n(self) -> int:
        return 0 if self.fit is None else int(self.fit.inliers.sum())


def _mutual_nearest(mapped: Array, tree: cKDTree, tol: float) -> NDArray[np.int64]:
    d, j = tree.query(mapped, distance_upper_bound=tol)
    ok = np.isfinite(d)
    pairs = np.column_stack([np.flatnonzero(ok), j[ok]]).astype(np.int64)
    if len(pairs) == 0:
        return pairs
    # one source per target: the closest
    order = np.argsort(d[ok])
    _, first = np.unique(pairs[order, 1], return_index=True)
    return pairs[np.sort(order[first])]


def match_beads(
    src_xy: Array,
    dst_xy: Array,
    initial: Array,
    *,
    search_px: float,
    tol_px: float,
    max_rotation_deg: float = 10.0,
    max_scale_change: float = 0.1,
    max_hypotheses: int = 1000,
    max_votes: int = 80,
    compatible: NDArray[np.bool_] | None = None,
    seed: int = 0,
) -> BeadMatch:
    """Match source beads to target beads near the pose ``initial`` and fit the affine between them.

    Parameters
    ----------
    src_xy, dst_xy : ndarray (N, 2), (M, 2)
        Bead centres (x, y) in source and target pixels.
    initial : ndarray (2, 3)
        Approximate source -> target affine (the coarse pose).
    search_px : float
        How far (target px) a bead may lie from where ``initial`` puts it.
    tol_px : float
        Match tolerance of the final pose (target px).
    max_rotation_deg, max_scale_change : float
        How far a hypothesis may turn and scale away from ``initial``.
    compatible : ndarray of bool (N, M), optional
        Pairs allowed at all (e.g. radii that agree); every pair when ``None``.
    max_hypotheses, max_votes : int
        Hypotheses tried (all when fewer), source beads that score each.
    seed : int
        Random source of the hypothesis and voter samples.
    """
    src = np.asarray(src_xy, np.float64).reshape(-1, 2)
    dst = np.asarray(dst_xy, np.float64).reshape(-1, 2)
    none = BeadMatch(np.zeros((0, 2), np.int64), None)
    if len(src) < 3 or len(dst) < 3:
        return none
    flip0, rot0, scale0 = decompose_affine(initial)
    tree = cKDTree(dst)
    cand = tree.query_ball_point(apply_affine(initial, src), search_px)
    pairs = np.array([(i, j) for i, js in enumerate(cand) for j in js], np.int64).reshape(-1, 2)
    if compatible is not None and len(pairs):
        pairs = pairs[compatible[pairs[:, 0], pairs[:, 1]]]
    if len(pairs) < 2:
        return none
    rng = np.random.default_rng(seed)
    n_pairs = len(pairs)
    if n_pairs * (n_pairs - 1) // 2 <= 4 * max_hypotheses:
        a, b = np.triu_indices(n_pairs, 1)
    else:  # many beads: a random sample of pair couples (RANSAC proper)
        a, b = rng.integers(0, n_pairs, (2, 4 * max_hypotheses))
    keep = (pairs[a, 0] != pairs[b, 0]) & (pairs[a, 1] != pairs[b, 1])
    a, b = a[keep], b[keep]
    ds = np.hypot(*(src[pairs[a, 0]] - src[pairs[b, 0]]).T) * scale0
    dd = np.hypot(*(dst[pairs[a, 1]] - dst[pairs[b, 1]]).T)
    keep = (ds > 4 * tol_px) & (np.abs(dd / np.maximum(ds, 1e-9) - 1) < max_scale_change)
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return none
    if len(a) > max_hypotheses:
        pick = rng.choice(len(a), max_hypotheses, replace=False)
        a, b = a[pick], b[pick]
    hs = np.stack([src[pairs[a, 0]], src[pairs[b, 0]]], axis=1)
    hd = np.stack([dst[pairs[a, 1]], dst[pairs[b, 1]]], axis=1)
    sims = similarity_from_pairs(hs, hd, flip=flip0)
    m = sims[:, :, :2] @ np.diag([-1.0, 1.0]) if flip0 else sims[:, :, :2]
    rot = np.degrees(np.arctan2(m[:, 1, 0] - m[:, 0, 1], m[:, 0, 0] + m[:, 1, 1]))
    turn = np.abs((rot - rot0 + 180.0) % 360.0 - 180.0)
    sims = sims[turn <= max_rotation_deg]
    if len(sims) == 0:
        return none
    # hypotheses are scored on at most `max_votes` source beads (the refit below uses them all): first
    # every one on a fifth of them, then the best tenth on all (a right pose stands out on a few voters)
    voters = src if len(src) <= max_votes else src[rng.choice(len(src), max_votes, replace=False)]
    if len(sims) > 50 and len(voters) >= 50:
        votes = _votes(sims, voters[: len(voters) // 5], tree, tol_px)
        sims = sims[np.argsort(-votes, kind="stable")[: max(20, len(sims) // 10)]]
    votes = _votes(sims, voters, tree, tol_px)
    pose = sims[int(np.argmax(votes))]
    fit: AffineFit | None = None
    matched = np.zeros((0, 2), np.int64)
    for _ in range(5):
        new = _mutual_nearest(apply_affine(pose, src), tree, tol_px)
        if compatible is not None and len(new):
            new = new[compatible[new[:, 0], new[:, 1]]]
        if len(new) < 3:
            break
        if fit is not None and len(new) == len(matched) and np.array_equal(new, matched):
            break
        matched = new
        try:
            fit = robust_affine(src[matched[:, 0]], dst[matched[:, 1]], floor_px=0.25 * tol_px)
        except ValueError:
            return none
        pose = fit.affine
    if fit is None:
        return none
    return BeadMatch(matched[fit.inliers], _subset(fit))


def _votes(sims: Array, voters: Array, tree: cKDTree, tol_px: float) -> NDArray[np.int64]:
    """Source beads (``voters``) each hypothesis maps within ``tol_px`` of a target bead."""
    mapped = np.matmul(voters[None, :, :], np.transpose(sims[:, :, :2], (0, 2, 1))) + sims[:, None, :, 2]
    d, _ = tree.query(mapped.reshape(-1, 2), distance_upper_bound=tol_px)
    out: NDArray[np.int64] = np.isfinite(d).reshape(len(sims), len(voters)).sum(axis=1)
    return out


def _subset(fit: AffineFit) -> AffineFit:
    keep = fit.inliers
    return AffineFit(
        affine=fit.affine,
        sigma=fit.sigma,
        inliers=np.ones(int(keep.sum()), bool),
        residual_px=fit.residual_px[keep],
        loo_residual_px=fit.loo_residual_px[keep],
    )


def pose_from_beads(
    src_xy: Array,
    dst_xy: Array,
    *,
    scale: float,
    flip: bool = False,
    max_rotation_deg: float = 15.0,
    step_deg: float = 1.0,
    bin_px: float = 4.0,
) -> tuple[Array, int]:
    """Pose of a small bead field inside a larger one, from the bead positions alone (Hough vote).

    For a field without usable image content in common (an IMC window on its Axioscan slide: known
    scale, no flip, a small turn), every rotation on a grid votes every source-target difference
    into translation bins of ``bin_px`` (target px); the bin with most votes (each source bead counted
    once) gives the pose. Returns the (2, 3) source -> target affine and its vote count.
    """
    src = np.asarray(src_xy, np.float64).reshape(-1, 2)
    dst = np.asarray(dst_xy, np.float64).reshape(-1, 2)
    best = (-1, np.zeros((2, 3)))
    mirror = np.diag([-1.0, 1.0]) if flip else np.eye(2)
    for a in np.radians(np.arange(-max_rotation_deg, max_rotation_deg + 1e-9, step_deg)):
        m = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ mirror
        moved = src @ m.T
        diff = dst[None, :, :] - moved[:, None, :]  # (N, M, 2) candidate translations
        for off in (0.0, 0.5):  # two bin grids, half a bin apart: a peak is never split
            cell = np.floor(diff / bin_px + off).astype(np.int64)
            key = cell[..., 0] * 1_000_003 + cell[..., 1]
            src_idx = np.broadcast_to(np.arange(len(src))[:, None], key.shape)
            pairs = np.unique(np.stack([key.ravel(), src_idx.ravel()], 1), axis=0)
            keys, counts = np.unique(pairs[:, 0], return_counts=True)
            i = int(np.argmax(counts))
            if counts[i] > best[0]:
                sel = key == keys[i]
                t = diff[sel].mean(axis=0)
                best = (int(counts[i]), np.hstack([m, t[:, None]]))
    return best[1], best[0]
