"""One task per sampled tile: read it where it is read, return only its statistics (~1/16 of its bytes).

The client then holds the statistics of the sampled tiles, never the tiles: its memory does not grow
with the tile size beyond a few block-averaged tiles per channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ...algorithms.calibration import TileStats, summarise_tile
from ...errors import ImaxtError
from ..workers import roomy_allocator

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["cluster_starmap", "tile_statistics"]


def _summarise(
    read_tile: Callable[..., np.ndarray], key: tuple[Any, ...], block: int, noise: bool
) -> list[TileStats] | ImaxtError:
    roomy_allocator()
    try:
        return summarise_tile(read_tile(*key), block=block, noise=noise)
    except ImaxtError as exc:
        # a damaged tile is the user's one-line error: returned, so the worker does not log a failed task
        return exc


def tile_statistics(
    client: Client,
    read_tile: Callable[..., np.ndarray],
    keys: Sequence[tuple[Any, ...]],
    *,
    block: int,
    noise: Sequence[bool],
) -> list[TileStats]:
    """Statistics of the tiles ``read_tile(*key)`` for every key, one :class:`TileStats` per channel.

    Parameters
    ----------
    client : distributed.Client
    read_tile : callable
        ``*key -> (C, H, W)`` raw tile; picklable (e.g. a bound method of a picklable store).
    keys : sequence of tuple
        Arguments of ``read_tile`` per tile, in the order the statistics are gathered.
    block : int
        Block edge of the statistics.
    noise : sequence of bool
        Per tile: also the photon-transfer noise blocks (the costliest part; a few tiles suffice).
    """
    if not keys:
        raise ValueError("no tiles to summarise")
    futures = [
        client.submit(_summarise, read_tile, tuple(k), block, bool(n), pure=False)
        for k, n in zip(keys, noise, strict=True)
    ]
    per_tile = client.gather(futures)
    for result in per_tile:
        if isinstance(result, ImaxtError):
            raise result
    n_ch = len(per_tile[0])
    return [TileStats.concat([t[c] for t in per_tile]) for c in range(n_ch)]


def cluster_starmap(client: Client) -> Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]:
    """``starmap(fn, items)``: one task per item on ``client``'s workers, results in ``items`` order.

    For the estimators' independent per-channel fits (:func:`...algorithms.calibration.calibration_estimate`),
    which would otherwise run one after the other on the client while the workers wait.
    """

    def starmap(fn: Callable[..., Any], items: Sequence[tuple[Any, ...]]) -> list[Any]:
        # the arguments (a channel's statistics, a flat) travel as data, not inside the task graph
        futures = [client.submit(fn, *client.scatter(list(args), hash=False), pure=False) for args in items]
        return list(client.gather(futures))

    return starmap
