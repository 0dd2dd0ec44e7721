"""Slice alignment: each mosaic plane moved onto the cube canvas by dask-image, written block by block.

:func:`aligned_plane` is the shift of one plane as a lazy array:
:func:`dask_image.ndinterp.affine_transform` (identity matrix, the plane's sub-pixel offset)
computes every output block of a channel from only the mosaic pieces that block needs, so no
task ever holds a whole plane. :func:`write_blocks` turns its blocks into tasks writing the cube's
first pyramid levels (:meth:`~imaxt_pipeline.io.ome.OmeImage.write_block`).

The result equals :func:`imaxt_pipeline.algorithms.registration.apply_offset` (scipy's
``ndimage.shift`` of the whole plane, ``mode="grid-constant"``): to one float32 ulp for
``order <= 1`` (bit for bit for an integral shift); for ``order > 1`` to the float32 rounding
of the spline prefilter, which dask-image runs chunk by chunk with an overlap of its own
(scipy's 12 px of zero padding first, as ``ndimage`` does for that mode).

Each mosaic piece is read once and shared by the output blocks that need it, so on a
multi-process cluster pieces travel between workers, which one task reading its own window
avoided. Measured on a two-process ``LocalCluster``: the same peak memory; with 128-px chunks
(the tests) about 1.7x the wall time of that design, with the default 512-px chunks on par.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...io.ome import OmeImage

__all__ = ["aligned_plane", "write_blocks"]

#: Zeros scipy pads a ``grid-constant`` input with before its spline prefilter
#: (``scipy.ndimage._interpolation._prepad_for_spline_filter``).
PREFILTER_PAD = 12


def aligned_plane(
    mosaic: OmeImage,
    plane: int,
    offset: Any,
    *,
    pad_before: Any,
    out_shape: tuple[int, int],
    block: int,
    order: int = 1,
) -> Any:
    """Plane ``plane`` of ``mosaic`` on the canvas ``out_shape``, lazily: ``(c, H, W)``, chunks ``(1, block, block)``.

    Canvas pixel ``(y', x')`` samples the plane at ``(y', x') - pad_before + offset`` (zero
    outside the plane). The mosaic is read in ``block``-sized pieces per channel (each read
    once, by one task); each channel is moved on its own (no interpolation across channels).
    An integral shift is a copy (nearest neighbour samples pixel centres exactly), so an
    unregistered cube holds the mosaic's values bit for bit.
    """
    import dask.array as da
    from dask_image.ndinterp import affine_transform, spline_filter

    src = np.asarray(offset, np.float64) - np.asarray(pad_before, np.float64)
    if np.all(np.abs(src - np.round(src)) < 1e-9):
        src, order = np.round(src), 0
    stack = da.from_zarr(mosaic.array(0, mode="r"), chunks=(1, 1, block, block))[:, plane]
    channels = []
    for c in range(stack.shape[0]):
        data, start = stack[c], src
        if order > 1:
            # scipy's prefilter for grid-constant: pad with zeros, filter, then interpolate without it
            data = da.pad(data, PREFILTER_PAD, mode="constant", constant_values=0)
            data = spline_filter(data, order, output=np.float64, mode="grid-constant")
            start = src + PREFILTER_PAD
        moved = affine_transform(
            data,
            np.eye(2),  # a full matrix: dask-image 2026.5 misplaces chunks given a diagonal (1-D) one
            offset=start,
            output_shape=tuple(int(v) for v in out_shape),
            output_chunks=(block, block),
            order=order,
            mode="grid-constant",
            cval=0.0,
            prefilter=False,
        )
        channels.append(moved.astype(np.float32))
    return da.stack(channels)


def _write(cube: OmeImage, plane: int, origin_yx: tuple[int, int], channels: list[np.ndarray], levels: int) -> int:
    cube.write_block(plane, origin_yx, np.concatenate(channels), n_levels=levels)
    return plane


def write_blocks(cube: OmeImage, plane: int, moved: Any, *, levels: int = 1) -> list[Any]:
    """Tasks writing each block of ``moved`` (:func:`aligned_plane`) as plane ``plane`` of ``cube``.

    One task per block gathers its channels and writes the block's first ``levels`` pyramid
    levels; the blocks must follow :func:`~imaxt_pipeline.io.ome.block_edge` so that no two
    tasks share a chunk.
    """
    import dask

    ys, xs = (np.cumsum((0, *sizes[:-1])) for sizes in moved.chunks[1:])
    blocks = moved.to_delayed()  # (channel blocks, y blocks, x blocks)
    return [
        dask.delayed(_write, pure=False)(cube, plane, (int(ys[i]), int(xs[j])), list(blocks[:, i, j]), levels)
        for i in range(len(ys))
        for j in range(len(xs))
    ]
