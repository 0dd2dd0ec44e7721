"""Stray light at the tile borders and the trim it calls for.

Stray light is additive light that enters next to one or more tile borders
(scan turnarounds, reflections) and decays within a few pixels. It is
measured in empty agarose next to each border (from the tiles' block-row and block-column means,
:class:`._summary.TileStats`), against the model
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
from ._summary import TileStats

__all__ = ["SIDES", "estimate_stray", "flat_bands", "measured_sides", "stray_profiles", "trim_from_stray"]

_Float = npt.NDArray[np.floating[Any]]

SIDES = ("top", "bottom", "left", "right")


def estimate_stray(
    stats: TileStats,
    dim: npt.NDArray[np.bool_],
    dark: float,
    flat: npt.ArrayLike,
    background: float,
    edge_px: int,
    floor: float,
) -> tuple[npt.NDArray[np.float64], float]:
    """Additive excess over ``dark + background * flat`` next to each border, from dim bands.

    Parameters
    ----------
    stats : TileStats
        One channel's tiles, reduced: their block-row and block-column means (``rows``, ``cols``).
    dim : ndarray (T, H // block, W // block) of bool
        Blocks of empty agarose (the dim class).
    dark, flat, background
        The tile model: dark offset, flat field (H, W), flat-corrected agarose level.
    edge_px : int
        Border width searched for stray light.
    floor : float
        Excess below this many counts is set to 0.

    Returns
    -------
    stray : ndarray (H, W) float64
        0 away from the affected borders.
    tail : float
        Largest stray light the estimate may have missed (counts): light still falling across the
        reference window ``[edge_px, 2 edge_px)`` means it reaches past it, and the part inside the
        window was subtracted as background. Twice the fall across the window (an exponential of
        any scale loses less than that), 0 where the window is flat.
    """
    h, w = stats.shape
    if background <= 0:
        return np.zeros((h, w)), 0.0
    horiz, vert, tail = stray_profiles(stats, dim, dark, flat_bands(flat, stats.block), background, edge_px, floor)
    return horiz[None, :] + vert[:, None], tail


def flat_bands(flat: npt.ArrayLike, block: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Block-row means (H // block, W) and block-column means (W // block, H) of a flat, as in :class:`TileStats`."""
    f = np.asarray(flat, np.float64)
    h, w = f.shape
    hb, wb = h // block, w // block
    rows = f[: hb * block].reshape(hb, block, w).mean(axis=1)
    cols = f[:, : wb * block].reshape(h, wb, block).mean(axis=2).T
    return rows, cols


def stray_profiles(
    stats: TileStats,
    dim: npt.NDArray[np.bool_],
    dark: float,
    flat_band_means: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    background: float,
    edge_px: int,
    floor: float,
    index: npt.NDArray[np.intp] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """The stray light of :func:`estimate_stray` as two profiles, ``stray = horiz[None, :] + vert[:, None]``.

    ``flat_band_means`` is :func:`flat_bands` of the flat; ``index`` picks the tiles (a bootstrap draw,
    repeats allowed: only the usable bands are gathered). Returns ``(horiz (W,), vert (H,), tail)``.
    """
    b, e = stats.block, edge_px
    h, w = stats.shape
    tiles = np.arange(stats.n_tiles) if index is None else np.asarray(index)
    dims = dim[tiles]
    k = int(np.ceil(e / b))  # first block row/column inside the fitted region
    profiles = {True: np.zeros(w), False: np.zeros(h)}
    tail = 0.0
    for side in SIDES:
        horizontal = side in ("left", "right")
        ok = _usable_bands(dims, side, k)
        if ok.sum() < 3:
            continue
        ti, bi = np.nonzero(ok)
        n = w if horizontal else h
        # only the lines within 2 edge_px of this border count (the excess and the window it is measured
        # against), inwards from the border
        lines = np.arange(min(2 * e, n)) if side in ("left", "top") else n - 1 - np.arange(min(2 * e, n))
        # block rows (left/right) or columns (top/bottom) of the usable bands, minus the model
        data = stats.rows if horizontal else stats.cols
        model = dark + background * flat_band_means[0 if horizontal else 1][bi[:, None], lines[None, :]]
        picked = data[tiles[ti][:, None], bi[:, None], lines[None, :]] - model
        # the median along the last, contiguous axis: numpy's partition across rows is several times slower
        inward = np.median(np.ascontiguousarray(picked.T), axis=1)
        near, window = inward[:e], inward[e : 2 * e]
        near = near - np.median(window)
        q = max(1, window.size // 4)
        tail = max(tail, 2.0 * float(np.mean(window[:q]) - np.mean(window[-q:])))
        excess = np.where(near > floor, near, 0.0)
        excess[_run(excess > 0) :] = 0.0  # only the run touching the border
        if side in ("left", "top"):
            profiles[horizontal][:e] += excess
        else:
            profiles[horizontal][n - e :] += excess[::-1]
    return profiles[True], profiles[False], max(tail, 0.0)


def measured_sides(dim: npt.NDArray[np.bool_], block: int, edge_px: int) -> tuple[str, ...]:
    """Sides along which :func:`estimate_stray` found enough agarose bands to measure the stray light."""
    k = int(np.ceil(edge_px / block))
    return tuple(side for side in SIDES if _usable_bands(dim, side, k).sum() >= 3)


def _usable_bands(dim: npt.NDArray[np.bool_], side: str, k: int) -> npt.NDArray[np.bool_]:
    """(T, bands) flags: the bands along ``side`` whose blocks are agarose far enough in.

    A band (block row for left/right) is usable in tile i when its first inside block is dim
    and so is the block after it: the scene there is agarose, so is (very likely) the border.
    Every block of the band from the second one off the border (the first may be raised by
    the stray light itself) to one past block ``k`` (the first inside the fitted region) must be
    dim: tissue reaching the border would otherwise pass for stray light.
    """
    horizontal = side in ("left", "right")
    n_blocks = dim.shape[2] if horizontal else dim.shape[1]
    idx = k if side in ("left", "top") else n_blocks - 1 - k
    span = slice(1, idx + 2) if side in ("left", "top") else slice(idx - 1, n_blocks - 1)
    ok: npt.NDArray[np.bool_] = dim[:, :, span].all(axis=2) if horizontal else dim[:, span, :].all(axis=1)
    return ok


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
