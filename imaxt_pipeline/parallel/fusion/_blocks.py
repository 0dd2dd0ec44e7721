"""Dask layer of fusion: one lazy task per output block of a plane.

A block is ``chunk * 2**(levels - 1)`` px square and aligned to that grid,
so at every pyramid level it covers whole output chunks: tasks never write
the same chunk and need no locking. Each task reads only the tiles touching
its block (through the caller's picklable ``read_tile``), fuses them with
:func:`...algorithms.fusion.fuse_region`, downsamples its own pyramid, and
hands every level to the caller's ``write_block``. Peak memory is a block
plus its few tiles, whatever the slice size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from dask import delayed

from ...algorithms.fusion import downsample_mean, fuse_region, tiles_touching
from ...algorithms.optics import Calibration

__all__ = ["block_regions", "fuse_block", "fuse_blocks"]


def block_regions(shape: tuple[int, int], block: int) -> list[tuple[int, int, int, int]]:
    """Half-open ``(y0, y1, x0, x1)`` blocks tiling a canvas of ``shape``."""
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    h, w = shape
    return [(y0, min(y0 + block, h), x0, min(x0 + block, w)) for y0 in range(0, h, block) for x0 in range(0, w, block)]


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
    """Fuse one block and write all its pyramid levels (the kernel of each task).

    ``write_block(level, (y0, y1, x0, x1), image_cyx, weight_yx)`` receives
    level coordinates. Returns the block's mean weight (for metrics).
    """
    idx = tiles_touching(positions, tile_shape, region, distortion=calibration.distortion)
    weights = calibration.confidence(tile_shape, feather=feather)
    fused = fuse_region(
        read_tile,
        positions,
        region,
        indices=idx,
        weights=weights,
        distortion=calibration.distortion,
        calibration=calibration,
    )
    image, weight = fused.image, fused.weight
    if image.shape[0] == 0:
        image = np.zeros((n_channels, *weight.shape), np.float32)
    y0, y1, x0, x1 = region
    for level in range(levels):
        if level:
            image, weight = downsample_mean(image), downsample_mean(weight)
        f = 2**level
        write_block(level, (y0 // f, y0 // f + image.shape[-2], x0 // f, x0 // f + image.shape[-1]), image, weight)
    return float(fused.weight.mean())


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
) -> list[Any]:
    """Lazy :func:`fuse_block` for every block of one plane.

    Parameters
    ----------
    read_tile : callable
        ``i -> (C, H, W)`` raw tile of this plane; picklable.
    write_block : callable
        Receives each block's levels (see :func:`fuse_block`); picklable.
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

    Returns
    -------
    list of dask.delayed.Delayed
        One per block, each yielding the block's mean weight.
    """
    block = chunk * 2 ** (levels - 1)
    # A scattered calibration (a Future) travels once per worker; a concrete one is embedded once.
    cal = delayed(calibration, pure=False) if isinstance(calibration, Calibration) else calibration
    pos = np.asarray(positions, np.float64)
    return [
        delayed(fuse_block, pure=False)(
            read_tile, write_block, pos, tile_shape, region, cal, levels=levels, feather=feather, n_channels=n_channels
        )
        for region in block_regions(canvas_shape, block)
    ]
