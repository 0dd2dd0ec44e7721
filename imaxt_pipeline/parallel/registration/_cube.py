"""Slice alignment: block tasks writing the cube (:func:`shift_block`).

:func:`shift_block` is what the ``cube`` step runs: one task per output block of a plane reads
only the mosaic window it needs (a margin of ``order + 2`` px), shifts it and writes the block's
first pyramid levels, so no task ever holds a whole plane and the graph carries no data.

Each plane is moved by its own sub-pixel offset: the integer part by
cropping/zero-padding (no computation), the fractional part by
:func:`scipy.ndimage.shift` mapped over chunks with a small overlap. The
result equals :func:`imaxt_pipeline.algorithms.registration.apply_offset`
plane by plane (exactly for ``order=1``).
"""

from __future__ import annotations

import numpy as np

from ...io.ome import OmeImage

__all__ = ["shift_block"]


def _frac_shift(block: np.ndarray, *, shift: tuple[float, ...], order: int) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.shift(block.astype(np.float32), shift, order=order, mode="grid-constant", cval=0.0, prefilter=order > 1)


def shift_block(
    mosaic: OmeImage,
    cube: OmeImage,
    plane: int,
    region: tuple[int, int, int, int],
    offset: np.ndarray,
    *,
    pad_before: np.ndarray,
    order: int = 1,
    levels: int = 1,
) -> int:
    """Write block ``region`` (``y0, y1, x0, x1`` of the cube canvas) of one aligned plane.

    Canvas pixel ``y'`` samples mosaic row
    ``y' - pad_before + offset`` (zero outside the mosaic); ``levels`` pyramid levels are written
    (:meth:`~imaxt_pipeline.io.ome.OmeImage.write_block`). Returns the plane.
    """
    y0, y1, x0, x1 = (int(v) for v in region)
    src = np.asarray(offset, dtype=np.float64) - np.asarray(pad_before, dtype=np.float64)
    it = np.floor(src).astype(int)
    ft = src - it
    margin = order + 2 if np.any(ft > 1e-9) else 0
    top, left = y0 + int(it[0]) - margin, x0 + int(it[1]) - margin
    h, w = y1 - y0 + 1 + 2 * margin, x1 - x0 + 1 + 2 * margin
    arr = mosaic.array(0, mode="r")
    height, width = arr.shape[-2:]
    window = np.zeros((arr.shape[0], h, w), np.float32)
    ys, ye, xs, xe = max(top, 0), min(top + h, height), max(left, 0), min(left + w, width)
    if ys < ye and xs < xe:
        window[:, ys - top : ye - top, xs - left : xe - left] = arr[:, plane, ys:ye, xs:xe]
    if margin:
        window = np.stack([_frac_shift(ch, shift=(-ft[0], -ft[1]), order=order) for ch in window])
    out = window[:, margin : margin + y1 - y0, margin : margin + x1 - x0]
    cube.write_block(plane, (y0, x0), out, n_levels=levels)
    return plane
