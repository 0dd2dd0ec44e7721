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
    if len(noise) != len(keys):
        raise ValueError(f"{len(noise)} noise flags for {len(keys)} tiles")
    # The tiles with noise blocks (the costliest) go first, so that the last tasks are short ones: the workers
    # finish together instead of one waiting on the other's last noise tile.
    order = sorted(range(len(keys)), key=lambda i: not noise[i])
    futures = {
        i: client.submit(_summarise, read_tile, tuple(keys[i]), block, bool(noise[i]), pure=False) for i in order
    }
    per_tile = client.gather([futures[i] for i in range(len(keys))])
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

    # Arguments already sent, by identity (a channel's statistics go to its first fit and its refit): each
    # travels once. The objects are held with their futures, so that an identity is never reused.
    sent: dict[int, tuple[Any, Any]] = {}

    def send(arg: Any) -> Any:
        if isinstance(arg, (int, float, str, type(None))):
            return arg  # small values travel inside the task
        if id(arg) not in sent:
            sent[id(arg)] = (arg, client.scatter(arg, hash=False))
        return sent[id(arg)][1]

    def starmap(fn: Callable[..., Any], items: Sequence[tuple[Any, ...]]) -> list[Any]:
        # the arguments (a channel's statistics, a flat) travel as data, not inside the task graph
        futures = [client.submit(fn, *[send(a) for a in args], pure=False) for args in items]
        return list(client.gather(futures))

    return starmap
