"""Lazy slice alignment of a (c, z, y, x) Dask stack.

Each plane is moved by its own sub-pixel offset: the integer part by
cropping/zero-padding (no computation), the fractional part by
:func:`scipy.ndimage.shift` mapped over chunks with a small overlap. The
result equals :func:`imaxt_pipeline.algorithms.registration.apply_offset`
plane by plane (exactly for ``order=1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["align_plane", "align_stack"]


def _window(arr: Any, axis: int, start: int, length: int) -> Any:
    """``arr`` indices ``start .. start + length`` along ``axis``, zero outside."""
    import dask.array as da

    n = arr.shape[axis]
    lo, hi = max(start, 0), min(start + length, n)
    index = [slice(None)] * arr.ndim
    index[axis] = slice(lo, max(hi, lo))
    part = arr[tuple(index)]
    pad = [(0, 0)] * arr.ndim
    before = max(-start, 0)
    pad[axis] = (before, length - before - part.shape[axis])
    return da.pad(part, pad, mode="constant") if any(pad[axis]) else part


def _frac_shift(block: np.ndarray, *, shift: tuple[float, ...], order: int) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.shift(block.astype(np.float32), shift, order=order, mode="grid-constant", cval=0.0, prefilter=order > 1)


def align_plane(
    plane: Any,
    offset: np.ndarray,
    *,
    pad_before: np.ndarray,
    out_shape: tuple[int, int],
    order: int = 1,
    chunks: tuple[int, int] = (512, 512),
) -> Any:
    """Lazily move one (c, y, x) plane onto the aligned canvas.

    Parameters
    ----------
    plane : dask.array.Array (c, H, W)
        Mosaic plane.
    offset : ndarray (2,)
        ``(dy, dx)`` of the slice.
    pad_before : ndarray (2,) of int
        Canvas origin shift.
    out_shape : (int, int)
        Canvas size.
    order : int, optional
        Interpolation order.
    chunks : (int, int), optional
        Output chunk size in y, x.

    Returns
    -------
    dask.array.Array (c, out_shape[0], out_shape[1]) of float32
    """
    # Output pixel y' reads input y' - pad + dy = y' + it + ft, it = floor, ft in [0, 1).
    src = np.asarray(offset, dtype=np.float64) - np.asarray(pad_before, dtype=np.float64)
    it = np.floor(src).astype(int)
    ft = src - it
    out = plane.astype(np.float32)
    for ax, (start, length) in enumerate(zip(it, out_shape, strict=True)):
        out = _window(out, ax + 1, int(start), int(length) + 1)
    out = out.rechunk((1, *chunks))
    if np.any(ft > 1e-9):
        depth = {0: 0, 1: order + 2, 2: order + 2}
        out = out.map_overlap(
            _frac_shift,
            depth=depth,
            boundary=0,
            dtype=np.float32,
            meta=np.empty((0, 0, 0), np.float32),
            shift=(0.0, -ft[0], -ft[1]),
            order=order,
        )
    return out[:, : out_shape[0], : out_shape[1]]


def align_stack(
    stack: Any,
    offsets: np.ndarray,
    *,
    pad_before: np.ndarray,
    out_shape: tuple[int, int],
    order: int = 1,
    chunks: tuple[int, int] = (512, 512),
) -> Any:
    """Lazily align every plane of a (c, z, y, x) stack (see :func:`align_plane`).

    Parameters
    ----------
    stack : dask.array.Array (c, z, H, W)
        Mosaic planes.
    offsets : ndarray (z, 2)
        ``(dy, dx)`` per plane.
    pad_before, out_shape, order, chunks
        See :func:`align_plane`.

    Returns
    -------
    dask.array.Array (c, z, out_shape[0], out_shape[1]) of float32

    Raises
    ------
    ValueError
        If ``offsets`` does not have one row per plane.
    """
    import dask.array as da

    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    if stack.ndim != 4 or len(offsets) != stack.shape[1]:
        raise ValueError(
            f"need a (c, z, y, x) stack and one offset per plane, got {stack.shape} and {len(offsets)} offsets"
        )
    planes = [
        align_plane(stack[:, z], offsets[z], pad_before=pad_before, out_shape=out_shape, order=order, chunks=chunks)
        for z in range(stack.shape[1])
    ]
    return da.stack(planes, axis=1)
