"""Dask layer of stitching: one lazy task per pair of neighbouring tiles.

Each task reads only its two tiles (through a picklable ``read_tile``
callable supplied by the caller, so this module knows nothing of storage),
calibrates them, and runs :func:`...algorithms.stitching.match_pair`. The
global solve is small and runs on the client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from dask import delayed

from ...algorithms.calibration import seam_samples
from ...algorithms.optics import Calibration
from ...algorithms.stitching import PairMatch, match_pair
from ..workers import roomy_allocator

__all__ = ["match_pairs", "match_tiles"]


def match_tiles(
    read_tile: Callable[[int], np.ndarray],
    reference: int,
    moving: int,
    expected_shift: tuple[float, float],
    calibration: Calibration,
    *,
    index_offset: int = 0,
    flat_samples: bool = False,
    memo: dict[Any, np.ndarray] | None = None,
    **match_kwargs: Any,
) -> PairMatch:
    """Read, calibrate and register one pair (the kernel each task runs).

    ``read_tile(i)`` returns the raw ``(C, H, W)`` tile ``i``; channels are
    calibrated and summed (each normalised by its median so no channel
    dominates). Only the strips the match can reach are calibrated (a seam is
    ~10 % of a tile); the result is the same as calibrating whole tiles. Indices
    stored in the result are offset by ``index_offset``. With ``flat_samples``, a
    matched pair also carries its seam's block means for the flat's refinement
    (:func:`...algorithms.calibration.seam_samples`), so the client never reads tiles. ``memo``
    (one dict per task, for one calibration) keeps each tile's channel levels and the confidence map
    for the task's next pairs (a tile is in up to four).
    """
    roomy_allocator()  # once per process: a Dask worker's default allocator settings make this kernel 2.5x slower
    raw = [np.asarray(read_tile(i)) for i in (reference, moving)]
    shape = (int(raw[0].shape[-2]), int(raw[0].shape[-1]))
    max_shift = int(match_kwargs.get("max_shift", 15))
    # the widest window match_pair may search (it widens up to 4x) plus its smoothing support
    margin = 4 * max_shift + int(np.ceil(4 * float(match_kwargs.get("smooth", 1.0)))) + 10
    windows = _strip_windows(shape, expected_shift, margin)
    memo = {} if memo is None else memo
    conf = memo.get(("confidence", shape))
    if conf is None:
        conf = memo[("confidence", shape)] = calibration.confidence(shape)
    imgs, weights, strips = [], [], []
    for t, tile, win in zip((reference, moving), raw, windows, strict=True):
        scale = memo.get(("scale", t))
        if scale is None:
            # A 1-in-16 pixel sample gives the channel's typical level as well as all of them.
            every4 = (slice(None, None, 4), slice(None, None, 4))
            sub = calibration.apply(tile[(slice(None), *every4)], window=every4)
            scale = memo[("scale", t)] = np.maximum(np.median(sub.reshape(sub.shape[0], -1), axis=1), 1e-3)
        strips.append(calibration.apply(tile[(slice(None), *win)], window=win))
        imgs.append(np.sum(strips[-1] / scale[:, None, None], axis=0))
        weights.append(conf[win])
    (ya, xa), (yb, xb) = ((w[0].start, w[1].start) for w in windows)
    to_windows = (ya - yb, xa - xb)  # a shift in window coordinates is the tiles' shift less this
    match_kwargs["block_size"] = match_kwargs.get("block_size") or max(16, min(shape) // 16)
    m = match_pair(
        imgs[0],
        imgs[1],
        (expected_shift[0] - to_windows[0], expected_shift[1] - to_windows[1]),
        reference_weights=weights[0],
        moving_weights=weights[1],
        reference=reference + index_offset,
        moving=moving + index_offset,
        **match_kwargs,
    )
    oa, ob = np.array([ya, xa], np.float64), np.array([yb, xb], np.float64)
    m = replace(
        m,
        expected=(float(expected_shift[0]), float(expected_shift[1])),
        shift=(m.shift[0] + to_windows[0], m.shift[1] + to_windows[1]),
        points_ref=m.points_ref + oa,
        points_mov=m.points_mov + ob,
    )
    if flat_samples and m.ok and len(m.point_weights):
        seams = seam_samples(
            strips[0],
            strips[1],
            (ya, xa),
            (yb, xb),
            weights[0],
            weights[1],
            m.points_ref,
            m.points_mov,
            m.point_weights,
            block=int(np.clip(min(shape) // 128, 8, 32)),
            calibration=calibration,
        )
        m = replace(m, flat_samples=seams)
    return m


def _strip_windows(
    shape: tuple[int, int], expected: tuple[float, float], margin: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Windows of the reference and the moving tile that can overlap (stage prediction plus ``margin``)."""
    h, w = shape
    ey, ex = (int(v) for v in np.rint(expected))
    ref = (slice(max(0, ey - margin), min(h, h + ey + margin)), slice(max(0, ex - margin), min(w, w + ex + margin)))
    mov = (slice(max(0, -ey - margin), min(h, h - ey + margin)), slice(max(0, -ex - margin), min(w, w - ex + margin)))
    return ref, mov


def match_pairs(
    read_tile: Callable[[int], np.ndarray],
    pairs: Sequence[tuple[int, int]],
    stage_px: np.ndarray,
    calibration: Calibration,
    *,
    index_offset: int = 0,
    **match_kwargs: Any,
) -> list[Any]:
    """Lazy :func:`match_tiles` for every pair; compute them with ``client.compute``.

    Parameters
    ----------
    read_tile : callable
        ``i -> (C, H, W)`` raw tile; must be picklable (e.g. a ``functools.partial``).
    pairs : sequence of (int, int)
        Tile index pairs (reference, moving).
    stage_px : ndarray (T, 2)
        Recorded positions giving each pair's expected shift.
    calibration : Calibration
        Applied to both tiles before matching.
    index_offset : int
        Added to tile indices in the results (global numbering across slices).
    **match_kwargs
        Passed to :func:`...algorithms.stitching.match_pair`.

    Returns
    -------
    list of dask.delayed.Delayed
        One per pair, each yielding a :class:`PairMatch`.
    """
    stage = np.asarray(stage_px, np.float64)
    cal = delayed(calibration, pure=False)
    out = []
    for a, b in pairs:
        exp = (float(stage[b, 0] - stage[a, 0]), float(stage[b, 1] - stage[a, 1]))
        out.append(
            delayed(match_tiles, pure=False)(read_tile, a, b, exp, cal, index_offset=index_offset, **match_kwargs)
        )
    return out
