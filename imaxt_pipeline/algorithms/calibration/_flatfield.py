"""Tile calibration: dark offset, flat field and stray light, estimated from the tiles themselves.

A detector tile is modelled as::

    raw(p) = dark + flat(p) * scene(p) + stray(p)

with ``flat`` a smooth multiplicative vignetting profile (mean 1 over the
tile) and ``stray`` an additive profile that decays from one or more tile
borders (:mod:`._stray`). :func:`estimate_tile_model` estimates all
three, no calibration frames needed:

1. tiles are reduced to blocks; once the current dark and flat are removed,
   blocks are split into a dim class (empty agarose) and a bright class
   (tissue) by Otsu's threshold on a log scale; beads and blocks astride a
   class edge are left out;
2. every (tile, class) group has its own scene level ``L``, so a block at
   position ``p`` is ``dark + flat(p) * L``, with the flat a low-degree
   polynomial. Groups are weighted by the relative scatter of their class:
   agarose is nearly uniform and, where a tile has much of it, pins the
   flat, while textured tissue weighs less;
3. for a given dark this is solved by alternating least squares; the dark
   is where the residual is smallest (two scene levels seen through one
   flat separate additive and multiplicative terms). Both classes are
   treated alike, so the noisier one does not bias the dark, as a
   regression of one class on a fit of the other would;
4. the fit is repeated with the classes redrawn and outlying blocks
   down-weighted; after the first pass the stray light is measured and the
   border lines it does not dominate join the fit (the seams lie there).

:func:`._seams.overlap_mismatch` checks a calibration where it shows: the
seams of the mosaic. Nothing here reads or writes storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ..optics import Trim, tile_coordinates
from ._basis import polynomial_basis, polynomial_surface
from ._bootstrap import Bootstrap
from ._dark_check import check_dark
from ._level_fit import LevelFit
from ._stray import SIDES, estimate_stray, measured_sides, trim_from_stray
from ._summary import TileStats, default_block, low_percentile, summarise

__all__ = ["TileModel", "estimate_dark", "estimate_tile_model"]

_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TileModel:
    """Result of :func:`estimate_tile_model` for one channel.

    Attributes
    ----------
    dark : float
        Additive offset (counts).
    flat : ndarray (H, W) float32
        Multiplicative flat field, mean 1.
    stray : ndarray (H, W) float32
        Additive stray light (counts, 0 away from the affected borders).
    trim : Trim
        Border lines where the stray light exceeds the background signal.
    background : float
        Scene level of the dim class (empty agarose) after flat correction.
    dark_source : str
        ``"two-level fit"`` when the dark offset was separated from the
        flat, ``"given"``, or ``"low-percentile"`` (an upper bound) when the
        data could not separate them (no bright or no dim class);
        ``"flat + dim-class fit"`` when a known flat was given.
    contrast : float
        Median bright-class over median dim-class block level (raw counts).
    support : float
        ``min(n / s²)`` over the two classes of the last fit that separated
        the dark from the flat (``n`` blocks of relative scatter ``s``; 0 if
        none did): how well this channel pins dark and flat.
    dark_sigma : float
        1-sigma of ``dark`` over a bootstrap of the tiles (NaN without one; 0 for a given dark).
    flat_sigma : ndarray (H // block, W // block) float32, optional
        1-sigma relative error of the flat at the block centres (bootstrap; None when not fitted).
    stray_amplitude, stray_sigma : float
        Largest stray light (counts, at the border) and its bootstrap 1-sigma (NaN without one, or
        when a side could not be measured).
    stray_unmeasured : tuple of str
        Sides without enough agarose next to them to measure stray light there (it may be there).
    flat_refused : str
        Why the fitted flat was refused and a uniform one used instead (empty when it was not).
    """

    dark: float
    flat: npt.NDArray[np.float32]
    stray: npt.NDArray[np.float32]
    trim: Trim
    background: float
    dark_source: str
    contrast: float = float("nan")
    support: float = 0.0
    dark_sigma: float = float("nan")
    flat_sigma: npt.NDArray[np.float32] | None = None
    stray_amplitude: float = 0.0
    stray_sigma: float = float("nan")
    stray_unmeasured: tuple[str, ...] = ()
    flat_refused: str = ""


#: A fitted flat whose darkest point is under this fraction of its brightest is refused: that is 75 %
#: vignetting, which no objective used for imaging has (STPT's are 10-50 %); such a flat is dim tissue
#: taken for vignetting, and dividing by it multiplies the dim corners' scene (and beads) several times over.
MIN_FLAT_RATIO = 0.25


def estimate_dark(tiles: npt.ArrayLike, *, percentile: float = 0.5, smooth: float = 2.0) -> float:
    """Low percentile of the smoothed tiles: an upper bound of the dark offset.

    Exact only where some pixels see no light at all; when the faintest
    scene (agarose) emits light the result is ``dark + flat * agarose``.
    :func:`estimate_tile_model` separates the two.

    Parameters
    ----------
    tiles : ndarray (..., H, W)
        Raw tiles of one channel.
    percentile, smooth : float
        Percentile taken of the tiles smoothed by a Gaussian of ``smooth`` px.

    Returns
    -------
    float
    """
    arr = np.asarray(tiles)
    if arr.ndim < 2:
        raise ValueError(f"tiles must have at least 2 dimensions, got shape {arr.shape}")
    stats = summarise(arr.reshape(-1, *arr.shape[-2:]), block=max(1, min(arr.shape[-2:]) // 2), smooth=smooth)
    return low_percentile(stats, percentile)


def estimate_tile_model(
    tiles: npt.ArrayLike | TileStats,
    *,
    dark: float | None = None,
    flat: npt.ArrayLike | None = None,
    block: int | None = None,
    edge_px: int | None = None,
    degree: int = 2,
    stray_floor: float = 0.5,
    trim_threshold: float = 1.0,
    max_trim_px: int | None = None,
    bead_factor: float = 3.0,
    passes: int = 3,
    bootstrap: int = 0,
    seed: int = 0,
) -> TileModel:
    """Dark offset, flat field and stray light of one channel from its tiles.

    Parameters
    ----------
    tiles : ndarray (T, H, W) or TileStats
        Raw tiles of one channel (any slices; a few dozen suffice), or their
        statistics (:func:`._summary.summarise_tile`, reduced where they were read).
    dark : float, optional
        Known dark offset; estimated when None.
    flat : ndarray (H, W), optional
        Known flat field (e.g. another channel's, the optics being shared);
        only the dark, levels and stray light are then fitted.
    block : int, optional
        Block edge in px for the statistics (default ``min(H, W) // 32``, >= 4;
        that of ``tiles`` when they are statistics).
    edge_px : int, optional
        Border width left out of the first fit and searched for stray light
        (default 8 % of the tile, >= 2 blocks).
    degree : int
        Total degree of the polynomial flat surface.
    stray_floor : float
        Stray light below this many counts is set to 0.
    trim_threshold : float
        Border lines whose stray light exceeds this multiple of the dim
        class level are trimmed (the subtraction is exact in expectation,
        but the shot noise there swamps the scene).
    max_trim_px : int, optional
        Cap of the trim per side (e.g. a quarter of the tile overlap);
        default ``edge_px // 2``.
    bead_factor : float
        Bright blocks above this multiple of the median bright block (beads)
        are left out of the tissue class.
    passes : int
        Fits, each with the classes redrawn from the previous one.
    bootstrap, seed : int
        Replicates of the last fit over tiles drawn with replacement (0: none), giving
        ``dark_sigma``, ``flat_sigma`` and ``stray_sigma``; the seed of the draws.

    Returns
    -------
    TileModel

    Raises
    ------
    ValueError
        If ``tiles`` is not 3-D or too small, or ``flat`` does not match.
    """
    if isinstance(tiles, TileStats):
        stats = tiles
        if block is not None and block != stats.block:
            raise ValueError(f"block {block} differs from the statistics' {stats.block}")
    else:
        arr = np.asarray(tiles)
        if arr.ndim != 3:
            raise ValueError(f"tiles must be (T, H, W), got shape {arr.shape}")
        stats = summarise(arr, block=block or default_block(arr.shape[1:]))
    (h, w), b = stats.shape, stats.block
    e = edge_px if edge_px is not None else max(2 * b, int(0.08 * min(h, w)))
    if min(h, w) < 4 * b or min(h, w) <= 2 * e + 2 * b:
        raise ValueError(f"tiles of shape {(h, w)} too small for block {b} and edge {e}")
    blocks = stats.blocks
    hb, wb = blocks.shape[1:]
    cy, cx = (np.arange(hb) + 0.5) * b - 0.5, (np.arange(wb) + 0.5) * b - 0.5
    bv, bu = tile_coordinates(cy, cx, (h, w))
    basis = polynomial_basis(bv[:, None], bu[None, :], degree, kind="monomial")
    pv, pu = tile_coordinates(np.arange(h), np.arange(w), (h, w))
    region = np.outer((cy - b / 2 >= e) & (cy + b / 2 <= h - e), (cx - b / 2 >= e) & (cx + b / 2 <= w - e))
    coef: _Array | None = None
    if flat is not None:
        given_flat = np.asarray(flat, np.float64)
        if given_flat.shape != (h, w):
            raise ValueError(f"flat of shape {given_flat.shape} does not match the tiles' {(h, w)}")
        surface = given_flat / given_flat.mean()
        fb = _block_means(surface[None], b)[0]
    else:
        coef = np.zeros(basis.shape[-1])
        coef[0] = 1.0
        fb = basis @ coef
        surface = np.ones((h, w))
    d = float(np.percentile(blocks, 0.5)) if dark is None else float(dark)
    source = "given" if dark is not None else "low-percentile"
    robust = np.ones(blocks.shape)
    stray, stray_tail = np.zeros((h, w)), 0.0
    stray_b = np.zeros((hb, wb))
    background, contrast, support, dim = 0.0, float("nan"), 0.0, np.zeros(blocks.shape, bool)
    for it in range(max(1, passes)):
        data = blocks - stray_b
        dim, cls = _classes(data, d, fb, bead_factor)
        if (cls == 0).any() and (cls == 1).any():
            contrast = float(np.median(blocks[cls == 1]) / max(np.median(blocks[cls == 0]), 1e-6))
        fit = LevelFit(data, cls, region, robust, basis, coef, fb, d)
        if fit.n_groups == 0:
            break
        separated = dark is not None
        if dark is None:
            d_fit = fit.best_dark()
            separated = d_fit is not None
            if d_fit is not None:
                d, source = d_fit, "two-level fit" if coef is not None else "flat + dim-class fit"
        support = fit.support() if separated else 0.0
        # One scene level cannot tell the flat from a dark error: keep the flat (uniform at first) then.
        new_coef, levels, _ = fit.solve(d, fit_flat=separated)
        robust[fit.index] = fit.robust_weights(d, new_coef, levels)
        if coef is not None and separated and new_coef is not None:
            coef = new_coef
            fb = basis @ coef
            surface = polynomial_surface(coef, pv, pu, degree, kind="monomial")
            surface = np.maximum(surface / surface.mean(), 0.05)
        dim_levels = levels[fit.group_class == 0]
        background = float(np.median(dim_levels)) if dim_levels.size else 0.0
        if it == 0 or it == passes - 1:
            stray, stray_tail = estimate_stray(stats, dim, d, surface, background, e, stray_floor)
            stray_b = _block_means(stray[None], b)[0]
            # From now on the fit reaches the border lines, where the seams are, unless stray light rules them.
            region = stray_b <= 0.1 * max(background, stray_floor)
    ratio = float(surface.min() / max(float(surface.max()), 1e-12))
    if flat is None and coef is not None and ratio < MIN_FLAT_RATIO:
        # refit with a uniform flat: dark, levels and stray light then come from a flat that can be
        uniform = estimate_tile_model(
            stats,
            dark=dark,
            flat=np.ones((h, w)),
            edge_px=edge_px,
            degree=degree,
            stray_floor=stray_floor,
            trim_threshold=trim_threshold,
            max_trim_px=max_trim_px,
            bead_factor=bead_factor,
            passes=passes,
            bootstrap=bootstrap,
            seed=seed,
        )
        why = f"fitted flat refused: its darkest point is {ratio:.2f} of its brightest (under {MIN_FLAT_RATIO})"
        return replace(uniform, flat_refused=why)
    cap = e // 2 if max_trim_px is None else int(max_trim_px)
    trim = trim_from_stray(stray, max(trim_threshold * background, stray_floor), cap)
    unmeasured = tuple(side for side in SIDES if side not in measured_sides(dim, b, e))
    spread: dict[str, Any] = {}
    if bootstrap > 0 and fit.n_groups:
        draw = Bootstrap(stats, fit, basis, coef, dim, background, e, stray_floor)
        fixed = dark is not None or source == "low-percentile"
        check = check_dark(stats, d) if not fixed and stats.noise_means.size else None
        spread = draw.sigmas(d, surface, fixed_dark=fixed, n=bootstrap, seed=seed, check=check)
    return TileModel(
        float(d),
        surface.astype(np.float32),
        stray.astype(np.float32),
        trim,
        background,
        source,
        contrast,
        support,
        dark_sigma=0.0 if dark is not None else spread.get("dark", float("nan")),
        flat_sigma=spread.get("flat"),
        stray_amplitude=float(stray.max()),
        # the draws' scatter and what may lie past the window the stray light is measured against
        stray_sigma=float(np.hypot(spread["stray"], stray_tail))
        if "stray" in spread and not unmeasured
        else float("nan"),
        stray_unmeasured=unmeasured,
    )


def _classes(
    blocks: _Array, dark: float, fb: _Array, bead_factor: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int8]]:
    """Dim mask and class per block (0 dim core, 1 bright core, -1 left out) of the dark- and flat-corrected blocks."""
    from skimage.filters import threshold_otsu as _otsu  # scikit-image: imported when the fit runs

    threshold_otsu: Callable[[_Array], float] = _otsu

    v = (blocks - dark) / np.maximum(fb, 1e-6)
    lv = np.log(np.maximum(v, 1.0))
    thr = float(np.exp(threshold_otsu(lv))) if np.ptp(lv) > 0 else np.inf
    dim = v < thr
    bright = v[~dim]
    # Very bright outliers (beads, several times the typical tissue level) are left out of the bright class.
    cap = bead_factor * float(np.median(bright)) if bright.size else np.inf
    # Blocks astride a tissue edge mix both levels: keep blocks whose 8 neighbours share their class.
    core = np.ones((1, 3, 3), bool)
    cls = np.full(blocks.shape, -1, np.int8)
    cls[ndi.binary_erosion(dim, core, border_value=1)] = 0
    cls[ndi.binary_erosion(~dim & (v < cap), core, border_value=1)] = 1
    return dim, cls


def _block_means(arr: npt.NDArray[np.floating[Any]], b: int) -> _Array:
    """Mean over ``b`` x ``b`` blocks of every tile of ``arr`` (T, H, W), partial blocks at the far edges dropped."""
    t, h, w = arr.shape
    hb, wb = h // b, w // b
    out: _Array = arr[:, : hb * b, : wb * b].reshape(t, hb, b, wb, b).mean(axis=(2, 4), dtype=np.float64)
    return out
