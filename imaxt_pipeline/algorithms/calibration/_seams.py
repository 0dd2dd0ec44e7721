"""Mosaic seams: overlapping tiles resampled onto the region they share, and how much they disagree.

:func:`resampled_overlaps` resamples both tiles of each overlapping pair
onto the mosaic region both cover (through the inverse distortion, as
fusion places them); :func:`overlap_mismatch` scores a calibration where it
shows, the intensity steps at the seams, and :mod:`._flat_refine` fits the
flat correction to the same overlaps.

Nothing here reads or writes storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ..fusion import fuse_region
from ..optics import DistortionModel

__all__ = ["SeamOverlap", "masked_smooth", "overlap_mismatch", "overlapping_pairs", "resampled_overlaps"]

_Array = npt.NDArray[np.float64]


def overlap_mismatch(
    tiles: npt.ArrayLike,
    positions: npt.ArrayLike,
    *,
    distortion: DistortionModel | None = None,
    weights: npt.ArrayLike | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    sigma: float = 4.0,
    min_support: float = 0.5,
) -> float:
    """Relative low-frequency intensity mismatch of overlapping tiles: how visible the seams are.

    Each tile of an overlapping pair is resampled alone onto the mosaic
    region both cover (:func:`..fusion.fuse_region`: sub-pixel, through the
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
    for ov in resampled_overlaps(
        lambda i: arr[:, i], pos, (h, w), pairs, distortion=distortion, weights=weights, sigma=sigma
    ):
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
    image_a: npt.NDArray[np.float32]  # (C, h, w)
    image_b: npt.NDArray[np.float32]
    both: _Array  # 1 where both tiles have weight > 0
    support: _Array  # ``both`` smoothed by the Gaussian of ``sigma`` (``both`` itself for sigma 0)


def overlapping_pairs(positions: npt.ArrayLike, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Every pair of tiles of ``shape`` whose footprints at ``positions`` (T, 2) overlap."""
    pos, (h, w) = np.asarray(positions, np.float64), shape
    return [
        (i, j)
        for i in range(len(pos))
        for j in range(i + 1, len(pos))
        if abs(pos[i, 0] - pos[j, 0]) < h and abs(pos[i, 1] - pos[j, 1]) < w
    ]


def resampled_overlaps(
    get: Callable[[int], npt.ArrayLike],
    positions: npt.ArrayLike,
    shape: tuple[int, int],
    pairs: Sequence[tuple[int, int]] | None = None,
    *,
    distortion: DistortionModel | None = None,
    weights: npt.ArrayLike | None = None,
    sigma: float = 4.0,
) -> Iterator[SeamOverlap]:
    """Each pair's overlap, both tiles resampled by :func:`..fusion.fuse_region` (sub-pixel, undistorted).

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


def masked_smooth(img: npt.ArrayLike, mask: npt.ArrayLike, support: npt.ArrayLike, sigma: float) -> _Array:
    """Gaussian average of ``img`` over ``mask`` only (normalised convolution)."""
    arr = np.asarray(img)
    if sigma <= 0:
        return arr.astype(np.float64)
    out: _Array = ndi.gaussian_filter(arr * np.asarray(mask), sigma, mode="constant") / np.maximum(support, 1e-12)
    return out
