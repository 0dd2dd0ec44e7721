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

from collections.abc import Callable
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
        # the lines of this border's reach (the excess, the window it is measured against and the tail past it)
        reach = max(min(_REACH * e, n // 2), min(2 * e, n))
        lines = np.arange(reach) if side in ("left", "top") else n - 1 - np.arange(reach)
        # block rows (left/right) or columns (top/bottom) of the usable bands, minus the model
        data = stats.rows if horizontal else stats.cols
        model = dark + background * flat_band_means[0 if horizontal else 1][bi[:, None], lines[None, :]]
        picked = data[tiles[ti][:, None], bi[:, None], lines[None, :]] - model
        # past the window a band counts only while it stays agarose (tissue further in is not stray light)
        picked[~_dim_run(dims[ti], bi, side, horizontal, b, reach)] = np.nan
        # the median along the last, contiguous axis: numpy's partition across rows is several times slower
        counted = np.isfinite(picked).sum(axis=0) >= 3
        inward = np.full(reach, np.nan)
        inward[counted] = np.nanmedian(np.ascontiguousarray(picked.T[counted]), axis=1)
        excess, missed = _border_excess(inward, e, floor, _TAIL_LEVEL * background)
        tail = max(tail, missed)
        if side in ("left", "top"):
            profiles[horizontal][: len(excess)] += excess
        else:
            profiles[horizontal][n - len(excess) :] += excess[::-1]
    return profiles[True], profiles[False], max(tail, 0.0)


#: Fall across the window, as a fraction of the agarose level, past which the stray light's tail is fitted.
_TAIL_LEVEL = 0.1
#: How far in (in border widths, up to half the tile) the stray light's tail is followed.
_REACH = 6


def _dim_run(
    dims: npt.NDArray[np.bool_], bands: npt.NDArray[np.intp], side: str, horizontal: bool, b: int, reach: int
) -> npt.NDArray[np.bool_]:
    """(bands, reach): whether each line of each band lies before the band's first non-agarose block (the
    block at the border itself, which the stray light may raise, does not count)."""
    seq = dims[np.arange(len(bands)), bands, :] if horizontal else dims[np.arange(len(bands)), :, bands]
    if side in ("right", "bottom"):
        seq = seq[:, ::-1]
    inside = seq.copy()
    inside[:, 0] = True
    run = np.where(inside.all(axis=1), inside.shape[1], np.argmin(inside, axis=1))  # dim blocks from the border
    return np.asarray(np.arange(reach)[None, :] // b < run[:, None])


def _border_excess(inward: _Float, e: int, floor: float, level: float) -> tuple[npt.NDArray[np.float64], float]:
    """The stray light along one border, per line inwards, from the excess profile ``inward`` (NaN: not measured).

    Within ``e`` lines of the border it is the excess over the window ``[e, 2 e)``'s median. Where that finds
    stray light at the border and the light still falls across the window by more than ``level`` (a tenth of
    the agarose's: what the flat's fit would take for vignetting), it reaches further in: then
    an exponential tail is fitted with a sloped baseline (``c0 + c1 x + a exp(-x / s)``, the scale searched on
    a grid) over the lines measured, and kept where it explains the profile far better than the baseline
    alone (:data:`_TAIL_F`). Light that reaches tens of px in must not pass for vignetting: a flat fitted on it
    made the sweep's draw 80 (stray light falling over 23 px) a 60 % ramp across the tile. Returns the profile
    (0 below ``floor``; only the run touching the border) and what it may have missed: with a tail, twice its
    value at the last line measured with what the baseline's slope leaves open; without one, twice the fall
    across the window.
    """
    x = np.arange(len(inward), dtype=np.float64)
    seen = np.isfinite(inward)
    window = inward[e : 2 * e][seen[e : 2 * e]]
    if not window.size:
        return np.zeros(len(inward)), 0.0
    q = max(1, window.size // 4)
    fall = max(2.0 * float(np.mean(window[:q]) - np.mean(window[-q:])), 0.0)
    near = np.where(x < e, np.nan_to_num(inward - float(np.median(window))), 0.0)
    excess = _border_run(near, floor)
    if not (excess.any() and fall > max(floor, level)):
        return excess, fall
    last = int(np.flatnonzero(seen)[-1])
    tail = _tail_fit(x[seen], inward[seen], last, 2.0 * e)
    # the window's estimate is short by the light inside the window, not by several times: a tail that would
    # make the border far brighter traded with the baseline (seen: a 90 px "decay" of 8x the light)
    if tail is None or tail[1] > _TAIL_AT_MOST * float(excess[0]) + floor:
        return excess, fall
    baseline, amplitude, scale, spread = tail
    curve = amplitude * np.exp(-x / scale)
    profile = _border_run(np.where(x < e, np.nan_to_num(inward - baseline(x)), curve), floor)
    return profile, float(np.hypot(2.0 * curve[last], spread))


#: A tail's border value may be at most this multiple of the window's estimate there (which it corrects).
_TAIL_AT_MOST = 2.5
#: How much better (F statistic of the exponential's two extra terms) the tail must fit than the baseline alone.
_TAIL_F = 20.0


def _tail_fit(
    xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], last: int, longest: float
) -> tuple[Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]], float, float, float] | None:
    """Baseline, amplitude and scale of ``c0 + c1 x + a exp(-x / s)`` fitted to the profile, and how far the
    baseline at the border moves without its slope (``c1 = 0``; what the choice of baseline leaves open, which
    a bootstrap over tiles cannot see); None when the profile is too short (under 8 lines) or the exponential
    does not earn its two terms (:data:`_TAIL_F`). Decays up to ``longest`` px are searched: a longer one trades
    with the baseline over any reach a tile allows."""
    if len(xs) < 8:
        return None
    lin = np.stack([np.ones_like(xs), xs / max(last, 1)], axis=1)
    sse_lin = float(np.sum((lin @ np.linalg.lstsq(lin, ys, rcond=None)[0] - ys) ** 2))
    sloped, level = _best_tail(lin, xs, ys, longest), _best_tail(lin[:, :1], xs, ys, longest)
    if sloped is None:
        return None
    dof = len(xs) - 4
    if dof <= 0 or (sse_lin - sloped[0]) / 2.0 < _TAIL_F * max(sloped[0], 1e-12) / dof:
        return None
    # the slope trades with a long tail: kept only where it earns its term
    flat_enough = level is not None and level[0] - sloped[0] < _TAIL_F * max(sloped[0], 1e-12) / dof
    chosen, other = (level, sloped) if flat_enough and level is not None else (sloped, level)
    _, scale, coef = chosen
    c0, c1 = float(coef[0]), float(coef[1]) if len(coef) == 3 else 0.0
    spread = abs(c0 - float(other[2][0])) if other is not None else abs(float(coef[-1]))

    def baseline(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return c0 + c1 * x / max(last, 1)

    return baseline, float(coef[-1]), scale, spread


def _best_tail(
    base: npt.NDArray[np.float64], xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], longest: float
) -> tuple[float, float, npt.NDArray[np.float64]] | None:
    """(sse, scale, coefficients) of ``base`` plus ``a exp(-x / s)`` with ``a > 0``, the scale on a grid."""
    best: tuple[float, float, npt.NDArray[np.float64]] | None = None
    for scale in np.geomspace(1.0, max(longest, 1.5), 32):
        design = np.column_stack([base, np.exp(-xs / scale)])
        coef = np.linalg.lstsq(design, ys, rcond=None)[0]
        sse = float(np.sum((design @ coef - ys) ** 2))
        if coef[-1] > 0 and (best is None or sse < best[0]):
            best = (sse, float(scale), coef)
    return best


def _border_run(near: npt.NDArray[np.float64], floor: float) -> npt.NDArray[np.float64]:
    """``near`` where it exceeds ``floor`` along the run touching the border, 0 elsewhere."""
    excess = np.where(near > floor, near, 0.0)
    excess[_run(excess > 0) :] = 0.0
    return excess


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
