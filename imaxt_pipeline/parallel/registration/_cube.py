"""Slice alignment: each mosaic plane moved onto the cube canvas, one task per block, written block by block.

:func:`aligned_plane` is the shift of one plane as a lazy array. Each of its blocks is one task
(:func:`shift_block`) that reads the part of the mosaic its samples' taps reach (every channel,
zeros where it leaves the plane: ``mode="grid-constant"``) and moves each channel. Order 1 (the
default) is :func:`~imaxt_pipeline.algorithms.registration.shift_linear`, the compiled bilinear
shift by a constant offset that :func:`~imaxt_pipeline.algorithms.registration.apply_offset` runs
on a whole plane; orders 0, 2 and 3 are scipy's ``affine_transform`` with a diagonal matrix (its
zoom/shift path). No task holds a plane, and no mosaic piece travels between workers.
:func:`write_blocks` turns its blocks into tasks writing the cube's first pyramid levels
(:meth:`~imaxt_pipeline.io.ome.OmeImage.write_block`) where they were computed.

The result equals :func:`imaxt_pipeline.algorithms.registration.apply_offset` (the whole-plane
shift, ``mode="grid-constant"``): bit for bit for ``order <= 1`` (both split the plane's offset into
the same integer part and fraction; an integral shift is a copy); for ``order > 1`` to the float32
rounding of the spline prefilter, which runs on the window with a margin of :data:`SPLINE_MARGIN`
px and at least :data:`PREFILTER_PAD` zeros beyond the plane's edges, as ``ndimage`` pads for that mode.

Why not :func:`dask_image.ndinterp.affine_transform` over the chunked mosaic (this module until
issue 15): its graph reads the mosaic in pieces shared by the output chunks, which then travel
between worker processes. Per 2048² channel block the order-1 kernel went from scipy's ~45 ns per
pixel (its per-sample loop, the same four taps) to ~2-4 ns (issue 15; ``benchmarks/fusion_kernels.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...algorithms.registration import SNAP, shift_linear, split_shift
from ...io.ome import OmeImage

__all__ = ["aligned_plane", "shift_block", "write_blocks"]

#: Zeros scipy pads a ``grid-constant`` input with before its spline prefilter
#: (``scipy.ndimage._interpolation._prepad_for_spline_filter``).
PREFILTER_PAD = 12
#: Window margin (px) of the spline prefilter for ``order > 1``: the cubic spline's pole is
#: ``sqrt(3) - 2`` (|z| = 0.27), so data this far out weigh ``0.27**32 < 1e-17`` in a coefficient.
SPLINE_MARGIN = 32


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
    """Plane ``plane`` of ``mosaic`` on the canvas ``out_shape``, lazily: ``(c, H, W)``, chunks ``(c, block, block)``.

    Canvas pixel ``(y', x')`` samples the plane at ``(y', x') - pad_before + offset`` (zero
    outside the plane); each channel is moved on its own (no interpolation across channels).
    One task per ``block``-sized block computes every channel (:func:`shift_block`), one chunk
    (:func:`write_blocks` writes it as it is: no per-channel pieces to gather). An integral
    shift is a copy, so an unregistered cube holds the mosaic's values bit for bit.
    """
    import dask.array as da
    from dask import delayed

    src = np.asarray(offset, np.float64) - np.asarray(pad_before, np.float64)
    n_channels = int(mosaic.shape[0])
    h, w = (int(v) for v in out_shape)
    rows = []
    for y0 in range(0, h, block):
        row = []
        for x0 in range(0, w, block):
            region = (y0, min(y0 + block, h), x0, min(x0 + block, w))
            task = delayed(shift_block, pure=True)(mosaic, int(plane), region, tuple(src.tolist()), order)
            shape = (n_channels, region[1] - y0, region[3] - x0)
            row.append(da.from_delayed(task, shape=shape, dtype=np.float32))
        rows.append(row)
    return da.block(rows)


def shift_block(
    mosaic: OmeImage, plane: int, region: tuple[int, int, int, int], src: tuple[float, float], order: int = 1
) -> np.ndarray:
    """Block ``region`` (``y0, y1, x0, x1`` of the canvas) of :func:`aligned_plane`: ``(c, h, w)`` float32.

    Canvas pixel ``(y, x)`` samples plane ``plane`` of ``mosaic`` at ``(y, x) + src``.
    """
    y0, y1, x0, x1 = (int(v) for v in region)
    h, w = y1 - y0, x1 - x0
    arr = mosaic.array(0, mode="r")
    if order == 1:
        return _linear_block(arr, plane, (y0, x0), (h, w), src)
    start = np.array([y0 + src[0], x0 + src[1]])
    if np.all(np.abs(start - np.round(start)) < SNAP):  # integral: a copy of the mosaic window
        sy, sx = (int(v) for v in np.round(start))
        return _window(arr, plane, (sy, sy + h, sx, sx + w))
    # samples start .. start + (h - 1, w - 1) tap floor .. floor + 1 (order 0), a margin of 1 px
    # keeps every tap inside the window, which is what lets the kernel run in "constant" mode
    margin = 1 if order < 1 else SPLINE_MARGIN
    lo = np.floor(start).astype(int) - margin
    hi = np.floor(start + (h - 1, w - 1)).astype(int) + margin + 2
    if order > 1:
        # as ndimage pads a grid-constant input: at least PREFILTER_PAD zeros beyond the plane's edges
        size = np.asarray(arr.shape[-2:])
        lo = np.where(lo < 0, np.minimum(lo, -PREFILTER_PAD), lo)
        hi = np.where(hi > size, np.maximum(hi, size + PREFILTER_PAD), hi)
    window = _window(arr, plane, (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])))
    out = np.zeros((window.shape[0], h, w), np.float32)
    if not window.any():  # nothing of the plane reaches this block (the canvas's padding)
        return out
    for c in range(window.shape[0]):
        _affine_shift(window[c], start - lo, out[c], order)
    return out


def _linear_block(
    arr: Any, plane: int, origin: tuple[int, int], shape: tuple[int, int], src: tuple[float, float]
) -> np.ndarray:
    """Order 1: :func:`~imaxt_pipeline.algorithms.registration.shift_linear` on the part of the plane its taps reach.

    The samples ``origin + (0 .. shape - 1) + src`` tap rows (columns) ``floor .. floor + 1``:
    only that part of the plane is read (the kernel takes what lies outside as zeros), and the
    plane's offset ``src`` goes to the kernel unchanged, so its weights are the whole plane's.
    """
    (iy, ix), (ty, tx) = split_shift(src)
    h, w = shape
    y0, x0 = origin[0] + iy, origin[1] + ix  # first tap of the block, plane px
    y1, x1 = y0 + h + (ty > 0), x0 + w + (tx > 0)
    height, width = (int(v) for v in arr.shape[-2:])
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
    if cy1 <= cy0 or cx1 <= cx0:  # the block lies in the canvas's padding
        return np.zeros((int(arr.shape[0]), h, w), np.float32)
    window = np.asarray(arr[:, plane, cy0:cy1, cx0:cx1], dtype=np.float32)
    if (cy0, cy1, cx0, cx1) == (y0, y1, x0, x1) and ty == tx == 0.0:
        return window  # an integral shift inside the plane: the window is the block
    if not window.any():  # nothing of the plane reaches this block
        return np.zeros((window.shape[0], h, w), np.float32)
    return shift_linear(window, src, shape, origin=(origin[0] - cy0, origin[1] - cx0))


def _affine_shift(data: np.ndarray, offset: np.ndarray, out: np.ndarray, order: int) -> None:
    """``out[y, x] = data`` sampled at ``(y, x) + offset`` (order 0, 2, 3): scipy's kernel on one window.

    :func:`scipy.ndimage.affine_transform` with a diagonal matrix takes its zoom/shift path (what
    dask-image's per-chunk ``affine_transform`` runs for numpy input). Every tap of every sample
    lies inside ``data`` (the window's margin; the zeros of grid-constant beyond the plane are in
    the window), so ``mode="constant"`` gives grid-constant's values bit for bit, in ~0.7x its
    time (no boundary test per tap).
    """
    from scipy import ndimage as ndi

    if order > 1:
        data = ndi.spline_filter(data, order, output=np.float64, mode="grid-constant")
    ndi.affine_transform(
        data, np.ones(2), offset=offset, output_shape=out.shape, output=out,
        order=order, mode="constant", cval=0.0, prefilter=False,
    )  # fmt: skip


def _window(arr: Any, plane: int, region: tuple[int, int, int, int]) -> np.ndarray:
    """``[:, plane, y0:y1, x0:x1]`` of a ``(c, z, y, x)`` array in float32, zeros where the region leaves the plane."""
    y0, y1, x0, x1 = region
    n_channels, _, height, width = (int(v) for v in arr.shape)
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
    inside = cy0 == y0 and cy1 == y1 and cx0 == x0 and cx1 == x1
    if inside:
        return np.asarray(arr[:, plane, y0:y1, x0:x1], dtype=np.float32)
    out = np.zeros((n_channels, y1 - y0, x1 - x0), np.float32)
    if cy1 > cy0 and cx1 > cx0:
        out[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = arr[:, plane, cy0:cy1, cx0:cx1]
    return out


def _write(cube: OmeImage, plane: int, origin_yx: tuple[int, int], channels: list[np.ndarray], levels: int) -> int:
    # one piece (aligned_plane's chunks) is written as it is: concatenating copied 4 bytes per sample
    data = channels[0] if len(channels) == 1 else np.concatenate(channels)
    cube.write_block(plane, origin_yx, data, n_levels=levels)
    return plane


def write_blocks(cube: OmeImage, plane: int, moved: Any, *, levels: int = 1) -> list[Any]:
    """Tasks writing each block of ``moved`` (:func:`aligned_plane`) as plane ``plane`` of ``cube``.

    One task per block (gathering its channel chunks if ``moved`` has several) writes the
    block's first ``levels`` pyramid levels; the blocks must follow
    :func:`~imaxt_pipeline.io.ome.block_edge` so that no two tasks share a chunk.
    """
    import dask

    ys, xs = (np.cumsum((0, *sizes[:-1])) for sizes in moved.chunks[1:])
    blocks = moved.to_delayed()  # (channel blocks, y blocks, x blocks)
    return [
        dask.delayed(_write, pure=False)(cube, plane, (int(ys[i]), int(xs[j])), list(blocks[:, i, j]), levels)
        for i in range(len(ys))
        for j in range(len(xs))
    ]
