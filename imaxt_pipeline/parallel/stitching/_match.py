"""Dask layer of stitching: one lazy task per pair of neighbouring tiles.

Each task reads only its two tiles (through a picklable ``read_tile``
callable supplied by the caller, so this module knows nothing of storage),
calibrates them, and runs :func:`...algorithms.stitching.match_pair`. The
global solve is small and runs on the client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from dask import delayed

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
    **match_kwargs: Any,
) -> PairMatch:
    """Read, calibrate and register one pair (the kernel each task runs).

    ``read_tile(i)`` returns the raw ``(C, H, W)`` tile ``i``; channels are
    calibrated and summed (each normalised by its median so no channel
    dominates). Indices stored in the result are offset by ``index_offset``.
    """
    roomy_allocator()  # once per process: a Dask worker's default allocator settings make this kernel 2.5x slower
    imgs = []
    for i in (reference, moving):
        cal = calibration.apply(np.asarray(read_tile(i)))
        # A 1-in-16 pixel sample gives the channel's typical level as well as all of them.
        scale = np.maximum(np.median(cal[:, ::4, ::4].reshape(cal.shape[0], -1), axis=1), 1e-3)
        imgs.append(np.sum(cal / scale[:, None, None], axis=0))
    conf = calibration.confidence(imgs[0].shape)
    return match_pair(
        imgs[0],
        imgs[1],
        expected_shift,
        reference_weights=conf,
        moving_weights=conf,
        reference=reference + index_offset,
        moving=moving + index_offset,
        **match_kwargs,
    )


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
