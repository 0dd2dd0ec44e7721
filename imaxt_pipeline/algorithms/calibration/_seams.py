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
from ..optics import Calibration, DistortionModel
from ..stitching import window_crop

__all__ = [
    "SEAM_SAMPLE_COLUMNS",
    "SeamOverlap",
    "masked_smooth",
    "overlap_mismatch",
    "overlapping_pairs",
    "resampled_overlaps",
    "seam_samples",
]

_Array = npt.NDArray[np.float64]

#: Columns of :func:`seam_samples`' rows: channel, detector (y, x) of the block in the reference and in the
#: moving tile, both block means of the corrected tiles, the flat at both (nearest pixel) and the dark they
#: were corrected with, and the pixels averaged.
SEAM_SAMPLE_COLUMNS = (
    "channel",
    "y_ref",
    "x_ref",
    "y_mov",
    "x_mov",
    "value_ref",
    "value_mov",
    "flat_ref",
    "flat_mov",
    "dark",
    "pixels",
)


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


def seam_samples(
    strip_a: npt.ArrayLike,
    strip_b: npt.ArrayLike,
    origin_a: tuple[int, int],
    origin_b: tuple[int, int],
    weights_a: npt.ArrayLike,
    weights_b: npt.ArrayLike,
    points_a: npt.ArrayLike,
    points_b: npt.ArrayLike,
    point_weights: npt.ArrayLike,
    *,
    block: int,
    calibration: Calibration | None = None,
) -> _Array:
    """Block means of both tiles of a matched pair over their overlap, where they see the same scene.

    The flat's correction is a low-degree surface, so coarse samples of the seam pin it as well as
    every pixel: the overlap (in ``a``'s pixels) is cut into ``block`` px squares, and each gives the
    mean of ``a`` over it and of ``b`` over the same square moved by the local shift ``s`` (a smooth
    fit to the pair's block correspondences: the shift varies along a distorted seam), bilinear in the
    shift's fraction. Sums come from integral images (no per-pixel resampling); samples either tile
    does not see whole (confidence 0 anywhere) are left out. The strips are corrected per pixel (stray
    light falls steeply at a tile's edge: its value at a block's centre is not its mean); the flat and
    dark they were corrected with are recorded, so that a later run can re-express stored samples
    under its own flat and dark (:func:`._flat_refine.refine_flat_from_samples`).

    Parameters
    ----------
    strip_a, strip_b : ndarray (C, h, w)
        A window of each tile, corrected by ``calibration`` (dark, stray light, flat).
    origin_a, origin_b : (int, int)
        Detector (y, x) of each window's first pixel.
    weights_a, weights_b : ndarray (h, w)
        Tile confidence over each window (0: not used).
    points_a, points_b, point_weights : ndarray (K, 2), (K, 2), (K,)
        The pair's correspondences (detector positions, ``p`` in ``a`` and ``p - s`` in ``b``), weights.
    block : int
        Edge of a sample square in px.
    calibration : Calibration, optional
        What the strips were corrected with (default: nothing, flat 1 and dark 0 recorded).

    Returns
    -------
    ndarray (N, 8) float64
        One row per sample and channel, columns :data:`SEAM_SAMPLE_COLUMNS`; none without points.
    """
    a, b = np.asarray(strip_a), np.asarray(strip_b)
    pa, pb = np.asarray(points_a, np.float64).reshape(-1, 2), np.asarray(points_b, np.float64).reshape(-1, 2)
    empty = np.zeros((0, len(SEAM_SAMPLE_COLUMNS)))
    if len(pa) == 0 or block < 1:
        return empty
    oa, ob = np.asarray(origin_a, np.float64), np.asarray(origin_b, np.float64)
    shift_of = _shift_field(pa - oa, pa - pb, np.asarray(point_weights, np.float64).reshape(-1))
    # The samples tile the reference pixels whose partner falls inside b's window (mean shift, inset 1 px)
    # and that both tiles see: ``block`` px along the seam, across it a quarter of the seen width at most
    # (the slope across the band is what pins the flat's even terms).
    mean = np.average(pa - pb, axis=0) - oa + ob
    (h, w), (hb, wb) = a.shape[1:], b.shape[1:]
    y0, x0 = int(np.ceil(max(0.0, mean[0] + 1))), int(np.ceil(max(0.0, mean[1] + 1)))
    y1, x1 = int(min(h, hb + mean[0] - 1)), int(min(w, wb + mean[1] - 1))
    if y1 - y0 < 2 or x1 - x0 < 2:
        return empty
    d = np.rint(mean).astype(int)
    seen = (np.asarray(weights_a)[y0:y1, x0:x1] > 0) & (
        window_crop(np.asarray(weights_b), y0 - d[0], y1 - d[0], x0 - d[1], x1 - d[1]) > 0
    )
    across = 1 if y1 - y0 > x1 - x0 else 0  # a left-right pair's seam runs along y: across is x
    lines = np.flatnonzero(seen.mean(axis=1 - across) >= 0.5)
    if lines.size < 2:
        return empty
    lo, hi = (y0, x0)[across] + int(lines[0]), (y0, x0)[across] + int(lines[-1]) + 1
    size = [block, block]
    size[across] = int(max(2, min(block, (hi - lo) // 4)))
    bounds = [[y0, y1], [x0, x1]]
    bounds[across] = [lo, hi]
    (sy_, sx_) = size
    ny, nx = (bounds[0][1] - bounds[0][0]) // sy_, (bounds[1][1] - bounds[1][0]) // sx_
    if ny < 1 or nx < 1:
        return empty
    grid = np.mgrid[bounds[0][0] : bounds[0][0] + ny * sy_ : sy_, bounds[1][0] : bounds[1][0] + nx * sx_ : sx_]
    ty, tx = (v.ravel().astype(np.float64) for v in grid)
    centre = ((sy_ - 1) / 2, (sx_ - 1) / 2)
    sy, sx = shift_of(ty + centre[0], tx + centre[1])  # one shift per sample: it varies by << 1 px across one
    by, bx = ty - sy + oa[0] - ob[0], tx - sx + oa[1] - ob[1]  # top-left of each sample in b's window
    iy, ix = np.floor(by).astype(np.int_), np.floor(bx).astype(np.int_)
    inside = (iy >= 0) & (ix >= 0) & (iy + sy_ + 1 <= hb) & (ix + sx_ + 1 <= wb)
    iy, ix = np.where(inside, iy, 0), np.where(inside, ix, 0)
    fy, fx = by - iy, bx - ix
    corners = [((1 - fy) * (1 - fx), 0, 0), (fy * (1 - fx), 1, 0), ((1 - fy) * fx, 0, 1), (fy * fx, 1, 1)]
    # a's samples tile a regular grid (block sums by a reshape); b's move with the shift (summed-area
    # tables, of the window the samples reach only: most of a strip is margin)
    grid_a = (slice(bounds[0][0], bounds[0][0] + ny * sy_), slice(bounds[1][0], bounds[1][0] + nx * sx_))

    def sums_a(img: npt.ArrayLike) -> _Array:
        arr = np.asarray(np.asarray(img)[grid_a], np.float64)
        out: _Array = arr.reshape(ny, sy_, nx, sx_).sum(axis=(1, 3)).ravel()
        return out

    if not inside.any():
        return empty
    reach = tuple(slice(int(v[inside].min()), int(v[inside].max()) + n + 1) for v, n in ((iy, sy_), (ix, sx_)))
    iy, ix = (np.where(inside, v, r.start) - r.start for v, r in ((iy, reach[0]), (ix, reach[1])))

    def sums_b(img: npt.ArrayLike, weights: Sequence[_Array | float]) -> _Array:
        sat = _integral(np.asarray(img)[reach])
        out: _Array = sum(
            (wt * _box_sums(sat, iy + dy, ix + dx, size) for wt, (_, dy, dx) in zip(weights, corners, strict=True)),
            np.zeros(len(iy)),
        )
        return out

    bad_a = sums_a(np.asarray(weights_a) <= 0)
    bad_b = sums_b(np.asarray(weights_b) <= 0, [1.0] * 4)
    keep = inside & (bad_a == 0) & (bad_b == 0)
    if not keep.any():
        return empty
    area = float(sy_ * sx_)
    cy, cx = ty + centre[0] + oa[0], tx + centre[1] + oa[1]
    cols = [cy[keep], cx[keep], (cy - sy)[keep], (cx - sx)[keep]]
    rows = []
    for ch in range(a.shape[0]):
        ma = sums_a(a[ch]) / area
        mb = sums_b(b[ch], [wt for wt, _, _ in corners]) / area
        n = int(keep.sum())
        flats = [np.ones(n), np.ones(n)]
        if calibration is not None and calibration.flat is not None:
            flat = np.asarray(calibration.flat)[ch]
            for k, (y, x) in enumerate(((cols[0], cols[1]), (cols[2], cols[3]))):
                iy_, ix_ = (
                    np.clip(np.rint(v).astype(np.int_), 0, m - 1) for v, m in ((y, flat.shape[0]), (x, flat.shape[1]))
                )
                flats[k] = flat[iy_, ix_].astype(np.float64)
        dark = 0.0 if calibration is None else float(np.asarray(calibration.dark)[ch])
        stacked = [np.full(n, float(ch)), *cols, ma[keep], mb[keep], *flats, np.full(n, dark), np.full(n, area)]
        rows.append(np.stack(stacked, axis=1))
    return np.concatenate(rows)


def _integral(img: npt.ArrayLike) -> _Array:
    """Summed-area table with a leading row and column of zeros: ``sat[y, x] = img[:y, :x].sum()``."""
    arr = np.asarray(img, np.float64)
    sat = np.zeros((arr.shape[0] + 1, arr.shape[1] + 1))
    np.cumsum(np.cumsum(arr, axis=0), axis=1, out=sat[1:, 1:])
    return sat


def _box_sums(sat: _Array, y: npt.NDArray[np.int_], x: npt.NDArray[np.int_], size: Sequence[int]) -> _Array:
    """Sums of the ``size`` (rows, cols) rectangles with top-left ``(y, x)`` from a summed-area table."""
    u, v = y + size[0], x + size[1]
    out: _Array = sat[u, v] - sat[y, v] - sat[u, x] + sat[y, x]
    return out


def _shift_field(at: _Array, shift: _Array, weights: _Array) -> Callable[[_Array, _Array], tuple[_Array, _Array]]:
    """Smooth ``(y, x) -> shift`` through a pair's block shifts: quadratic, affine or constant as they allow.

    Distortion makes the shift vary along a seam by up to a few px; within one seam it is smooth.
    """
    wts = np.where(np.isfinite(weights) & (weights > 0), weights, 0.0)
    wts = wts if wts.sum() > 0 else np.ones(len(at))
    centre, spread = np.average(at, axis=0, weights=wts), np.ptp(at, axis=0)
    # Only axes the points span get terms (one row of blocks along a seam says nothing across it, and a
    # fit across would extrapolate noise); quadratic where there are twice the points the terms need.
    spanned = [k for k in (0, 1) if spread[k] >= 16.0]
    linear = [(k,) for k in spanned]
    quadratic = [(k, j) for i, k in enumerate(spanned) for j in spanned[i:]]
    terms: list[tuple[int, ...]] = [(), *linear]
    if len(at) >= 2 * (len(terms) + len(quadratic)):
        terms += quadratic
    while len(terms) > 1 and len(at) < 2 * len(terms):
        terms.pop()
    scale = np.maximum(spread, 1.0)

    def design(y: _Array, x: _Array) -> _Array:
        c = ((y - centre[0]) / scale[0], (x - centre[1]) / scale[1])
        return np.stack([np.prod([c[k] for k in t], axis=0) if t else np.ones_like(y) for t in terms], axis=-1)

    d = design(at[:, 0], at[:, 1])
    sw = np.sqrt(wts)[:, None]
    coef = np.linalg.lstsq(d * sw, shift * sw, rcond=None)[0]

    def field(y: _Array, x: _Array) -> tuple[_Array, _Array]:
        out = design(y, x) @ coef
        return out[..., 0], out[..., 1]

    return field
