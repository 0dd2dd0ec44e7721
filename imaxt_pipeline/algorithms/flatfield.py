"""Tile calibration: dark offset, flat field, stray light, border trim, confidence.

A detector tile is modelled as::

    raw(p) = dark + flat(p) * scene(p) + stray(p)

with ``flat`` a smooth multiplicative vignetting profile (1 at its maximum
region, mean 1 over the tile) and ``stray`` an additive profile that decays
from one or more tile borders. :func:`estimate_tile_model` estimates all three
from the tiles themselves, no calibration frames needed:

1. tiles are reduced to blocks; blocks are split into a dim class (empty
   agarose, constant scene level ``A``) and a bright class (tissue, level
   ``S`` on average) by Otsu's threshold;
2. per block position, the median of each class gives two images
   ``B = dark + A f`` and ``T = dark + S f``; a smooth polynomial fitted to
   ``T`` gives the shape, regressing ``B`` on it gives ``A / S`` and so the
   dark offset (two scene levels seen through the same flat field separate
   the additive and multiplicative terms);
3. the flat is the polynomial fitted to both classes (dark removed);
4. the stray light is what the dim class shows beyond ``dark + A f`` in the
   lines next to each border.

Nothing here reads or writes storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "TileModel",
    "Trim",
    "apply_flat",
    "confidence_map",
    "estimate_dark",
    "estimate_tile_model",
    "overlap_mismatch",
]

_SIDES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class Trim:
    """Rows/columns to ignore at each tile border (stray light, scan turnarounds)."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "bottom": self.bottom, "left": self.left, "right": self.right}

    def valid(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """Slices of the kept region of a tile of ``shape``."""
        h, w = shape
        return slice(self.top, h - self.bottom), slice(self.left, w - self.right)


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
        Median bright-class over median dim-class block level (raw counts):
        how well this channel separates dark from flat.
    """

    dark: float
    flat: np.ndarray
    stray: np.ndarray
    trim: Trim
    background: float
    dark_source: str
    contrast: float = float("nan")


def estimate_dark(tiles: np.ndarray, *, percentile: float = 0.5, smooth: float = 2.0) -> float:
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
    arr = np.asarray(tiles, dtype=np.float32)
    if arr.ndim < 2:
        raise ValueError(f"tiles must have at least 2 dimensions, got shape {arr.shape}")
    flat = arr.reshape(-1, *arr.shape[-2:])
    return float(np.percentile(np.stack([ndi.gaussian_filter(t, smooth) for t in flat]), percentile))


def estimate_tile_model(tiles: np.ndarray, *, dark: float | None = None, flat: np.ndarray | None = None, block: int | None = None,
                        edge_px: int | None = None, degree: int = 2, stray_floor: float = 0.5,
                        trim_threshold: float = 1.0, max_trim_px: int | None = None,
                        bead_factor: float = 3.0) -> TileModel:
    """Dark offset, flat field and stray light of one channel from its tiles.

    Parameters
    ----------
    tiles : ndarray (T, H, W)
        Raw tiles of one channel (any slices); a few dozen suffice.
    dark : float, optional
        Known dark offset; estimated when None.
    flat : ndarray (H, W), optional
        Known flat field (e.g. another channel's, the optics being shared);
        the dark then comes from a straight-line fit of the dim class.
    block : int, optional
        Block edge in px for the statistics (default ``min(H, W) // 32``, >= 4).
    edge_px : int, optional
        Border width excluded from the smooth fits and searched for stray
        light (default 8 % of the tile, >= 2 blocks).
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

    Returns
    -------
    TileModel

    Raises
    ------
    ValueError
        If ``tiles`` is not 3-D or too small.
    """
    arr = np.asarray(tiles, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"tiles must be (T, H, W), got shape {arr.shape}")
    t, h, w = arr.shape
    b = block or max(4, min(h, w) // 32)
    e = edge_px if edge_px is not None else max(2 * b, int(0.08 * min(h, w)))
    if min(h, w) < 4 * b or min(h, w) <= 2 * e + 2 * b:
        raise ValueError(f"tiles of shape {(h, w)} too small for block {b} and edge {e}")
    hb, wb = h // b, w // b
    blocks = arr[:, : hb * b, : wb * b].reshape(t, hb, b, wb, b).mean(axis=(2, 4))
    cy, cx = (np.arange(hb) + 0.5) * b - 0.5, (np.arange(wb) + 0.5) * b - 0.5
    inner = np.outer((cy - b / 2 >= e) & (cy + b / 2 <= h - e), (cx - b / 2 >= e) & (cx + b / 2 <= w - e))
    vals = blocks[:, inner]
    # Two classes on a log scale: dim (agarose) and bright (tissue); very bright outliers (beads,
    # several times the typical tissue level) are left out of the bright class. A fixed upper cut
    # inside the tissue distribution would truncate it and bias its per-position median.
    from skimage.filters import threshold_otsu

    lo_thr = float(np.exp(threshold_otsu(np.log(np.maximum(vals, 1.0)))))
    dim = blocks < lo_thr
    bright_vals = vals[vals >= lo_thr]
    hi_cap = bead_factor * float(np.median(bright_vals)) if bright_vals.size else np.inf
    # Statistics from blocks whose 8 neighbours share their class: blocks astride a tissue edge
    # mix both levels and would bias the dim class up and the bright class down.
    core = np.ones((1, 3, 3), bool)
    dim_core = ndi.binary_erosion(dim, core, border_value=1)
    bright_core = ndi.binary_erosion(~dim & (blocks < hi_cap), core, border_value=1)
    low_b, n_b = _class_median(blocks, dim_core)
    high_b, n_t = _class_median(blocks, bright_core)
    basis = _poly_basis(cy, cx, (h, w), degree)
    ok_t, ok_b = inner & (n_t >= 2), inner & (n_b >= 2)
    source = "given" if dark is not None else "low-percentile"
    contrast = float("nan")
    if ok_t.any() and ok_b.any():
        contrast = float(np.median(high_b[ok_t]) / max(np.median(low_b[ok_b]), 1e-6))
    if flat is not None:
        flat = np.asarray(flat, np.float64)
        if flat.shape != (h, w):
            raise ValueError(f"flat of shape {flat.shape} does not match the tiles' {(h, w)}")
        flat = flat / flat.mean()
        if dark is None:
            dark = float(np.percentile(blocks, 0.5))
            fb = _eval_at(flat, cy, cx, b)
            if ok_b.sum() >= 3 and np.ptp(fb[ok_b]) > 0:
                # dim class: B = dark + A f with the flat known, a straight-line fit
                x, y, wt = fb[ok_b], low_b[ok_b], np.sqrt(n_b[ok_b])
                design = np.stack([np.ones_like(x), x], axis=1) * wt[:, None]
                (dark_fit, level), *_ = np.linalg.lstsq(design, y * wt, rcond=None)
                if level > 0:
                    dark, source = float(dark_fit), "flat + dim-class fit"
    else:
        dark, source, flat = _dark_and_flat(high_b, low_b, ok_t, ok_b, n_t, n_b, basis, blocks, dark, source,
                                            cy, cx, (h, w), degree)
    background = float(np.median((low_b[ok_b] - dark) / _eval_at(flat, cy, cx, b)[ok_b])) if ok_b.any() else 0.0
    stray = _stray(arr, dim, b, dark, flat, background, e, stray_floor)
    cap = e // 2 if max_trim_px is None else int(max_trim_px)
    limit = max(trim_threshold * background, stray_floor)
    trim = Trim(**{s: min(cap, _run(_side_profile(stray, s) > limit)) for s in _SIDES})
    return TileModel(dark, flat.astype(np.float32), stray.astype(np.float32), trim, background, source, contrast)


def confidence_map(shape: tuple[int, int], *, trim: Trim | None = None, feather: float = 0.0,
                   flat: np.ndarray | None = None, min_flat: float = 0.3) -> np.ndarray:
    """Per-pixel weight of a tile in fusion and matching.

    0 on trimmed borders (and where ``flat < min_flat``: too vignetted to
    trust); 1 elsewhere, or, with ``feather > 0``, a linear ramp from 0 at
    the kept border to 1 at ``feather`` px inside it, which blends seams.

    Returns
    -------
    ndarray (H, W) float32 in [0, 1]
    """
    h, w = shape
    trim = trim or Trim()
    sy, sx = trim.valid((h, w))
    conf = np.zeros((h, w), np.float32)
    if feather > 0:
        yy = np.arange(h, dtype=np.float32)
        xx = np.arange(w, dtype=np.float32)
        ry = np.clip(np.minimum(yy - sy.start + 1, sy.stop - yy) / feather, 0, 1)
        rx = np.clip(np.minimum(xx - sx.start + 1, sx.stop - xx) / feather, 0, 1)
        conf[sy, sx] = (ry[:, None] * rx[None, :])[sy, sx]
    else:
        conf[sy, sx] = 1.0
    if flat is not None:
        conf[np.asarray(flat) < min_flat] = 0.0
    return conf


def apply_flat(tile: np.ndarray, flat: np.ndarray, *, dark: float | np.ndarray = 0.0,
               stray: np.ndarray | None = None) -> np.ndarray:
    """``(tile - dark - stray) / flat`` as float32 (works on (..., H, W) stacks)."""
    out = np.asarray(tile, np.float32) - np.asarray(dark, np.float32)
    if stray is not None:
        out = out - np.asarray(stray, np.float32)
    return (out / np.asarray(flat, np.float32)).astype(np.float32, copy=False)


def overlap_mismatch(reference_image: np.ndarray, moving_image: np.ndarray, *, weights: np.ndarray | None = None) -> float:
    """Relative intensity mismatch of two co-registered overlap regions.

    ``Σ w |a - b| / Σ w (|a| + |b|) * 2``: 0 for identical regions; used to
    check that flat-field correction makes neighbouring tiles agree.
    """
    a = np.asarray(reference_image, np.float64)
    b = np.asarray(moving_image, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    w = np.ones_like(a) if weights is None else np.asarray(weights, np.float64)
    den = np.sum(w * (np.abs(a) + np.abs(b)))
    return float(2.0 * np.sum(w * np.abs(a - b)) / den) if den > 0 else 0.0


def _dark_and_flat(high_b, low_b, ok_t, ok_b, n_t, n_b, basis, blocks, dark, source, cy, cx, shape, degree):
    """Two-level separation of dark and flat (see :func:`estimate_tile_model`, steps 2-3)."""
    h, w = shape
    if dark is None:
        d0 = float(np.percentile(blocks, 0.5))
        dark = d0
        if ok_t.sum() >= 3 * basis.shape[-1] and ok_b.sum() >= 3 * basis.shape[-1]:
            fit_t = _fit(basis, high_b, ok_t, n_t)
            # B = alpha + beta * T_hat  with  beta = A / S  and  alpha = dark * (1 - beta)
            x, y, wt = fit_t[ok_b], low_b[ok_b], np.sqrt(n_b[ok_b])
            design = np.stack([np.ones_like(x), x], axis=1) * wt[:, None]
            (alpha, beta), *_ = np.linalg.lstsq(design, y * wt, rcond=None)
            if 0.0 < beta < 0.9 and np.ptp(x) > 0:
                dark = float(alpha / (1.0 - beta))
                source = "two-level fit"
    dark = float(dark)
    # Flat: both classes, dark removed, each normalised to its own median, one polynomial.
    samples, weights = [], []
    for img, ok, n in ((high_b, ok_t, n_t), (low_b, ok_b, n_b)):
        if ok.sum() >= basis.shape[-1]:
            sig = img - dark
            level = float(np.median(sig[ok]))
            if level > 0:
                samples.append(np.where(ok, sig / level, np.nan))
                weights.append(np.where(ok, n * level, 0.0))
    if samples:
        num = sum(np.nan_to_num(s) * wgt for s, wgt in zip(samples, weights))
        den = sum(weights)
        rel = np.where(den > 0, num / np.maximum(den, 1e-12), np.nan)
        coef = _fit_coef(basis, rel, den > 0, den)
        gy = np.arange(h, dtype=np.float64)
        gx = np.arange(w, dtype=np.float64)
        flat = _eval_poly(coef, gy, gx, (h, w), degree)
    else:
        flat = np.ones((h, w))
    flat = np.maximum(flat / flat.mean(), 0.05)
    return float(dark), source, flat


def _class_median(blocks: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sel = np.where(mask, blocks, np.nan)
    n = np.sum(np.isfinite(sel), axis=0)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(sel, axis=0)
    return med, n.astype(float)


def _terms(degree: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]


def _poly_basis(yy: np.ndarray, xx: np.ndarray, shape: tuple[int, int], degree: int) -> np.ndarray:
    h, w = shape
    v = (yy - (h - 1) / 2) / (h / 2)
    u = (xx - (w - 1) / 2) / (w / 2)
    return np.stack([np.outer(v**j, u**i) for i, j in _terms(degree)], axis=-1)


def _fit_coef(basis: np.ndarray, img: np.ndarray, ok: np.ndarray, n: np.ndarray) -> np.ndarray:
    wt = np.sqrt(n[ok])
    coef, *_ = np.linalg.lstsq(basis[ok] * wt[:, None], img[ok] * wt, rcond=None)
    return coef


def _fit(basis: np.ndarray, img: np.ndarray, ok: np.ndarray, n: np.ndarray) -> np.ndarray:
    return basis @ _fit_coef(basis, img, ok, n)


def _eval_poly(coef: np.ndarray, yy: np.ndarray, xx: np.ndarray, shape: tuple[int, int], degree: int) -> np.ndarray:
    h, w = shape
    v = (yy - (h - 1) / 2) / (h / 2)
    u = (xx - (w - 1) / 2) / (w / 2)
    out = np.zeros((len(yy), len(xx)))
    for c, (i, j) in zip(coef, _terms(degree)):
        out += c * np.outer(v**j, u**i)
    return out


def _eval_at(flat: np.ndarray, cy: np.ndarray, cx: np.ndarray, b: int) -> np.ndarray:
    iy = np.clip(np.rint(cy).astype(int), 0, flat.shape[0] - 1)
    ix = np.clip(np.rint(cx).astype(int), 0, flat.shape[1] - 1)
    return flat[np.ix_(iy, ix)]


def _stray(arr: np.ndarray, dim: np.ndarray, b: int, dark: float, flat: np.ndarray, background: float, e: int,
           floor: float) -> np.ndarray:
    """Additive excess over ``dark + background * flat`` next to each border, from dim bands."""
    t, h, w = arr.shape
    hb, wb = dim.shape[1:]
    k = int(np.ceil(e / b))  # first block row/column inside the fitted region
    out = np.zeros((h, w))
    if background <= 0:
        return out
    model = dark + background * flat
    for side in _SIDES:
        horizontal = side in ("left", "right")
        n_band = hb if horizontal else wb
        idx = k if side in ("left", "top") else (wb if horizontal else hb) - 1 - k
        # A band (block row for left/right) is usable in tile i when its first inside block is dim
        # and so is the block after it: the scene there is agarose, so is (very likely) the border.
        # Every block of the band from the second one off the border (the first may be raised by
        # the stray light itself) to one past ``idx`` must be dim: tissue reaching the border would
        # otherwise pass for stray light.
        span = slice(1, idx + 2) if side in ("left", "top") else slice(idx - 1, (wb if horizontal else hb) - 1)
        ok = dim[:, :, span].all(axis=2) if horizontal else dim[:, span, :].all(axis=1)
        profiles = []
        for i, j in zip(*np.nonzero(ok)):
            if horizontal:
                seg = arr[i, j * b:(j + 1) * b, :] - model[j * b:(j + 1) * b, :]
                profiles.append(seg.mean(axis=0))
            else:
                seg = arr[i, :, j * b:(j + 1) * b] - model[:, j * b:(j + 1) * b]
                profiles.append(seg.mean(axis=1))
        if len(profiles) < 3 or n_band == 0:
            continue
        prof = np.median(np.stack(profiles), axis=0)
        n = prof.size
        near = prof[:e] if side in ("left", "top") else prof[::-1][:e]
        near = near - np.median(prof[e:2 * e] if side in ("left", "top") else prof[::-1][e:2 * e])
        excess = np.where(near > floor, near, 0.0)
        excess[_run(excess > 0):] = 0.0  # only the run touching the border
        full = np.zeros(n)
        if side in ("left", "top"):
            full[:e] = excess
        else:
            full[n - e:] = excess[::-1]
        out += full[None, :] if horizontal else full[:, None]
    return out


def _side_profile(stray: np.ndarray, side: str) -> np.ndarray:
    if side == "left":
        return stray.mean(axis=0)
    if side == "right":
        return stray.mean(axis=0)[::-1]
    if side == "top":
        return stray.mean(axis=1)
    return stray.mean(axis=1)[::-1]


def _run(flags: np.ndarray) -> int:
    """Length of the run of flagged lines starting at the border (0 if none)."""
    idx = np.flatnonzero(~np.asarray(flags, bool))
    return int(idx[0]) if idx.size else int(len(flags))
