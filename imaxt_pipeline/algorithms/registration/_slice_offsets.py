"""Per-slice offsets from bead tracks by sparse weighted least squares.

Detection ``i`` of bead ``b`` in slice ``s`` is at ``p_i = P_b + D_s + e_i``
(bead position plus slice offset plus centring error of variance
``sigma_i**2``). Every pair of detections of one track gives an equation
free of ``P_b``:

.. math:: p_i - p_j = D_{s_i} - D_{s_j}.

With pair weights ``w_i w_j / W_b`` (``w = 1 / sigma**2``,
``W_b = sum of w over the track``) the pairwise normal equations equal
exactly those of the full model with each ``P_b`` marginalised out, so the
estimate is the maximum-likelihood one. Slice 0 (``reference``) is fixed at
zero (when no track reaches it, the slice of the largest group of slices the
tracks tie together takes its place, and the slices outside that group get
NaN rather than an error); the sparse normal equations are solved with
:func:`scipy.sparse.linalg.spsolve` (:func:`~scipy.sparse.linalg.lsqr` as a
fallback), the
detections whose residual exceeds ``clip`` robust sigmas are dropped, and
the solve repeats. Standard errors come from the inverse normal matrix
scaled by the reduced chi-square.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import sparse
from scipy.sparse.linalg import lsqr, spsolve

from ...errors import NotEnoughOverlapError

__all__ = ["SliceOffsets", "apply_offset", "canvas_padding", "solve_slice_offsets", "track_pairs"]


@dataclass(frozen=True)
class SliceOffsets:
    """Solution of :func:`solve_slice_offsets`.

    Attributes
    ----------
    slices : ndarray (S,) of int
        Slice numbers, ascending (row ``k`` of the arrays below).
    offsets : ndarray (S, 2)
        ``(dy, dx)`` of each slice relative to the reference; NaN for slices
        no track connects to the reference.
    errors : ndarray (S, 2)
        One-sigma standard errors (0 for the reference, NaN when unknown).
    inlier : ndarray (N,) of bool
        Detections used in the final solve.
    residuals : ndarray (N, 2)
        ``p_i - P_b - D_s`` per detection (NaN for unused ones).
    chi2 : ndarray (2,)
        Reduced chi-square in y and x.
    iterations : int
        Solves performed.
    reference : int
        Slice number fixed at (0, 0): the one asked for, or, when no track
        reaches it, the lowest slice of the largest group the tracks connect.
    """

    slices: NDArray[np.int_]
    offsets: NDArray[np.float64]
    errors: NDArray[np.float64]
    inlier: NDArray[np.bool_]
    residuals: NDArray[np.float64]
    chi2: NDArray[np.float64]
    iterations: int
    reference: int = 0

    @property
    def constrained(self) -> NDArray[np.bool_]:
        """Slices with a finite offset."""
        ok: NDArray[np.bool_] = np.all(np.isfinite(self.offsets), axis=1)
        return ok


def track_pairs(track: ArrayLike) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """All index pairs ``(i, j)``, ``i < j``, of detections sharing a track.

    Parameters
    ----------
    track : ndarray (N,) of int
        Track id per detection; negative ids are ignored.

    Returns
    -------
    (ndarray, ndarray)
        Indices into ``track`` of the first and second member of each pair.
    """
    ids = np.asarray(track).ravel()
    idx = np.flatnonzero(ids >= 0)
    order = idx[np.argsort(ids[idx], kind="stable")]
    _, start, count = np.unique(ids[order], return_index=True, return_counts=True)
    first: list[NDArray[np.intp]] = []
    second: list[NDArray[np.intp]] = []
    for n in np.unique(count):
        if n < 2:
            continue
        starts = start[count == n]
        a, b = np.triu_indices(n, 1)
        first.append(order[(starts[:, None] + a[None, :]).ravel()])
        second.append(order[(starts[:, None] + b[None, :]).ravel()])
    if not first:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    return np.concatenate(first), np.concatenate(second)


def _solve_axis(
    pos: NDArray[np.float64],
    sig: NDArray[np.float64],
    slice_idx: NDArray[np.intp],
    track: NDArray[np.intp],
    n_slices: int,
    ref: int,
    free_index: NDArray[np.int_],
    n_free: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], float]:
    """Weighted pairwise solve for one axis; returns offsets, errors, residuals, chi2."""
    w = 1.0 / sig**2
    wsum = np.bincount(track, weights=w)
    i, j = track_pairs(track)
    pw = np.sqrt(w[i] * w[j] / wsum[track[i]])
    rows = np.arange(len(i))
    ci, cj = free_index[slice_idx[i]], free_index[slice_idx[j]]
    data: list[NDArray[np.float64]] = []
    r: list[NDArray[np.int_]] = []
    c: list[NDArray[np.int_]] = []
    for col, sign in ((ci, 1.0), (cj, -1.0)):
        ok = col >= 0
        data.append(sign * pw[ok])
        r.append(rows[ok])
        c.append(col[ok])
    a = sparse.csr_matrix((np.concatenate(data), (np.concatenate(r), np.concatenate(c))), shape=(len(i), n_free))
    rhs = pw * (pos[i] - pos[j])
    normal_sp = (a.T @ a).tocsc()
    try:
        sol = spsolve(normal_sp, a.T @ rhs)
    except RuntimeError:  # singular factor: fall back to the iterative least-squares solver
        sol = np.full(n_free, np.nan)
    if not np.all(np.isfinite(sol)):
        sol = lsqr(a, rhs, atol=1e-12, btol=1e-12, iter_lim=10 * n_free + 100)[0]
    d = np.zeros(n_slices)
    d[free_index >= 0] = sol[free_index[free_index >= 0]]
    # Residuals per detection against the weighted track mean of (p - D).
    corr = pos - d[slice_idx]
    mean = np.bincount(track, weights=w * corr) / np.where(wsum > 0, wsum, 1)
    resid = corr - mean[track]
    n_tracks = int((np.bincount(track) >= 2).sum())
    dof = max(len(pos) - n_tracks - n_free, 1)
    chi2 = float(np.sum(w * resid**2) / dof)
    normal = normal_sp.toarray()
    try:
        cov = np.linalg.inv(normal) * max(chi2, 1.0)
        err_free = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        err_free = np.full(n_free, np.nan)
    err = np.zeros(n_slices)
    err[free_index >= 0] = err_free[free_index[free_index >= 0]]
    err[ref] = 0.0
    return d, err, resid, chi2


def _connected_slices(
    slice_idx: NDArray[np.intp], track: NDArray[np.intp], n_slices: int, ref: int
) -> tuple[NDArray[np.bool_], int]:
    """Slices linked to ``ref`` through shared tracks (graph components), and the reference used.

    A reference no track reaches ties nothing: the lowest slice of the largest component (most slices)
    takes its place, so the slices the tracks do tie together still get offsets (relative to it).
    """
    from scipy.sparse.csgraph import connected_components

    n_tracks = int(track.max()) + 1 if len(track) else 0
    g = sparse.coo_matrix(
        (np.ones(len(track)), (slice_idx, n_slices + track)), shape=(n_slices + n_tracks, n_slices + n_tracks)
    )
    _, comp = connected_components(g, directed=False)
    per_slice = comp[:n_slices]
    if not np.isin(ref, slice_idx):
        tied = np.unique(slice_idx)  # slices holding a detection of some track
        sizes = np.bincount(per_slice[tied])
        ref = int(tied[np.argmax(sizes[per_slice[tied]])])  # first (lowest) slice of the largest component
    linked: NDArray[np.bool_] = per_slice == per_slice[ref]
    return linked, ref


def solve_slice_offsets(
    slices: ArrayLike,
    yx: ArrayLike,
    bead_id: ArrayLike,
    *,
    sigma: ArrayLike = 1.0,
    reference: int | None = None,
    clip: float = 4.0,
    max_iter: int = 10,
    min_sigma: float = 0.02,
) -> SliceOffsets:
    """Solve for the (dy, dx) of every slice from bead tracks.

    Parameters
    ----------
    slices : ndarray (N,) of int
        Slice of each detection.
    yx : ndarray (N, 2)
        Detection centre (y, x) in its slice's frame.
    bead_id : ndarray (N,) of int
        Track id; negative = unmatched (ignored).
    sigma : float or ndarray (N,) or (N, 2), optional
        Centring errors (px) used as weights; clipped below at ``min_sigma``.
    reference : int, optional
        Slice fixed at (0, 0); default the lowest slice present. When no track
        reaches it, the lowest slice of the largest group of slices the tracks tie
        together is fixed instead (:attr:`SliceOffsets.reference`) and the
        reference's own offset is NaN.
    clip : float, optional
        Detections with a normalised residual beyond ``clip`` robust sigmas
        (on either axis) are rejected between iterations.
    max_iter : int, optional
        Maximum number of solves.
    min_sigma : float, optional
        Floor on ``sigma`` so a single over-confident fit cannot dominate.

    Returns
    -------
    SliceOffsets

    Raises
    ------
    NotEnoughOverlapError
        If there are no detections or no track spans two slices.
    ValueError
        If the array lengths differ.
    """
    sl = np.asarray(slices).astype(int).ravel()
    pos = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    ids = np.asarray(bead_id).astype(int).ravel()
    n = len(sl)
    if len(pos) != n or len(ids) != n:
        raise ValueError(f"slices, yx and bead_id must have the same length, got {n}, {len(pos)}, {len(ids)}")
    sig = np.broadcast_to(
        np.asarray(sigma, dtype=np.float64).reshape(-1, 1)
        if np.ndim(sigma) == 1
        else np.asarray(sigma, dtype=np.float64),
        (n, 2),
    ).copy()
    sig = np.where(np.isfinite(sig), np.maximum(sig, min_sigma), np.inf)
    uniq = np.unique(sl)
    if n == 0:
        raise NotEnoughOverlapError("no bead detections; cannot register slices")
    ref_slice = int(uniq[0]) if reference is None else int(reference)
    if ref_slice not in uniq:
        raise ValueError(f"reference slice {ref_slice} has no detections")
    slice_idx = np.searchsorted(uniq, sl)
    ref = int(np.searchsorted(uniq, ref_slice))
    inlier = (ids >= 0) & np.all(np.isfinite(pos), axis=1) & np.all(np.isfinite(sig), axis=1)
    n_slices = len(uniq)
    ref_asked = ref
    it = 0
    while it < max_iter:
        it += 1
        use = np.flatnonzero(inlier)
        _, tr = np.unique(ids[use], return_inverse=True)
        counts = np.bincount(tr)
        keep = counts[tr] >= 2
        use, tr = use[keep], np.unique(tr[keep], return_inverse=True)[1]
        if len(use) == 0:
            raise NotEnoughOverlapError("no bead track spans two slices; cannot register slices")
        connected, ref = _connected_slices(slice_idx[use], tr, n_slices, ref_asked)
        free = connected.copy()
        free[ref] = False
        free_index = np.full(n_slices, -1)
        free_index[free] = np.arange(int(free.sum()))
        sub = connected[slice_idx[use]]
        use, tr = use[sub], np.unique(tr[sub], return_inverse=True)[1]
        offsets = np.full((n_slices, 2), np.nan)
        errors = np.full((n_slices, 2), np.nan)
        resid = np.full((n, 2), np.nan)
        chi2 = np.zeros(2)
        for ax in range(2):
            d, e, r, c2 = _solve_axis(
                pos[use, ax], sig[use, ax], slice_idx[use], tr, n_slices, ref, free_index, int(free.sum())
            )
            offsets[connected, ax] = d[connected]
            errors[connected, ax] = e[connected]
            resid[use, ax] = r
            chi2[ax] = c2
        norm = np.abs(resid[use] / sig[use])
        scale = np.maximum(1.4826 * np.median(norm, axis=0), 1e-9)
        bad = np.any(norm > clip * np.maximum(scale, 1.0), axis=1)
        if not bad.any():
            break
        inlier[use[bad]] = False
    final = np.zeros(n, bool)
    final[use] = True
    return SliceOffsets(
        slices=uniq,
        offsets=offsets,
        errors=errors,
        inlier=final,
        residuals=resid,
        chi2=chi2,
        iterations=it,
        reference=int(uniq[ref]),
    )


def canvas_padding(offsets: ArrayLike) -> tuple[NDArray[np.int_], NDArray[np.int_]]:
    """Integer padding (before, after) per axis that keeps every shifted slice on the canvas.

    Parameters
    ----------
    offsets : ndarray (S, 2)
        ``(dy, dx)`` per slice (NaN rows ignored).

    Returns
    -------
    (ndarray, ndarray)
        Pixels added before (top/left) and after (bottom/right), each (2,).
    """
    off = np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    off = off[np.all(np.isfinite(off), axis=1)]
    if len(off) == 0:
        return np.zeros(2, int), np.zeros(2, int)
    before = np.ceil(np.maximum(off.max(axis=0), 0.0)).astype(int)
    after = np.ceil(np.maximum(-off.min(axis=0), 0.0)).astype(int)
    return before, after


def apply_offset(
    plane: ArrayLike, offset: ArrayLike, *, pad_before: ArrayLike, out_shape: tuple[int, int], order: int = 1
) -> NDArray[np.float32]:
    """Place one slice on the aligned canvas: pixel (y, x) goes to ``(y - dy, x - dx) + pad_before``.

    Parameters
    ----------
    plane : ndarray (..., H, W)
        Mosaic plane(s) of the slice.
    offset : ndarray (2,)
        ``(dy, dx)`` of the slice (results contract).
    pad_before : ndarray (2,) of int
        Canvas origin shift (see :func:`canvas_padding`).
    out_shape : (int, int)
        Canvas height and width.
    order : int, optional
        Interpolation order: 1 is :func:`shift_linear` (bilinear, the cube's block kernel), others
        the spline of :func:`scipy.ndimage.shift`; zero outside the plane (``grid-constant``).

    Returns
    -------
    ndarray (..., out_shape[0], out_shape[1]) of float32
    """
    from ._shift import shift_linear

    data = np.asarray(plane, dtype=np.float32)
    # the plane as the canvas holds it at its origin (cut to the canvas), sampled at (y, x) + src
    data = data[..., : out_shape[0], : out_shape[1]]
    src = np.asarray(offset, np.float64).ravel() - np.asarray(pad_before, np.float64).ravel()
    if order == 1:
        return shift_linear(data, src, out_shape)
    from scipy import ndimage as ndi

    canvas = np.zeros((*data.shape[:-2], *out_shape), np.float32)
    canvas[..., : data.shape[-2], : data.shape[-1]] = data
    shift = (0.0,) * (data.ndim - 2) + tuple(float(-v) for v in src)
    out: NDArray[np.float32] = ndi.shift(
        canvas, shift, order=order, mode="grid-constant", cval=0.0, prefilter=order > 1
    )
    return out
