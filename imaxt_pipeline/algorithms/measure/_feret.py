"""Maximum Feret diameter of many objects at once, with scikit-image's definition.

``regionprops`` takes the object's hull image (``convex_hull_image``: pixels whose centre is inside or on
the convex hull of the pixels' 4 edge midpoints), its 0.5 contour (``find_contours``) and the largest
distance between contour points. On each pixel row (column) the hull image is one run ``[a, b]``; the
contour crosses that line at ``a - 0.5`` and ``b + 0.5`` and its other points lie on segments between
such crossings, so the diameter is the largest distance between crossings. Everything is on the
half-pixel grid, held as integers (twice the px coordinates), so hulls and runs are exact (no tolerance).

All objects are processed together: a hull is two monotone chains (Andrew's algorithm), built in
lockstep over the objects (one numpy step per point position, objects sorted by size), and runs are
read off the chains by one ``searchsorted``. The diameter is the largest distance between the hull
vertices of the crossings (pairs of each object's vertices, in batches). Numpy only; no I/O.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray

__all__ = ["feret_diameters"]

_I = NDArray[np.int64]
_Chain = tuple[_I, _I, _I]  # (group, u, v) of a chain's vertices, sorted by (group, u)
_PAIRS_PER_BATCH = 1 << 21  # distance pairs held at once (3 int64 arrays of this length)


def feret_diameters(corners: pd.DataFrame, labels: NDArray[np.int64]) -> tuple[NDArray[np.float64], pd.DataFrame]:
    """Maximum Feret diameter (``regionprops``' definition) of each of ``labels``, and their hulls' vertices.

    ``corners`` holds ``label, y2, x2``: points on the half-pixel grid (twice the px coordinates) whose
    convex hull is the object's (its pixels' diamonds, or hull vertices of its pieces). Every label of
    ``labels`` must have points there.
    """
    labels = np.asarray(labels, np.int64)
    out = np.zeros(len(labels))
    if corners.empty or not len(labels):
        return out, corners.iloc[:0]
    lab = corners["label"].to_numpy(np.int64)
    uniq = np.unique(labels)
    keep = np.isin(lab, uniq)
    group = np.searchsorted(uniq, lab[keep])
    y2, x2 = corners["y2"].to_numpy(np.int64)[keep], corners["x2"].to_numpy(np.int64)[keep]
    # hull of the points (left and right chains over the half-pixel rows), and the same hull's chains
    # over the columns (from its vertices, transposed)
    rows = _hull_chains(group, y2, x2, len(uniq))
    hg, hy, hx = (np.r_[rows[0][i], rows[1][i]] for i in range(3))
    cols = _hull_chains(hg, hx, hy, len(uniq))
    # runs of the hull image on every pixel row and column: their ends' crossings
    ry, rx, rg = _run_crossings(*rows, len(uniq))
    cx, cy, cg = _run_crossings(*cols, len(uniq))
    # the diameter: between hull vertices of the crossings
    v_left, v_right = _hull_chains(np.r_[rg, cg], np.r_[ry, cy], np.r_[rx, cx], len(uniq))
    vg, vy, vx = (np.r_[v_left[i], v_right[i]] for i in range(3))
    order = np.argsort(vg, kind="stable")
    diam = np.sqrt(_max_pair_d2(vg[order], vy[order], vx[order], len(uniq))) / 2.0
    out[:] = diam[np.searchsorted(uniq, labels)]
    hull = pd.DataFrame({"label": uniq[hg], "y2": hy, "x2": hx})
    return out, hull[np.isin(hull["label"].to_numpy(), labels)].reset_index(drop=True)


def _hull_chains(group: _I, u: _I, v: _I, n_groups: int) -> tuple[_Chain, _Chain]:
    """The left and right chains ``(group, u, v)`` of each group's convex hull, each sorted by (group, u).

    Only the leftmost and rightmost point of each group's line ``u = const`` can be a vertex; the left
    chain is the lower hull of ``(u, min v)``, the right one that of ``(u, -max v)``. Both run from the
    group's first line to its last (a line holding one point ends both); no collinear points.
    """
    order = np.lexsort((u, group))
    g, uu, vv = group[order], u[order], v[order]
    new = np.r_[True, (g[1:] != g[:-1]) | (uu[1:] != uu[:-1])]
    starts = np.flatnonzero(new)
    lg, lu = g[starts], uu[starts]
    vmin, vmax = np.minimum.reduceat(vv, starts), np.maximum.reduceat(vv, starts)
    # left chains as groups 0..n-1, right chains (v negated) as n..2n-1
    kept = _lower_chains(np.r_[lg, lg + n_groups], np.r_[lu, lu], np.r_[vmin, -vmax], 2 * n_groups)
    is_left = kept < len(lg)
    li, ri = kept[is_left], kept[~is_left] - len(lg)
    return (lg[li], lu[li], vmin[li]), (lg[ri], lu[ri], vmax[ri])


def _lower_chains(group: _I, u: _I, v: _I, n_groups: int) -> _I:
    """Indices of the points on each group's lower hull (points sorted by group, then strictly by ``u``).

    Andrew's monotone chain for all groups in lockstep: step ``k`` pushes every group's ``k``-th point
    after popping, in rounds, the groups whose top two points and the new one do not turn left.
    """
    counts = np.bincount(group, minlength=n_groups)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    order = np.argsort(-counts, kind="stable")  # the active groups at step k are a prefix
    s, c = starts[order], counts[order]
    stack = np.empty(len(u), np.int64)  # group j's stack lives in its own points' slots
    depth = np.zeros(n_groups, np.int64)
    for k in range(int(c[0]) if len(c) else 0):
        na = int(np.searchsorted(-c, -k, side="left"))  # groups with more than k points
        p = s[:na] + k
        idx = np.flatnonzero(depth[:na] >= 2)
        while idx.size:
            top = s[idx] + depth[idx]
            o, a, b = stack[top - 2], stack[top - 1], p[idx]
            cross = (u[a] - u[o]) * (v[b] - v[o]) - (v[a] - v[o]) * (u[b] - u[o])
            idx = idx[cross <= 0]
            depth[idx] -= 1
            idx = idx[depth[idx] >= 2]
        stack[s[:na] + depth[:na]] = p
        depth[:na] += 1
    d = np.zeros(n_groups, np.int64)
    d[order] = depth
    return stack[_ranges(starts, d)]


def _ranges(starts: _I, lengths: _I) -> _I:
    """Concatenated ``arange(s, s + n)`` for every (s, n)."""
    total = int(lengths.sum())
    first: _I = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths).astype(np.int64)
    return first + np.arange(total, dtype=np.int64)


def _run_crossings(left: _Chain, right: _Chain, n_groups: int) -> tuple[_I, _I, _I]:
    """Crossings ``(u, v, group)`` (half-pixel grid) of the hull image's run on every pixel line ``u = r``.

    ``left``, ``right``: the hull's chains from :func:`_hull_chains` (either orientation). The hull
    image's run on line ``r`` is ``[a, b]``, the integers between the chains there, and the 0.5
    contour crosses it at ``a - 0.5`` and ``b + 0.5`` (``2a - 1``, ``2b + 1`` here).
    """
    group, u = left[0], left[1]
    lo = np.full(n_groups, np.iinfo(np.int64).max)
    hi = np.full(n_groups, np.iinfo(np.int64).min)
    np.minimum.at(lo, group, u)
    np.maximum.at(hi, group, u)
    r0, r1 = -((-lo) // 2), hi // 2  # pixel lines 2r within [lo, hi]
    n_lines = np.maximum(r1 - r0 + 1, 0)
    line_group = np.repeat(np.arange(n_groups, dtype=np.int64), n_lines)
    lines2 = 2 * (np.repeat(r0, n_lines) + _ranges(np.zeros(n_groups, np.int64), n_lines))
    a = _boundary_at(left, line_group, lines2, ceil=True)  # left: min v over the hull on the line
    b = _boundary_at(right, line_group, lines2, ceil=False)
    ok = a <= b
    g2, l2, a, b = line_group[ok], lines2[ok], a[ok], b[ok]
    return np.r_[l2, l2], np.r_[2 * a - 1, 2 * b + 1], np.r_[g2, g2]


def _boundary_at(chain: _Chain, group: _I, u: _I, *, ceil: bool) -> _I:
    """``ceil`` (or ``floor``) of the chain's ``v / 2`` at each ``(group, u)``, exactly (integer arithmetic)."""
    cg, cu, cv = chain
    span = int(max(cu.max(), u.max()) - min(cu.min(), u.min())) + 2
    base = int(min(cu.min(), u.min()))
    keys = cg * span + (cu - base)
    j = np.searchsorted(keys, group * span + (u - base), side="right") - 1
    j1 = np.minimum(j + 1, len(cu) - 1)
    exact = cu[j] == u
    du = np.where(exact, 1, cu[j1] - cu[j])
    num = np.where(exact, cv[j], cv[j] * du + (u - cu[j]) * (cv[j1] - cv[j]))  # v * du at u
    den = 2 * du
    out: _I = (-((-num) // den) if ceil else num // den).astype(np.int64)
    return out


def _max_pair_d2(group: _I, y: _I, x: _I, n_groups: int) -> _I:
    """Largest squared distance between two points of each group (points sorted by group), in batches."""
    counts = np.bincount(group, minlength=n_groups)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    out = np.zeros(n_groups, np.int64)
    pairs = np.cumsum(counts**2)
    g0 = 0
    while g0 < n_groups:
        g1 = max(int(np.searchsorted(pairs, pairs[g0] - counts[g0] ** 2 + _PAIRS_PER_BATCH, side="right")), g0 + 1)
        cnt, st = counts[g0:g1], starts[g0:g1]
        occupied = cnt > 0
        cnt, st, gs = cnt[occupied], st[occupied], np.arange(g0, g1)[occupied]
        if len(cnt):
            i = np.repeat(_ranges(st, cnt), np.repeat(cnt, cnt))  # each point once per point of its group
            j = _ranges(np.repeat(st, cnt), np.repeat(cnt, cnt))
            d2 = (y[i] - y[j]) ** 2 + (x[i] - x[j]) ** 2
            out[gs] = np.maximum.reduceat(d2, np.r_[0, np.cumsum(cnt**2)[:-1]])
        g0 = g1
    return out
