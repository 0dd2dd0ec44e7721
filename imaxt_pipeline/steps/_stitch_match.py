"""Pair matching of the stitch step on the cluster: batching of neighbouring pairs into tasks.

Small tiles are matched in batches of consecutive pairs, one task per batch, each tile read once
per batch from a cache of at most two grid rows and ``MAX_BATCH_BYTES``; large tiles get one task
per pair. Used only by :mod:`.stitch` (steps never import each other).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any

import numpy as np

from ..algorithms.optics import Calibration
from ..algorithms.stitching import PairMatch, rematch_plan
from ..parallel.stitching import match_tiles
from ._base import StepContext
from .params import StitchParams as Params

#: Raw tile bytes one pair-matching task may cache (it holds at most this, plus the pair it matches).
MAX_BATCH_BYTES = 32 * 2**20
#: Pairs per task at most, and batches per slice at least (so that the cluster stays busy).
MAX_BATCH_PAIRS, MIN_BATCHES = 64, 16
#: Pairs per task whatever the tile size: consecutive pairs share tiles ((t, t+1), (t, t+cols), (t+1, t+2),
#: ...), so a task of K pairs reads about K + 1 tiles, not 2K (a tile read is a third of a pair's time at
#: 2048 px), and an LRU cache of three tiles holds all it needs.
MIN_BATCH_PAIRS = 8


def batch_pairs(n_pairs: int, tile_bytes: int) -> int:
    """Pairs per matching task: 1 for few pairs, up to ``MIN_BATCH_PAIRS`` for large tiles and
    ``MAX_BATCH_PAIRS`` for small ones.

    >>> batch_pairs(12, 2 * 256 * 256), batch_pairs(1200, 2 * 64 * 64), batch_pairs(1200, 4 * 2 * 2048 * 2048)
    (1, 64, 8)
    """
    by_memory = max(MIN_BATCH_PAIRS, MAX_BATCH_BYTES // max(8 * tile_bytes, 1))
    return int(max(1, min(MAX_BATCH_PAIRS, by_memory, -(-n_pairs // MIN_BATCHES))))


def _match_batch(
    read_tile: Any,
    batch: np.ndarray,
    expected: np.ndarray,
    calibration: Calibration,
    *,
    cache: int,
    index_offset: int,
    **match_kwargs: Any,
) -> list[PairMatch]:
    """Match consecutive pairs ``batch`` (K, 2), stage-predicted shifts ``expected`` (K, 2), reading each tile
    once (an LRU cache of ``cache`` tiles)."""
    cached = lru_cache(maxsize=cache)(read_tile)
    # An estimated flat is refined from the seams: the task that holds the pair's strips samples them.
    match_kwargs.setdefault("flat_samples", calibration.flat_estimated)
    memo: dict[Any, np.ndarray] = {}  # each tile's channel levels, the confidence map: once per task
    return [
        match_tiles(
            cached,  # read-only there (strips are calibrated into new arrays): no copy of the tile per pair
            a,
            b,
            (ey, ex),
            calibration,
            index_offset=index_offset,
            memo=memo,
            **match_kwargs,
        )
        for (a, b), (ey, ex) in zip(np.asarray(batch).tolist(), np.asarray(expected).tolist(), strict=True)
    ]


def _lazy_matches(
    read_tile: Any, pairs: list[tuple[int, int]], stage: np.ndarray, cal: Any, *, cols: int, tile_bytes: int, **kw: Any
) -> list[Any]:
    """Delayed batches (lists of :class:`PairMatch`, in ``pairs`` order) of one slice."""
    from dask import delayed

    size = batch_pairs(len(pairs), tile_bytes)
    cache = int(max(3, min(2 * cols + 2, MAX_BATCH_BYTES // max(tile_bytes, 1))))
    idx = np.asarray(pairs, np.int64).reshape(-1, 2)
    expected = stage[idx[:, 1]] - stage[idx[:, 0]]
    # Arrays, not lists of tuples: dask walks every list argument looking for tasks (seconds for 50 x 50 tiles).
    task = delayed(_match_batch, pure=False)
    return [
        task(read_tile, idx[k : k + size], expected[k : k + size], cal, cache=cache, **kw)
        for k in range(0, len(idx), size)
    ]


def _match_slices(
    ctx: StepContext,
    pairs_of: list[list[tuple[int, int]]],
    slices: list[int],
    z: int,
    cal_task: Any,
    params: Params,
    max_shift: int,
) -> list[PairMatch]:
    """Match ``pairs_of[k]`` (tile indices within slice ``slices[k]``) on the cluster, in that order.

    The one place both the first pass and :func:`_rematch` build their tasks: indices come back
    global (``k * n_tiles + t``).
    """
    acq = ctx.raw.acquisition
    tile_bytes = 2 * len(acq.channels) * acq.tile_shape[0] * acq.tile_shape[1]
    lazy = []
    for k, (s, pairs) in enumerate(zip(slices, pairs_of, strict=True)):
        if pairs:
            lazy += _lazy_matches(
                partial(ctx.raw.read_tile, s, z),
                pairs,
                np.asarray(ctx.raw.stage_px(s, z), np.float64),
                cal_task,
                cols=acq.cols,
                tile_bytes=tile_bytes,
                index_offset=k * acq.n_tiles,
                max_shift=max_shift,
                block_size=params.block_px,
                min_ncc=params.min_ncc,
            )
    batches = ctx.client.gather(ctx.client.compute(lazy)) if lazy else []
    return [m for batch in batches for m in batch]


def _rematch(
    ctx: StepContext, matches: list[PairMatch], slices: list[int], z: int, cal_task: Any, params: Params
) -> list[PairMatch]:
    """Redo failed / edge-of-window pairs once, with the radius the matched pairs' stage error asks for."""
    radius, redo = rematch_plan(matches, params.max_shift_px)
    if not redo:
        return matches
    n_t = ctx.raw.acquisition.n_tiles
    pairs_of: list[list[tuple[int, int]]] = [[] for _ in slices]
    for i in redo:
        k = matches[i].reference // n_t
        pairs_of[k].append((matches[i].reference - k * n_t, matches[i].moving - k * n_t))
    again = _match_slices(ctx, pairs_of, slices, z, cal_task, params, radius)
    new = {(m.reference, m.moving): m for m in again}
    ctx.log.info(
        "stitch: %d pairs matched again with a %d px search (stage error larger than expected)", len(new), radius
    )
    return [new.get((m.reference, m.moving), m) for m in matches]
