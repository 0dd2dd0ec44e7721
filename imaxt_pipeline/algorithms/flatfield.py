"""Tile calibration: dark offset, flat field, stray-light trimming, confidence.

A detector tile is modelled as ``raw = dark + flat * scene`` where ``flat`` is
a smooth vignetting profile with mean 1. Everything here estimates those
terms from the tiles themselves (no calibration frames needed) and applies
them; nothing reads or writes storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "Trim",
    "apply_flat",
    "confidence_map",
    "estimate_dark",
    "estimate_flat",
    "estimate_trim",
    "overlap_mismatch",
]


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


def estimate_dark(tiles: np.ndarray, *, percentile: float = 0.5, smooth: float = 2.0) -> float:
    """Dark offset from the faintest pixels of a tile stack.

    Parameters
    ----------
    tiles : ndarray (..., H, W)
        Raw tiles of one channel (any leading axes).
    percentile : float
        Low percentile taken of the lightly smoothed tiles; smoothing first
        suppresses read noise so the estimate sits on the offset rather than
        below it.
    smooth : float
        Gaussian sigma in px applied per tile before taking the percentile.

    Returns
    -------
    float
        Estimated additive offset in counts.

    Notes
    -----
    Empty agarose between tissue and beads is nearly dark, so its level is a
    good (slightly high) estimate of the offset. Where a dark frame exists,
    use it instead.
    """
    arr = np.asarray(tiles, dtype=np.float32)
    if arr.ndim < 2:
        raise ValueError(f"tiles must have at least 2 dimensions, got shape {arr.shape}")
    flat = arr.reshape(-1, *arr.shape[-2:])
    sm = np.stack([ndi.gaussian_filter(t, smooth) for t in flat])
    return float(np.percentile(sm, percentile))


def estimate_flat(tiles: np.ndarray, *, dark: float = 0.0, statistic: str = "median", trim: Trim | None = None,
                  sigma: float | None = None, degree: int = 4, edge_fraction: float = 0.1,
                  informative_fraction: float = 0.5,
                  min_value: float = 0.05) -> np.ndarray:
    """Flat field of one channel from the tiles themselves.

    Each tile is dark-subtracted and normalised by its own mean; the
    ``informative_fraction`` brightest tiles (empty agarose tiles only add
    noise) are combined pixel by pixel with a robust location statistic,
    smoothed, and normalised to mean 1 over the untrimmed region.

    Parameters
    ----------
    tiles : ndarray (T, H, W)
        Raw tiles of one channel, from one or many slices.
    dark : float
        Dark offset subtracted first.
    statistic : {"median", "trimmed_mean"}
        Per-pixel location statistic across tiles (trimmed mean drops the
        lowest and highest 20 %).
    trim : Trim, optional
        Border to exclude; its pixels are filled from the nearest kept pixel
        before smoothing so the border does not bias the flat.
    sigma : float, optional
        Gaussian smoothing in px; by default a 2-D polynomial of ``degree``
        is fitted instead (vignetting is smooth, and a polynomial neither
        follows residual scene texture nor flattens the corners).
    degree : int
        Total degree of the polynomial surface.
    edge_fraction : float
        Within this fraction of the tile from each border, a separable
        row/column profile of what the smooth surface misses (stray light
        that decays from an edge) is multiplied in; 0 disables it.
    informative_fraction : float
        Fraction of tiles (by mean signal) used; at least 1 tile.
    min_value : float
        Floor applied to the result, so division never explodes.

    Returns
    -------
    ndarray (H, W) float32
        Flat field with mean 1 over the kept region.

    Raises
    ------
    ValueError
        If ``tiles`` is not 3-D or ``statistic`` is unknown.
    """
    arr = np.asarray(tiles, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"tiles must be (T, H, W), got shape {arr.shape}")
    if statistic not in {"median", "trimmed_mean"}:
        raise ValueError(f"statistic must be 'median' or 'trimmed_mean', got {statistic!r}")
    t, h, w = arr.shape
    trim = trim or Trim()
    sy, sx = trim.valid((h, w))
    sub = arr - np.float32(dark)
    means = np.array([max(float(np.mean(x[sy, sx])), 1e-6) for x in sub])
    keep = max(1, int(round(informative_fraction * t)))
    order = np.argsort(means)[::-1][:keep]
    norm = sub[order] / means[order, None, None]
    if statistic == "median":
        loc = np.median(norm, axis=0)
    else:
        lo, hi = int(0.2 * len(order)), len(order) - int(0.2 * len(order))
        loc = np.mean(np.sort(norm, axis=0)[lo:max(hi, lo + 1)], axis=0)
    loc = _fill_border(loc, trim)
    if sigma is None:
        flat = _poly_fit(loc, (sy, sx), degree=degree)
    else:
        # Smooth at reduced resolution: the flat is low-frequency and this is ~50x faster.
        f = max(1, int(sigma // 4))
        small = loc[: h - h % f or h, : w - w % f or w]
        if f > 1:
            small = small.reshape(small.shape[0] // f, f, small.shape[1] // f, f).mean(axis=(1, 3))
        small = ndi.gaussian_filter(small, sigma / f, mode="nearest")
        flat = ndi.zoom(small, (h / small.shape[0], w / small.shape[1]), order=1, mode="nearest", grid_mode=True)
        flat = flat[:h, :w]
    if edge_fraction > 0:
        flat = flat * _edge_profiles(loc / np.maximum(flat, 1e-6), edge_fraction)
    flat = flat / np.mean(flat[sy, sx])
    return np.maximum(flat, min_value).astype(np.float32)


def estimate_trim(tiles: np.ndarray, *, dark: float = 0.0, threshold: float = 0.2, max_fraction: float = 0.1,
                  grow: float = 2.0) -> Trim:
    """Border rows/columns whose mean level departs from the tile interior.

    The mean tile (dark-subtracted, all tiles) is collapsed to one profile per
    side; a straight line is fitted to the lines between ``max_fraction`` and
    ``2 * max_fraction`` of the tile from that side and extrapolated to the
    border; border lines deviating from it by more than ``threshold``
    (relative) are trimmed. Vignetting is smooth and follows the line;
    stray light and scan turnarounds are sharp and do not.

    Parameters
    ----------
    tiles : ndarray (T, H, W)
        Raw tiles of one channel.
    dark : float
        Dark offset.
    threshold : float
        Relative deviation that marks a line as affected.
    max_fraction : float
        Maximum fraction of the tile trimmed per side.
    grow : float
        The run of affected lines at a border is multiplied by this factor
        (stray light decays smoothly; its tail below ``threshold`` is still
        an intensity bias).

    Returns
    -------
    Trim
    """
    arr = np.asarray(tiles, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"tiles must be (T, H, W), got shape {arr.shape}")
    mean = np.median(arr, axis=0).astype(np.float64) - dark
    out = {}
    sides = {"top": mean.mean(axis=1), "bottom": mean.mean(axis=1)[::-1],
             "left": mean.mean(axis=0), "right": mean.mean(axis=0)[::-1]}
    for name, prof in sides.items():
        n = prof.size
        limit = max(1, int(max_fraction * n))
        ref = np.arange(limit, min(n, 2 * limit))
        if ref.size < 3:
            out[name] = 0
            continue
        coef = np.polyfit(ref.astype(float), prof[ref], 1)
        fit = np.polyval(coef, np.arange(limit, dtype=float))
        dev = np.abs(prof[:limit] / np.maximum(np.abs(fit), 1e-6) - 1.0) > threshold
        run = _edge_run(dev)
        out[name] = min(limit, int(np.ceil(run * grow))) if run else 0
    return Trim(**out)


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


def apply_flat(tile: np.ndarray, flat: np.ndarray, *, dark: float = 0.0) -> np.ndarray:
    """``(tile - dark) / flat`` as float32 (works on (..., H, W) stacks)."""
    return ((np.asarray(tile, np.float32) - np.asarray(dark, np.float32)) / np.asarray(flat, np.float32)).astype(np.float32)


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


def _poly_fit(image: np.ndarray, valid: tuple[slice, slice], *, degree: int, step: int = 4) -> np.ndarray:
    """Least-squares 2-D polynomial surface fitted on a subsampled grid of the kept region."""
    h, w = image.shape
    yy, xx = np.mgrid[valid[0], valid[1]]
    yy, xx = yy[::step, ::step].ravel(), xx[::step, ::step].ravel()
    vals = image[yy, xx].astype(np.float64)

    def basis(y, x):
        v, u = (y - (h - 1) / 2) / (h / 2), (x - (w - 1) / 2) / (w / 2)
        return np.stack([u**i * v**j for i in range(degree + 1) for j in range(degree + 1 - i)], axis=-1)

    coef, *_ = np.linalg.lstsq(basis(yy.astype(float), xx.astype(float)), vals, rcond=None)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    return (basis(gy, gx) @ coef).astype(np.float32)


def _edge_profiles(ratio: np.ndarray, fraction: float, *, min_dev: float = 0.02) -> np.ndarray:
    """Separable multiplicative correction of sharp border effects (1 away from the borders)."""
    h, w = ratio.shape
    out = np.ones((h, w), np.float64)
    for axis, n in ((0, h), (1, w)):
        prof = np.median(ratio, axis=1 - axis)
        prof = prof / np.median(prof)
        lim = max(1, int(fraction * n))
        corr = np.ones(n)
        for idx in (np.arange(lim), np.arange(n - lim, n)):
            p = prof[idx]
            corr[idx] = np.where(np.abs(p - 1) > min_dev, p, 1.0)
        out *= corr[:, None] if axis == 0 else corr[None, :]
    return out


def _edge_run(flags: np.ndarray) -> int:
    """Length of the run of flagged lines starting at the border (0 if none)."""
    idx = np.flatnonzero(~np.asarray(flags, bool))
    return int(idx[0]) if idx.size else int(len(flags))


def _fill_border(image: np.ndarray, trim: Trim) -> np.ndarray:
    h, w = image.shape
    sy, sx = trim.valid((h, w))
    if (sy.start, sy.stop, sx.start, sx.stop) == (0, h, 0, w):
        return image
    yi = np.clip(np.arange(h), sy.start, sy.stop - 1)
    xi = np.clip(np.arange(w), sx.start, sx.stop - 1)
    return image[np.ix_(yi, xi)]
