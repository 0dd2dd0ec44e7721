"""Tile borders and mosaic seams: stray light, border trim, tile confidence, seam mismatch.

Stray light is additive light that enters next to one or more tile borders
(scan turnarounds, reflections) and decays within a few pixels. It is
measured in empty agarose next to each border, against the model
``dark + background * flat`` of :mod:`.flatfield`; the lines where it
swamps the background are trimmed and get confidence 0, so matching and
fusion ignore them. :func:`overlap_mismatch` measures what is left where
it shows: the intensity steps at the seams of the mosaic.

Nothing here reads or writes storage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..optics import DistortionModel
from ..fusion import fuse_region

__all__ = ["SIDES", "SeamOverlap", "Trim", "confidence_map", "estimate_stray", "masked_smooth", "overlap_mismatch",
           "overlapping_pairs", "resampled_overlaps", "trim_from_stray"]

SIDES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class Trim:
    """Rows/columns to ignore at each tile border (stray light, scan turnarounds)."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def valid(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """Slices of the kept region of a tile of ``shape``."""
        h, w = shape
        return slice(self.top, h - self.bottom), slice(self.left, w - self.right)


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


def estimate_stray(tiles: np.ndarray, dim: np.ndarray, block: int, dark: float, flat: np.ndarray, background: float,
                   edge_px: int, floor: float) -> np.ndarray:
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
    bands = {}  # block rows (for left/right) or block columns (top/bottom), minus the model: (T, bands, line)
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


def trim_from_stray(stray: np.ndarray, limit: float, cap: int) -> Trim:
    """Border lines, from each side inwards, whose mean stray light exceeds ``limit`` (at most ``cap``)."""
    return Trim(**{s: min(cap, _run(_side_profile(stray, s) > limit)) for s in SIDES})


def overlap_mismatch(tiles: np.ndarray, positions: np.ndarray, *, distortion: DistortionModel | None = None,
                     weights: np.ndarray | None = None, pairs: Sequence[tuple[int, int]] | None = None,
                     sigma: float = 4.0, min_support: float = 0.5) -> float:
    """Relative low-frequency intensity mismatch of overlapping tiles: how visible the seams are.

    Each tile of an overlapping pair is resampled alone onto the mosaic
    region both cover (:func:`.fusion.fuse_region`: sub-pixel, through the
    inverse distortion), both are smoothed by a Gaussian of ``sigma`` px
    over the pixels where both tiles have weight > 0 (flat-field and
    stray-light errors are smooth; shot noise and interpolation are not),
    and ``Σ |A - B| / Σ (|A| + |B|) / 2`` is pooled over pairs, channels and
    pixels: 0 where the seams agree, about the relative flat-field error
    across the overlap otherwise. To compare calibrations, score each with
    its own confidence map: the pixels it trims are not in its mosaic.

    Parameters
    ----------
    tiles : ndarray (T, H, W) or (C, T, H, W)
        Corrected tiles (at least the dark removed).
    positions : ndarray (T, 2)
        Top-left (y, x) of each undistorted tile in the mosaic frame.
    distortion : DistortionModel, optional
        Distortion of every tile.
    weights : ndarray (H, W), optional
        Tile confidence (0 = not in the mosaic, e.g. trimmed borders).
    pairs : sequence of (int, int), optional
        Tiles to compare; default every pair whose footprints overlap.
    sigma : float
        Smoothing in px (0: none).
    min_support : float
        Pixels are compared where at least this fraction of the smoothing
        kernel lies on pixels both tiles see.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        On mismatched shapes or when no pixel is seen by two tiles.
    """
    arr = np.asarray(tiles, np.float32)
    arr = arr[None] if arr.ndim == 3 else arr
    pos = np.asarray(positions, np.float64)
    if arr.ndim != 4 or pos.shape != (arr.shape[1], 2):
        raise ValueError(f"tiles (C, T, H, W) and positions (T, 2) do not match: {arr.shape}, {pos.shape}")
    c, _, h, w = arr.shape
    if weights is not None and np.shape(weights) != (h, w):
        raise ValueError(f"weights of shape {np.shape(weights)} do not match the tiles' {(h, w)}")
    num = den = 0.0
    for ov in resampled_overlaps(lambda i: arr[:, i], pos, (h, w), pairs, distortion=distortion, weights=weights,
                                 sigma=sigma):
        keep = (ov.both > 0) & (ov.support >= min_support)
        for ch in range(c):
            sa, sb = (masked_smooth(img[ch], ov.both, ov.support, sigma) for img in (ov.image_a, ov.image_b))
            num += float(np.abs(sa - sb)[keep].sum())
            den += float((np.abs(sa) + np.abs(sb))[keep].sum()) / 2
    if den <= 0:
        raise ValueError("no pixel is seen by two tiles: nothing to compare")
    return num / den


@dataclass(frozen=True)
class SeamOverlap:
    """Tiles ``a`` and ``b`` resampled alone onto the mosaic region ``(y0, y1, x0, x1)`` both cover."""

    a: int
    b: int
    region: tuple[int, int, int, int]
    image_a: np.ndarray  # (C, h, w)
    image_b: np.ndarray
    both: np.ndarray  # 1 where both tiles have weight > 0
    support: np.ndarray  # ``both`` smoothed by the Gaussian of ``sigma`` (``both`` itself for sigma 0)


def overlapping_pairs(positions: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Every pair of tiles of ``shape`` whose footprints at ``positions`` (T, 2) overlap."""
    pos, (h, w) = np.asarray(positions, np.float64), shape
    return [(i, j) for i in range(len(pos)) for j in range(i + 1, len(pos))
            if abs(pos[i, 0] - pos[j, 0]) < h and abs(pos[i, 1] - pos[j, 1]) < w]


def resampled_overlaps(get: Callable[[int], np.ndarray], positions: np.ndarray, shape: tuple[int, int],
                       pairs: Sequence[tuple[int, int]] | None = None, *, distortion: DistortionModel | None = None,
                       weights: np.ndarray | None = None, sigma: float = 4.0) -> Iterator[SeamOverlap]:
    """Each pair's overlap, both tiles resampled by :func:`.fusion.fuse_region` (sub-pixel, undistorted).

    ``get(i)`` returns tile ``i`` as (C, H, W); ``pairs`` defaults to :func:`overlapping_pairs`.
    """
    pos = np.asarray(positions, np.float64)
    h, w = shape
    for a, b in overlapping_pairs(pos, shape) if pairs is None else pairs:
        lo, hi = np.maximum(pos[a], pos[b]), np.minimum(pos[a], pos[b]) + (h, w)
        region = (int(np.floor(lo[0])), int(np.ceil(hi[0])), int(np.floor(lo[1])), int(np.ceil(hi[1])))
        if region[1] <= region[0] or region[3] <= region[2]:
            continue
        fa, fb = (fuse_region(get, pos, region, indices=[k], weights=weights, distortion=distortion) for k in (a, b))
        both = ((fa.weight > 0) & (fb.weight > 0)).astype(np.float64)
        support = ndi.gaussian_filter(both, sigma, mode="constant") if sigma > 0 else both
        yield SeamOverlap(a, b, region, fa.image, fb.image, both, support)


def masked_smooth(img: np.ndarray, mask: np.ndarray, support: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian average of ``img`` over ``mask`` only (normalised convolution)."""
    if sigma <= 0:
        return img.astype(np.float64)
    return ndi.gaussian_filter(img * mask, sigma, mode="constant") / np.maximum(support, 1e-12)


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
