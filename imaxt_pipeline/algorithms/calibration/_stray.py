"""Stray light at the tile borders and the trim it calls for.

Stray light is additive light that enters next to one or more tile borders
(scan turnarounds, reflections) and decays within a few pixels. It is
measured in empty agarose next to each border, against the model
``dark + background * flat`` of :mod:`._flatfield`; the lines where it
swamps the background are trimmed (:func:`trim_from_stray`) and get
confidence 0 (:func:`..optics.confidence_map`), so matching and fusion
ignore them.

Nothing here reads or writes storage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ..optics import Trim

__all__ = ["SIDES", "estimate_stray", "trim_from_stray"]

_Float = npt.NDArray[np.floating[Any]]

SIDES = ("top", "bottom", "left", "right")


def estimate_stray(
    tiles: _Float,
    dim: npt.NDArray[np.bool_],
    block: int,
    dark: float,
    flat: npt.ArrayLike,
    background: float,
    edge_px: int,
    floor: float,
) -> npt.NDArray[np.float64]:
    """Additive excess over ``dark + background * flat`` next to each border, from dim bands.

    Parameters
    ----------
    tiles : ndarray (T, H, W)
        Raw tiles of one channel.
    dim : ndarray (T, H // block, W // block) of bool
        Blocks of empty agarose (the dim class).
    block : int
        Block edge in px.
    dark, flat, background
        The tile model: dark offset, flat field (H, W), flat-corrected agarose level.
    edge_px : int
        Border width searched for stray light.
    floor : float
        Excess below this many counts is set to 0.

    Returns
    -------
    ndarray (H, W) float64
        0 away from the affected borders.
    """
    arr, b, e = tiles, block, edge_px
    t, h, w = arr.shape
    hb, wb = dim.shape[1:]
    k = int(np.ceil(e / b))  # first block row/column inside the fitted region
    out = np.zeros((h, w))
    if background <= 0:
        return out
    model = dark + background * np.asarray(flat, np.float64)
    bands: dict[bool, npt.NDArray[np.float64]] = {}  # block rows (left/right) or columns (top/bottom) minus the model
    for side in SIDES:
        horizontal = side in ("left", "right")
        n_blocks = wb if horizontal else hb
        idx = k if side in ("left", "top") else n_blocks - 1 - k
        # A band (block row for left/right) is usable in tile i when its first inside block is dim
        # and so is the block after it: the scene there is agarose, so is (very likely) the border.
        # Every block of the band from the second one off the border (the first may be raised by
        # the stray light itself) to one past ``idx`` must be dim: tissue reaching the border would
        # otherwise pass for stray light.
        span = slice(1, idx + 2) if side in ("left", "top") else slice(idx - 1, n_blocks - 1)
        ok = dim[:, :, span].all(axis=2) if horizontal else dim[:, span, :].all(axis=1)
        if ok.sum() < 3:
            continue
        if horizontal not in bands:
            if horizontal:
                rows = arr[:, : hb * b].reshape(t, hb, b, w).mean(axis=2)
                bands[horizontal] = rows - model[: hb * b].reshape(hb, b, w).mean(axis=1)
            else:
                cols = arr[:, :, : wb * b].reshape(t, h, wb, b).mean(axis=3)
                bands[horizontal] = (cols - model[:, : wb * b].reshape(h, wb, b).mean(axis=2)).transpose(0, 2, 1)
        prof = np.median(bands[horizontal][ok], axis=0)
        n = prof.size
        near = prof[:e] if side in ("left", "top") else prof[::-1][:e]
        near = near - np.median(prof[e : 2 * e] if side in ("left", "top") else prof[::-1][e : 2 * e])
        excess = np.where(near > floor, near, 0.0)
        excess[_run(excess > 0) :] = 0.0  # only the run touching the border
        full = np.zeros(n)
        if side in ("left", "top"):
            full[:e] = excess
        else:
            full[n - e :] = excess[::-1]
        out += full[None, :] if horizontal else full[:, None]
    return out


def trim_from_stray(stray: _Float, limit: float, cap: int) -> Trim:
    """Border lines, from each side inwards, whose mean stray light exceeds ``limit`` (at most ``cap``)."""
    top, bottom, left, right = (min(cap, _run(_side_profile(stray, s) > limit)) for s in SIDES)
    return Trim(top=top, bottom=bottom, left=left, right=right)


def _side_profile(stray: _Float, side: str) -> _Float:
    """Mean stray light per line, from the ``side`` border inwards."""
    prof: _Float = stray.mean(axis=0 if side in ("left", "right") else 1)
    return prof[::-1] if side in ("right", "bottom") else prof


def _run(flags: npt.ArrayLike) -> int:
    """Length of the run of flagged lines starting at the border (0 if none)."""
    f = np.asarray(flags, bool)
    idx = np.flatnonzero(~f)
    return int(idx[0]) if idx.size else int(len(f))
