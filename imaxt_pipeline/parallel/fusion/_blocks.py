"""Dask layer of fusion: one lazy task per output block of a plane.

A block is ``chunk * 2**(levels - 1)`` px square and aligned to that grid,
so at every pyramid level it covers whole output chunks: tasks never write
the same chunk and need no locking. Each task reads only the tiles touching
its block (through the caller's picklable ``read_tile``), fuses them with
:func:`...algorithms.fusion.fuse_region`, downsamples its own pyramid, and
hands every level to the caller's ``write_block``. Where tiles are as
large as blocks, a task fuses a short chain of a row's blocks in turn
(:func:`block_chains`) and reads a tile the next block shares once. Peak
memory is a block plus its few tiles (and the tiles two neighbours share),
whatever the slice size.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from dask import delayed

from ...algorithms.fusion import FusedRegion, downsample_mean, fuse_region, tiles_touching
from ...algorithms.optics import Calibration

__all__ = ["block_chains", "block_regions", "fuse_block", "fuse_block_chain", "fuse_blocks"]


def block_regions(shape: tuple[int, int], block: int) -> list[tuple[int, int, int, int]]:
    """Half-open ``(y0, y1, x0, x1)`` blocks tiling a canvas of ``shape``."""
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    h, w = shape
    return [(y0, min(y0 + block, h), x0, min(x0 + block, w)) for y0 in range(0, h, block) for x0 in range(0, w, block)]


def block_chains(
    shape: tuple[int, int], block: int, tile_shape: tuple[int, int], *, max_chain: int | None = None
) -> list[list[tuple[int, int, int, int]]]:
    """:func:`block_regions` in chains of consecutive blocks along each row, one task each.

    Two neighbours of a row share the tiles that span both; a task fusing them in turn reads those once
    (:class:`_ChainTiles`). Tiles narrower than half a block are shared by few of a row's blocks (their
    edges only): a chain is one block then, so a task's reads stay those of one block. ``max_chain``
    (default :data:`MAX_CHAIN`) bounds a task's length, so a wide section still spreads over workers.
    """
    regions = block_regions(shape, block)
    length = 1 if 2 * int(tile_shape[1]) < block else (MAX_CHAIN if max_chain is None else max(1, int(max_chain)))
    per_row = -(-int(shape[1]) // block)
    return [
        regions[r + c : r + min(c + length, per_row)]
        for r in range(0, len(regions), per_row)
        for c in range(0, per_row, length)
    ]


#: Longest chain of blocks (along a row) one task fuses: :func:`block_chains`.
MAX_CHAIN = 8
#: Bytes of raw tiles a chain keeps for its next block (a few 4-channel 2048 px tiles, 32 MB each).
CHAIN_TILE_BYTES = 160 * 2**20


class _ChainTiles:
    """``i -> raw tile`` for the blocks of a chain in turn: a tile the next block also needs is kept
    (within :data:`CHAIN_TILE_BYTES`), every other one is dropped once read, so the cache holds at most
    what two neighbouring blocks share."""

    def __init__(self, read_tile: Callable[[int], np.ndarray], wanted: list[list[int]], budget: int) -> None:
        self._read, self._wanted, self._budget = read_tile, wanted, budget
        self._kept: dict[int, np.ndarray] = {}
        self._next: set[int] = set()
        self.reads = 0

    def start(self, k: int) -> None:
        """Block ``k`` of the chain begins: keep what it and block ``k + 1`` need."""
        self._next = set(self._wanted[k + 1]) if k + 1 < len(self._wanted) else set()
        keep = set(self._wanted[k]) | self._next
        self._kept = {i: t for i, t in self._kept.items() if i in keep}

    def __call__(self, i: int) -> np.ndarray:
        tile = self._kept.pop(i, None)
        if tile is None:
            tile = np.asarray(self._read(i))
            self.reads += 1
        if i in self._next and sum(t.nbytes for t in self._kept.values()) + tile.nbytes <= self._budget:
            self._kept[i] = tile
        return tile


#: The last confidence map this process made: ``(calibration, (shape, feather), map)``, calibration held weakly.
_CONFIDENCE: list[tuple[weakref.ref[Calibration], tuple[tuple[int, int], float], np.ndarray]] = []


def _confidence(calibration: Calibration, shape: tuple[int, int], feather: float) -> np.ndarray:
    """:meth:`Calibration.confidence`, made once per process for the calibration every task of a step
    shares (scattered: the same object on a worker), not once per chain (a min over the flat fields);
    callers must not modify it."""
    key = ((int(shape[0]), int(shape[1])), float(feather))
    for ref, known, weights in list(_CONFIDENCE):
        if ref() is calibration and known == key:
            return weights
    weights = calibration.confidence(key[0], feather=key[1])
    weights.setflags(write=False)  # shared by every later task of this process: a write would corrupt them
    _CONFIDENCE[:] = [(weakref.ref(calibration), key, weights)]
    return weights


def fuse_block(
    read_tile: Callable[[int], np.ndarray],
    write_block: Callable[..., None],
    positions: np.ndarray,
    tile_shape: tuple[int, int],
    region: tuple[int, int, int, int],
    calibration: Calibration,
    *,
    levels: int = 1,
    feather: float = 0.0,
    n_channels: int = 1,
) -> float:
    """Fuse one block and write all its pyramid levels (:func:`fuse_block_chain` of one block).

    ``write_block(level, (y0, y1, x0, x1), image_cyx, weight_yx)`` receives
    level coordinates. Returns the block's mean weight (for metrics).
    """
    kw: dict[str, Any] = {"levels": levels, "feather": feather, "n_channels": n_channels}
    return fuse_block_chain(read_tile, write_block, positions, tile_shape, [region], calibration, **kw)[0]


def fuse_block_chain(
    read_tile: Callable[[int], np.ndarray],
    write_block: Callable[..., None],
    positions: np.ndarray,
    tile_shape: tuple[int, int],
    regions: list[tuple[int, int, int, int]],
    calibration: Calibration,
    *,
    levels: int = 1,
    feather: float = 0.0,
    n_channels: int = 1,
    tile_bytes: int | None = None,
) -> tuple[float, ...]:
    """Fuse blocks one after the other and write all their pyramid levels (the kernel of each task).

    A tile two neighbouring blocks need is read once (:class:`_ChainTiles`, at most ``tile_bytes``,
    default :data:`CHAIN_TILE_BYTES`, kept), the confidence map is made once per process and the blocks of one
    shape fuse into the same buffers: ``write_block(level, (y0, y1, x0, x1), image_cyx, weight_yx)``
    receives level coordinates and must not keep the arrays past its call. Returns each block's mean
    weight (for metrics).
    """
    distortion = calibration.distortion
    wanted = [tiles_touching(positions, tile_shape, region, distortion=distortion) for region in regions]
    tiles = _ChainTiles(read_tile, wanted, CHAIN_TILE_BYTES if tile_bytes is None else int(tile_bytes))
    weights = _confidence(calibration, tile_shape, feather)
    buffers: FusedRegion | None = None
    means = []
    for k, region in enumerate(regions):
        tiles.start(k)
        y0, y1, x0, x1 = region
        reuse = buffers if buffers is not None and buffers.weight.shape == (y1 - y0, x1 - x0) else None
        fused = fuse_region(
            tiles,
            positions,
            region,
            indices=wanted[k],
            weights=weights,
            distortion=distortion,
            calibration=calibration,
            out=reuse,
        )
        image, weight = fused.image, fused.weight
        if image.shape[0] == 0:
            image = np.zeros((n_channels, *weight.shape), np.float32)
        else:
            buffers = fused
        for level in range(levels):
            if level:
                image, weight = downsample_mean(image), downsample_mean(weight)
            f = 2**level
            write_block(level, (y0 // f, y0 // f + image.shape[-2], x0 // f, x0 // f + image.shape[-1]), image, weight)
        means.append(float(fused.weight.mean()))
    return tuple(means)


def fuse_blocks(
    read_tile: Callable[[int], np.ndarray],
    write_block: Callable[..., None],
    positions: np.ndarray,
    tile_shape: tuple[int, int],
    canvas_shape: tuple[int, int],
    calibration: Calibration | Any,
    *,
    chunk: int,
    levels: int,
    feather: float = 0.0,
    n_channels: int = 1,
    max_chain: int | None = None,
) -> list[Any]:
    """Lazy :func:`fuse_block` for every block of one plane.

    Parameters
    ----------
    read_tile : callable
        ``i -> (C, H, W)`` raw tile of this plane; picklable.
    write_block : callable
        Receives each block's levels (see :func:`fuse_block`); picklable. It must not keep the arrays
        past its call: a chain fuses its next block into the same buffers.
    positions : ndarray (T, 2)
        Stitched top-left of each undistorted tile in the mosaic frame.
    tile_shape, canvas_shape : (int, int)
        Detector tile and mosaic canvas shapes.
    calibration : Calibration or distributed.Future
        Dark, flat, trim and distortion applied to every tile (scatter it once, flat fields
        are large, rather than embed it in the graph).
    chunk : int
        Output chunk edge; blocks are ``chunk * 2**(levels-1)`` px.
    levels : int
        Pyramid levels each block writes (1 = full resolution only); coarser ones are reduced
        from the last of them afterwards (:mod:`..pyramid`).
    feather : float
        Width in px of the linear weight ramp at tile borders (0 = flat weights).
    max_chain : int, optional
        Longest run of a row's blocks one task fuses (:func:`block_chains`; default :data:`MAX_CHAIN`).

    Returns
    -------
    list of dask.delayed.Delayed
        One per block (in :func:`block_regions` order), each yielding the block's mean weight; the
        blocks of a chain come from one task.
    """
    block = chunk * 2 ** (levels - 1)
    # A scattered calibration (a Future) travels once per worker; a concrete one is embedded once.
    cal = delayed(calibration, pure=False) if isinstance(calibration, Calibration) else calibration
    pos = np.asarray(positions, np.float64)
    kw: dict[str, Any] = {"levels": levels, "feather": feather, "n_channels": n_channels}
    out: list[Any] = []
    for chain in block_chains(canvas_shape, block, tile_shape, max_chain=max_chain):
        if len(chain) == 1:
            out.append(delayed(fuse_block, pure=False)(read_tile, write_block, pos, tile_shape, chain[0], cal, **kw))
            continue
        task = delayed(fuse_block_chain, pure=False, nout=len(chain))
        out.extend(task(read_tile, write_block, pos, tile_shape, chain, cal, **kw))
    return out
