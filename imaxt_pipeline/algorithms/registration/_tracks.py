"""Link bead detections of consecutive slices into tracks.

A bead is cut by several consecutive slices; its centre does not move with
depth, so the detections of one bead in slices ``k`` and ``k + 1`` differ by
the drift between the two slices only. Slices are linked in order: the
median shift between slice ``k`` and the tracks still open is estimated
from mutual nearest neighbours, then detections are matched within a radius
gate after removing that shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

__all__ = ["Matches", "build_tracks", "match_points"]


@dataclass(frozen=True)
class Matches:
    """Mutual nearest-neighbour matches between two point sets.

    Attributes
    ----------
    reference_index, moving_index : ndarray of int
        Matched pairs.
    shift : ndarray (2,)
        Median ``moving - reference`` of the matches (0 when none).
    """

    reference_index: NDArray[np.intp]
    moving_index: NDArray[np.intp]
    shift: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.reference_index)


def match_points(
    reference: ArrayLike, moving: ArrayLike, *, radius: float, iterations: int = 3, shift: ArrayLike | None = None
) -> Matches:
    """Match two point sets allowing for an unknown common shift.

    Parameters
    ----------
    reference, moving : ndarray (N, 2), (M, 2)
        Point coordinates (y, x).
    radius : float
        Gate: a pair is kept when its distance after removing the shift is
        at most ``radius``.
    iterations : int, optional
        Rounds of (match, median shift); the gate tightens to ``radius / 2``
        after the first round when at least 3 pairs were found.
    shift : ndarray (2,), optional
        Starting estimate of ``moving - reference``.

    Returns
    -------
    Matches

    Raises
    ------
    ValueError
        If ``radius`` is not positive.
    """
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    mov = np.asarray(moving, dtype=np.float64).reshape(-1, 2)
    current = np.zeros(2) if shift is None else np.asarray(shift, dtype=np.float64)
    empty = Matches(np.zeros(0, np.intp), np.zeros(0, np.intp), current)
    if len(ref) == 0 or len(mov) == 0:
        return empty
    tree_ref = cKDTree(ref)
    result = empty
    gate = radius
    for it in range(max(iterations, 1)):
        moved = mov - current
        d_mr, i_mr = tree_ref.query(moved, distance_upper_bound=gate)
        tree_mov = cKDTree(moved)
        _, i_rm = tree_mov.query(ref, distance_upper_bound=gate)
        m_idx = np.flatnonzero(np.isfinite(d_mr))
        r_idx = i_mr[m_idx]
        mutual = i_rm[r_idx] == m_idx
        r_idx, m_idx = r_idx[mutual], m_idx[mutual]
        if len(r_idx) == 0:
            break
        new_shift = np.median(mov[m_idx] - ref[r_idx], axis=0) if len(r_idx) >= 3 else current
        result = Matches(r_idx, m_idx, new_shift)
        if np.allclose(new_shift, current) and it > 0:
            break
        current = new_shift
        if len(r_idx) >= 3:
            gate = 0.5 * radius
    return result


def build_tracks(
    slices: ArrayLike, yx: ArrayLike, *, radius: float = 20.0, max_gap: int = 1, min_length: int = 2
) -> NDArray[np.int_]:
    """Chain detections of consecutive slices into tracks of one bead each.

    Parameters
    ----------
    slices : ndarray (N,) of int
        Slice of each detection.
    yx : ndarray (N, 2)
        Detection centres in each slice's own frame.
    radius : float, optional
        Matching gate in px (drift between consecutive slices plus centring
        error must stay below it).
    max_gap : int, optional
        A track may skip up to this many slices (missed detections).
    min_length : int, optional
        Tracks with fewer detections get ``-1``.

    Returns
    -------
    ndarray (N,) of int
        ``bead_id`` per detection (0, 1, ... in order of first appearance;
        -1 for detections that belong to no track of ``min_length``).
    """
    sl = np.asarray(slices).astype(int).ravel()
    pos = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    if len(sl) != len(pos):
        raise ValueError(f"slices has {len(sl)} entries but yx has {len(pos)}")
    track = np.full(len(sl), -1, int)
    if len(sl) == 0:
        return track
    # Open tracks: last position and slice; ``drift`` is the running slice-to-slice shift estimate.
    last_pos: list[NDArray[np.float64]] = []
    last_slice: list[int] = []
    n_tracks = 0
    drift = np.zeros(2)
    for s in np.unique(sl):
        idx = np.flatnonzero(sl == s)
        open_ids = [t for t in range(n_tracks) if s - last_slice[t] <= max_gap + 1]
        if open_ids:
            ref = np.array([last_pos[t] for t in open_ids])
            m = match_points(ref, pos[idx], radius=radius, shift=drift)
            if len(m) >= 3:
                drift = m.shift
            for r_i, m_i in zip(m.reference_index, m.moving_index, strict=True):
                t = open_ids[r_i]
                track[idx[m_i]] = t
                last_pos[t], last_slice[t] = pos[idx[m_i]], int(s)
        for i in idx[track[idx] < 0]:
            track[i] = n_tracks
            last_pos.append(pos[i])
            last_slice.append(int(s))
            n_tracks += 1
    counts = np.bincount(track, minlength=n_tracks)
    keep = counts >= min_length
    new_id = np.full(n_tracks, -1, int)
    new_id[keep] = np.arange(int(keep.sum()))
    ids: NDArray[np.int_] = new_id[track]
    return ids
