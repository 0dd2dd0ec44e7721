"""How well each tile is placed: position uncertainty from the solve, tiles without information, plain-word flags.

The covariance of a solve is the inverse of its normal matrix, with the data weights scaled to their
observed scatter. What matters downstream is a tile's position *relative to its section* (the section's
common translation is the registration's business), so the reported 1-sigma is that of ``P_t - mean(P)``
over the tile's connected component of the pair graph, the larger of its two axes.

A tile no used pair ties to its neighbours (empty agarose on every seam, or every pair rejected) can
only be placed by the stage: it is put at its stage position plus the median offset (solved minus
stage) of the constrained tiles of its section. Its uncertainty is the stage's, measured on those
tiles, and honest with few of them (:func:`stage_sigma`): the scatter with its actual degrees of
freedom, pooled with the stated stage error as a weak prior, turned into the sigma whose 3-sigma
circle a new tile's error leaves as often as a Gaussian's would (1.1 %), the median offset's own
error included. Three solved tiles of a 2 x 2 grid give 4 degrees of freedom: the sigma is then
about 1.7 x the pooled scatter; a 10 x 10 section's is within 2 % of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import linalg as splinalg
from scipy.sparse.csgraph import connected_components

from ._magnification import PRIOR_DOF

__all__ = [
    "TileFlag",
    "bridges",
    "describe_flags",
    "flag_tiles",
    "relative_sigma",
    "rematch_plan",
    "search_radius",
    "stage_disagreement",
    "stage_placement",
    "stage_sigma",
    "stage_tied_islands",
]

if TYPE_CHECKING:
    from ._overlap import PairMatch

_Array = npt.NDArray[np.float64]
_Mask = npt.NDArray[np.bool_]
#: Positions whose 3-sigma exceeds this (px) are flagged as weakly constrained.
WEAK_3SIGMA_PX = 0.5


@dataclass(frozen=True)
class TileFlag:
    """Why a tile is flagged: ``kind`` is ``"stage"`` (no information, placed by the stage), ``"unverified"``
    (placed only by pairs no loop checks: its sigma is the stage's) or ``"weak"`` (3-sigma above 0.5 px).

    ``empty`` / ``rejected`` name the neighbours whose overlap carried no information / whose pair was
    rejected as inconsistent; ``sigma_px`` is the reported 1-sigma position uncertainty; ``group`` is the
    number of tiles of the tile's island of used pairs when only the stage ties that island to the rest of
    its section (0 otherwise); ``seam_px`` the part of ``sigma_px`` from the seams' common bias
    (:mod:`._seam_bias`); ``stage_gap_px`` how far the stage puts an unverified tile from where its pairs do
    (:func:`stage_disagreement`), when that sets ``sigma_px``.
    """

    tile: int
    kind: str
    sigma_px: float
    empty: tuple[int, ...] = ()
    rejected: tuple[int, ...] = ()
    group: int = 0
    seam_px: float = 0.0
    stage_gap_px: float = 0.0


def components(n_tiles: int, pairs: Sequence[tuple[int, int]]) -> npt.NDArray[np.int_]:
    """Connected component of every tile in the graph of *all* pairs (informative or not): the sections."""
    if not len(pairs):
        return np.arange(n_tiles)
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    g = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n_tiles, n_tiles))
    return np.asarray(connected_components(g, directed=False)[1])


def relative_sigma(
    normal: sparse.spmatrix, n_tiles: int, comp: npt.NDArray[np.int_], scale: _Array, gauge: _Mask
) -> _Array:
    """1-sigma (T,) of each tile's position relative to the mean of its component's ``gauge`` tiles.

    ``normal`` is the (scaled) normal matrix whose first ``2 T`` unknowns are the positions (tile t
    axis a at ``2 t + a``); ``scale`` (2,) multiplies them into positions (``1 + mag``). The gauge is
    the constrained tiles: a tile placed by the stage must not inflate its solid neighbours' sigma.
    """
    lu = splinalg.splu(sparse.csc_matrix(normal))
    n_unk = normal.shape[0]
    var = np.zeros((n_tiles, 2))
    ref = np.where(gauge, comp, -1)
    ref_of = {int(c): np.flatnonzero(ref == c) for c in np.unique(comp)}
    cols = np.arange(2 * n_tiles)
    for start in range(0, len(cols), 256):
        chunk = cols[start : start + 256]
        e = np.zeros((n_unk, len(chunk)))
        for j, c in enumerate(chunk):
            t, ax = divmod(int(c), 2)
            members = ref_of[int(comp[t])]
            if len(members):
                e[2 * members + ax, j] = -1.0 / len(members)
            e[c, j] += 1.0
        x = lu.solve(e)
        v = np.einsum("ij,ij->j", e, x)
        for j, c in enumerate(chunk):
            t, ax = divmod(int(c), 2)
            var[t, ax] = max(float(v[j]), 0.0) * scale[ax] ** 2
    out: _Array = np.sqrt(var.max(axis=1))
    return out


#: Two-sided probability that a 2-D Gaussian error leaves its 3-sigma circle: ``exp(-9 / 2)``.
OUTSIDE_3SIGMA = float(np.exp(-4.5))


def stage_sigma(sum_sq: float, dof: int, n_ref: int, stated_sigma: float) -> float:
    """Per-axis 1-sigma of a tile placed by the stage at the median offset of ``n_ref`` solved tiles.

    ``sum_sq`` is the sum of squared deviations (solved - stage, both axes, each section's mean removed)
    with ``dof`` degrees of freedom; the stated stage error enters as :data:`PRIOR_DOF` more. With
    ``s2`` the pooled variance and ``nu = dof + PRIOR_DOF``, a new tile's error over ``s sqrt(1 + c / n)``
    (``c / n`` the variance of the median offset: 1 / n for n <= 2, pi / 2n above) has ``|e|^2 / 2 s^2 ~
    F(2, nu)``, so the returned sigma is the one whose 3-sigma circle holds the error with the normal
    probability (:data:`OUTSIDE_3SIGMA`): ``F(2, nu)``'s tail is ``(1 + 2 f / nu)^(-nu / 2)``, in closed form.
    With many tiles it tends to the scatter itself (``nu -> inf``: ``2 f -> 9``).

    >>> round(stage_sigma(0.0, 0, 0, 5.0), 2), round(stage_sigma(4 * 81.0, 4, 3, 5.0), 2)
    (9.71, 12.22)
    >>> round(stage_sigma(198 * 4.0, 198, 99, 2.0) / 2.0, 3)  # a 10 x 10 section: 2 % over the scatter
    1.019
    """
    nu = float(dof) + PRIOR_DOF
    s2 = (float(sum_sq) + PRIOR_DOF * float(stated_sigma) ** 2) / nu
    f = 0.5 * nu * (OUTSIDE_3SIGMA ** (-2.0 / nu) - 1.0)  # F(2, nu) quantile at 1 - OUTSIDE_3SIGMA
    median_var = 0.0 if n_ref <= 0 else (1.0 / n_ref if n_ref <= 2 else 0.5 * np.pi / n_ref)
    return float(np.sqrt(s2 * (1.0 + median_var) * 2.0 * f / 9.0))


def stage_placement(
    positions: _Array,
    stage: _Array,
    constrained: _Mask,
    comp: npt.NDArray[np.int_],
    fallback_sigma: float,
    islands: npt.NDArray[np.int_] | None = None,
) -> tuple[_Array, _Array]:
    """Positions with unconstrained tiles re-placed by the stage, and each tile's stage sigma (T,).

    The stage's scatter is that of (solved - stage) about the mean of each island of constrained
    tiles (``islands``: components of the graph of used pairs; by default ``comp``), pooled over all
    (both axes; one stage), with its degrees of freedom (``2 (n - 1)`` per island: a section split by
    empty seams into islands has each island's translation set by the stage, which takes its mean
    deviation with it), and ``fallback_sigma`` (the stated stage error) as a weak prior:
    :func:`stage_sigma`, for the number of solved tiles the tile's own component placed it by.
    """
    out = positions.copy()
    sum_sq, dof = 0.0, 0
    n_ref = np.zeros(len(stage), int)
    isl = comp if islands is None else np.asarray(islands)
    for c in np.unique(isl[constrained]):
        off = positions[constrained & (isl == c)] - stage[constrained & (isl == c)]
        sum_sq += float(np.sum((off - off.mean(axis=0)) ** 2))
        dof += 2 * (len(off) - 1)
    for c in np.unique(comp):
        members = comp == c
        solid = members & constrained
        if not solid.any():  # nothing measured in this component: the stage is all there is
            out[members] = stage[members]
            continue
        off = positions[solid] - stage[solid]
        n_ref[members] = len(off)
        loose = members & ~constrained
        out[loose] = stage[loose] + np.median(off, axis=0)
    # one stage for every section: pool the deviations (a 2 x 2 section alone says little)
    by_n = {int(n): max(stage_sigma(sum_sq, dof, int(n), fallback_sigma), 0.1) for n in np.unique(n_ref)}
    return out, np.array([by_n[int(n)] for n in n_ref], np.float64)


def stage_disagreement(positions: _Array, stage: _Array, islands: npt.NDArray[np.int_]) -> _Array:
    """Per tile, how far (px) its solved position is from where the stage puts it, against its island's other
    tiles: ``|(solved - stage) - median over the island|`` (0 for a tile alone in its island).

    On a tile no loop checks this is the size of the error one of the two must have: a false match on its
    bridge (a 25 px overlap searched 100 px wide) or a stage that slipped. Its sigma is at least that.
    """
    off = positions - stage
    out = np.zeros(len(stage), np.float64)
    for c in np.unique(islands):
        members = islands == c
        if members.sum() > 1:
            d = off[members] - np.median(off[members], axis=0)
            out[members] = np.hypot(d[:, 0], d[:, 1])
    return out


def describe_flags(flags: Sequence[TileFlag], name: Callable[[int], str]) -> list[str]:
    """One plain-words line per flagged tile; ``name(t)`` names tile ``t`` (e.g. ``"(2,3)"``).

    >>> describe_flags([TileFlag(5, "stage", 3.2, empty=(4, 1))], lambda t: f"({t // 3},{t % 3})")
    ['tile (1,2): overlaps with (1,1) and (0,1) empty — placed by stage, ±3.2 px']
    """

    def names(ts: Sequence[int]) -> str:
        words = [name(t) for t in ts]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

    out = []
    for f in flags:
        why = []
        if f.empty:
            why.append(f"overlap{'s' if len(f.empty) > 1 else ''} with {names(f.empty)} empty")
        if f.rejected:
            why.append(f"pair{'s' if len(f.rejected) > 1 else ''} with {names(f.rejected)} rejected as inconsistent")
        if f.kind == "stage":
            reason = ", ".join(why) if why else "no usable overlap"
            out.append(f"tile {name(f.tile)}: {reason} — placed by stage, ±{f.sigma_px:.1f} px")
        elif f.kind == "unverified":
            reason = (", ".join(why) + "; ") if why else ""
            source = (
                f"its pairs and the stage disagree by {f.stage_gap_px:.1f} px, a false match or a stage error"
                if f.stage_gap_px
                else "stage"
            )
            out.append(
                f"tile {name(f.tile)}: {reason}placed by pairs no loop checks (a false match would go unseen) — "
                f"±{f.sigma_px:.1f} px ({source})"
            )
        else:
            if f.group:
                why.append(f"its group of {f.group} tiles tied to the others by the stage only")
            if f.seam_px > 0.5 * f.sigma_px:
                why.append(
                    "every seam biased alike by optics outside the model: "
                    f"a shear only the stage sees, ±{f.seam_px:.2f} px"
                )
            reason = ", ".join(why) if why else "little texture in its overlaps"
            out.append(f"tile {name(f.tile)}: weakly constrained ({reason}), ±{f.sigma_px:.2f} px")
    return out


def search_radius(deviations: npt.ArrayLike, max_shift: int, *, cap: int = 128) -> int:
    """Search radius (px) that covers the stage error measured on the pairs that matched.

    ``deviations`` (N, 2) are measured minus stage-predicted shifts of informative pairs. A radius of
    ``|median| + 5 x 1.4826 MAD`` (per axis, the larger) catches the pairs whose true shift lay beyond
    ``max_shift``; never less than ``max_shift``, never more than ``cap``.

    >>> search_radius(np.zeros((0, 2)), 15), search_radius(np.array([[0.0, 10.0], [0.0, -10.0]] * 4), 15)
    (15, 75)
    """
    d = np.asarray(deviations, np.float64).reshape(-1, 2)
    if len(d) < 3:
        return int(max_shift)
    med = np.median(d, axis=0)
    mad = 1.4826 * np.median(np.abs(d - med), axis=0)
    need = float(np.max(np.abs(med) + 5.0 * mad))
    return int(min(cap, max(max_shift, int(np.ceil(need)))))


def rematch_plan(matches: Sequence[PairMatch], max_shift: int) -> tuple[int, list[int]]:
    """Wider radius from the matched pairs' stage deviations (:func:`search_radius`), and the pairs to redo.

    Redone: pairs that failed or matched within 20 % of the radius' edge. Empty when the radius
    would not grow.
    """
    dev = np.array([np.subtract(m.shift, m.expected) for m in matches if m.ok]).reshape(-1, 2)
    radius = search_radius(dev, max_shift)
    if radius <= max_shift:
        return max_shift, []
    redo = [
        i
        for i, m in enumerate(matches)
        if not m.ok or np.max(np.abs(np.subtract(m.shift, m.expected))) > 0.8 * max_shift
    ]
    return radius, redo


def unverified_tiles(n_tiles: int, pairs: Sequence[tuple[int, int]]) -> _Mask:
    """Tiles whose every used pair is a bridge of the used-pair graph: no loop checks where they are.

    A false match on such a pair (a bead edge, repetitive texture, an overlap the jitter almost closed)
    leaves no residual anywhere, so the solve's sigma cannot see it.
    """
    if not len(pairs):
        return np.zeros(n_tiles, bool)
    edges = np.asarray(pairs, int).reshape(-1, 2)
    bridge = bridges(n_tiles, edges)
    has_loop = np.zeros(n_tiles, bool)
    has_loop[edges[~bridge].ravel()] = True
    touched = np.zeros(n_tiles, bool)
    touched[edges.ravel()] = True
    out: _Mask = touched & ~has_loop  # a section whose used pairs form a tree is unverified everywhere
    return out


def bridges(n_nodes: int, edges: npt.NDArray[np.int_]) -> _Mask:
    """(E,) True for each edge whose removal disconnects its ends (Tarjan's low-link, iterative: O(V + E)).

    Parallel edges are told apart by their index, so a doubled pair is never a bridge.

    >>> bridges(4, np.array([[0, 1], [1, 2], [2, 0], [2, 3]])).tolist()
    [False, False, False, True]
    >>> bridges(2, np.array([[0, 1], [1, 0]])).tolist()
    [False, False]
    """
    adj: list[list[tuple[int, int]]] = [[] for _ in range(n_nodes)]
    for i, (a, b) in enumerate(edges.tolist()):
        adj[a].append((b, i))
        adj[b].append((a, i))
    order = [-1] * n_nodes  # discovery time
    low = [0] * n_nodes
    out = np.zeros(len(edges), bool)
    clock = 0
    for root in range(n_nodes):
        if order[root] >= 0 or not adj[root]:
            continue
        order[root] = low[root] = clock
        clock += 1
        stack = [(root, -1, 0)]  # node, edge it was reached by, next neighbour to visit
        while stack:
            node, via, k = stack[-1]
            if k < len(adj[node]):
                stack[-1] = (node, via, k + 1)
                nxt, e = adj[node][k]
                if e == via:
                    continue
                if order[nxt] < 0:
                    order[nxt] = low[nxt] = clock
                    clock += 1
                    stack.append((nxt, e, 0))
                else:
                    low[node] = min(low[node], order[nxt])
                continue
            stack.pop()
            if stack:
                parent = stack[-1][0]
                low[parent] = min(low[parent], low[node])
                if low[node] > order[parent]:
                    out[via] = True
    return out


def flag_tiles(
    matches: Sequence[PairMatch],
    active: _Mask,
    constrained: _Mask,
    sigma: _Array,
    unverified: _Mask | None = None,
    group: npt.NDArray[np.int_] | None = None,
    seam: _Array | None = None,
    stage_gap: _Array | None = None,
) -> list[TileFlag]:
    """Tiles placed by the stage, unverified (on bridge pairs only) or weakly constrained, with the failed pairs
    (``group``: :func:`stage_tied_islands`' sizes; ``seam``: the seams' systematic, :mod:`._seam_bias`;
    ``stage_gap``: :func:`stage_disagreement`, named on an unverified tile whose sigma it sets)."""
    empty: dict[int, list[int]] = {}
    rejected: dict[int, list[int]] = {}
    for m, used in zip(matches, active, strict=True):
        if used:
            continue
        book = rejected if m.ok and len(m.point_weights) else empty
        book.setdefault(m.reference, []).append(m.moving)
        book.setdefault(m.moving, []).append(m.reference)
    loose = np.zeros(len(constrained), bool) if unverified is None else unverified
    out = []
    for t in range(len(constrained)):
        if not constrained[t]:
            kind = "stage"
        elif loose[t]:
            kind = "unverified"
        else:
            kind = "weak" if 3 * sigma[t] > WEAK_3SIGMA_PX else ""
        if kind:
            size = 0 if group is None else int(group[t])
            sys_px = 0.0 if seam is None or kind != "weak" else float(seam[t])
            gap = 0.0 if stage_gap is None or kind != "unverified" else float(stage_gap[t])
            out.append(
                TileFlag(
                    t,
                    kind,
                    float(sigma[t]),
                    tuple(empty.get(t, ())),
                    tuple(rejected.get(t, ())),
                    size,
                    sys_px,
                    gap if gap >= sigma[t] else 0.0,
                )
            )
    return out


def stage_tied_islands(
    comp: npt.NDArray[np.int_], islands: npt.NDArray[np.int_], constrained: _Mask, tile_sigma: _Array
) -> tuple[_Array, npt.NDArray[np.int_]]:
    """Per tile: the 1-sigma (px) of its island's offset from the largest island of its section, and the
    island's size, where only the stage ties the two (0 and 0 elsewhere).

    An island of ``n`` tiles placed by the stage beside the main one of ``m`` has its mean offset off by
    the stage's scatter times ``sqrt(1/n + 1/m)``. ``tile_sigma`` is :func:`stage_placement`'s sigma of a
    tile placed at the median of ``m`` solved tiles, ``s sqrt(1 + 1/m)`` widened for the scatter's few
    degrees of freedom; it is rescaled, so the widening is kept. The solve's own sigma cannot see this:
    between islands it has only the stated stage prior, not the stage's measured scatter.
    """
    off = np.zeros(len(comp), np.float64)
    size = np.zeros(len(comp), int)
    for c in np.unique(comp):
        members = (comp == c) & constrained
        ids, counts = np.unique(islands[members], return_counts=True)
        if len(ids) < 2:
            continue
        main, m = ids[int(np.argmax(counts))], int(counts.max())
        for i, n in zip(ids, counts, strict=True):
            if i == main:
                continue
            tiles = members & (islands == i)
            off[tiles] = tile_sigma[tiles] * np.sqrt((1.0 / n + 1.0 / m) / (1.0 + 1.0 / m))
            size[tiles] = int(n)
    return off, size
