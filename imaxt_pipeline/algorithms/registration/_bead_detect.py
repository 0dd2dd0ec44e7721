"""Bead candidates found by size and shape in physical units, on a block-averaged image.

A bead is a fluorescent sphere of known diameter ``D`` embedded in the
agarose; a section cuts it at some height ``dz`` from its centre into a
uniformly bright disc of radius ``sqrt(R**2 - dz**2)`` (``R = D / 2``), from 0
to ``R``. :class:`BeadSpec` turns the bead size (µm) and the image's pixel size
into the radii searched, so that one detector serves 0.5 µm and 2 µm pixels:
it keeps cuts of radius ``min_cut_fraction * R`` to ``(1 + size_tolerance) * R``
(the smallest 5 % of cuts, ``|dz| > 0.95 R`` at the default 0.3, hold too few
rim pixels to centre well and are not searched).

:func:`detect_beads` block-averages the image so that the smallest cut
searched is still ~3 px in radius (beads 160 px wide at 0.56 µm/px are
found on an 8x coarser image), thresholds it, splits touching discs and
rejects, before any fit: regions outside the radius range, not convex or not
round (tissue fragments, merged nuclei), not standing out from their own
surroundings (a bright patch on bright tissue) and not flat inside (tissue
texture). A region cut by the image edge or missing data is judged by the
circle through the rim it shows (its centre must be in the image). The
survivors are returned in full-resolution coordinates; their labels stay at
the detection resolution (``label_factor``): every step after the block
average runs on the coarse image, and the fit reads the labels it needs
around each candidate only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from skimage.measure import regionprops

from ._bead_threshold import background_stats, fill_holes, pixel_noise, smoothing_gain, threshold_levels
from ._beads import BeadCandidates, split_beads

__all__ = ["BeadSpec", "block_mean", "detect_beads"]

_COARSE_MIN_RADIUS = 3.0  # coarse px in the radius of the smallest cut searched


@dataclass(frozen=True)
class BeadSpec:
    """The beads searched for, in µm, and the pixel size of the image.

    Parameters
    ----------
    pixel_size_um : float
        Image pixel size.
    diameter_um : float, optional
        Nominal bead diameter.
    size_tolerance : float, optional
        Relative spread of bead diameters: cuts up to ``(1 + size_tolerance) * R``.
    min_cut_fraction : float, optional
        Smallest cut searched as a fraction of ``R``.

    Raises
    ------
    ValueError
        If a size is not positive or ``min_cut_fraction`` is not in (0, 1).

    Examples
    --------
    >>> spec = BeadSpec(pixel_size_um=0.5, diameter_um=90.0)
    >>> round(spec.radius_px), round(spec.min_radius_px, 1), spec.factor
    (90, 27.0, 9)
    """

    pixel_size_um: float
    diameter_um: float = 90.0
    size_tolerance: float = 0.15
    min_cut_fraction: float = 0.3

    def __post_init__(self) -> None:
        for name in ("pixel_size_um", "diameter_um"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.size_tolerance >= 0:
            raise ValueError(f"size_tolerance must be >= 0, got {self.size_tolerance}")
        if not 0 < self.min_cut_fraction < 1:
            raise ValueError(f"min_cut_fraction must be in (0, 1), got {self.min_cut_fraction}")

    @property
    def radius_px(self) -> float:
        """Nominal bead (sphere) radius in px."""
        return 0.5 * self.diameter_um / self.pixel_size_um

    @property
    def min_radius_px(self) -> float:
        """Smallest cut radius searched, px."""
        return self.min_cut_fraction * self.radius_px

    @property
    def max_radius_px(self) -> float:
        """Largest cut radius accepted, px (the largest bead's equator plus 2 px of optical blur)."""
        return (1.0 + self.size_tolerance) * self.radius_px + 2.0

    @property
    def factor(self) -> int:
        """Block-averaging factor of the detection image."""
        return max(1, int(self.min_radius_px // _COARSE_MIN_RADIUS))


def block_mean(image: ArrayLike, factor: int) -> NDArray[np.float32]:
    """Average of ``factor`` x ``factor`` blocks (the incomplete last row/column of blocks is dropped).

    Parameters
    ----------
    image : ndarray (H, W)
    factor : int

    Returns
    -------
    ndarray (H // factor, W // factor) of float32
    """
    img = np.asarray(image, dtype=np.float32)
    if factor <= 1:
        return img
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    # rows of blocks first (contiguous adds of whole rows), then the columns of a 1/factor-size array:
    # ~3x faster than a mean over the two strided axes at once
    rows = img[:h, :w].reshape(h // factor, factor, w).sum(axis=1, dtype=np.float32)
    out: NDArray[np.float32] = rows.reshape(h // factor, w // factor, factor).sum(axis=2, dtype=np.float32)
    out /= np.float32(factor * factor)
    return out


def _block_all(mask: NDArray[np.bool_], factor: int) -> NDArray[np.bool_]:
    """Whether every pixel of each ``factor`` x ``factor`` block is set (``block_mean(mask) == 1``)."""
    h, w = (mask.shape[0] // factor) * factor, (mask.shape[1] // factor) * factor
    if mask.all():  # a block inside the tiles: nothing missing (the common case, a fraction of the cost)
        return np.ones((h // max(factor, 1), w // max(factor, 1)), bool)
    if factor <= 1:
        return mask
    # any missing pixel over each block's rows (contiguous), then over its columns: ~3x faster than .all((1, 3))
    missing = np.logical_or.reduce(~mask[:h, :w].reshape(h // factor, factor, w), axis=1)
    out: NDArray[np.bool_] = ~np.logical_or.reduce(missing.reshape(h // factor, w // factor, factor), axis=2)
    return out


def detect_beads(
    image: ArrayLike,
    spec: BeadSpec,
    *,
    threshold: float | None = None,
    nsigma: float = 5.0,
    rel: float = 0.5,
    min_solidity: float = 0.85,
    min_roundness: float = 0.7,
    min_contrast: float = 0.7,
    max_texture: float = 0.05,
) -> BeadCandidates:
    """Bead candidates of one bead-channel image (see the module docstring).

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image at ``spec.pixel_size_um``; exact zeros are missing data
        (outside the tiles).
    spec : BeadSpec
        Bead size and pixel size.
    threshold : float, optional
        Absolute threshold shared by the blocks of a plane (see
        :func:`~imaxt_pipeline.algorithms.registration.bead_threshold`); default
        computed from ``image`` with ``nsigma`` and ``rel``.
    nsigma, rel : float, optional
        Threshold rules, and ``nsigma`` is also the least contrast over the
        surroundings in units of the (block-averaged) background noise.
    min_solidity, min_roundness : float, optional
        Least area / convex-hull area and minor / major axis.
    min_contrast : float, optional
        Least (inside - surroundings) / (inside - background): a bead stands on
        agarose, a bright tissue patch on bright tissue.
    max_texture : float, optional
        Largest spread of the inside (robust sigma over inside - background, plus 3 noise
        sigmas) after the detection smoothing: beads are flat, tissue is textured.

    Returns
    -------
    BeadCandidates
        Centres and radii in full-resolution px; labels at the detection resolution
        (``label_factor = spec.factor``).

    Raises
    ------
    ValueError
        If ``image`` is not 2-D.

    Examples
    --------
    >>> yy, xx = np.indices((200, 200))
    >>> img = 10.0 + 100.0 * (np.hypot(yy - 90, xx - 110) < 40)
    >>> cands = detect_beads(img, BeadSpec(pixel_size_um=1.0, diameter_um=90.0))
    >>> len(cands), np.round(cands.centres[0]).tolist(), abs(float(cands.radii[0]) - 40) <= 2  # coarse radius
    (1, [90.0, 110.0], True)
    >>> cands.label_factor, cands.labels.shape  # the fit reads full-resolution labels around each candidate
    (4, (50, 50))
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    f = spec.factor
    coarse = block_mean(img, f)
    valid = _block_all(img != 0, f)  # a block with any missing pixel is missing
    empty = BeadCandidates(np.zeros(coarse.shape, np.int32), np.zeros((0, 2)), np.zeros(0), label_factor=f)
    if coarse.size == 0 or not valid.any():
        return empty
    known = np.where(valid, coarse, np.float32(0.0))
    smooth = ndi.gaussian_filter(known, 1.0)
    bg, _spread = background_stats(smooth, valid=valid)
    noise = pixel_noise(coarse, valid=valid) * smoothing_gain(1.0)
    if threshold is None:
        threshold = threshold_levels(known, sigma=1.0, nsigma=nsigma, smooth=smooth).threshold(rel)
    mask = fill_holes((smooth > threshold) & valid)
    # the threshold may sit above the half-height of a bead's blurred rim (a plateau raised by tissue brighter
    # than the beads): the detected radius can be a couple of px short, the fit's radius decides
    r_lo, r_hi = 0.75 * spec.min_radius_px / f - 0.5, spec.max_radius_px / f
    labels = split_beads(mask, min_radius=max(0.8 * r_lo, 2.0))
    # regions cut by the image edge or missing data: their circle comes from the rim they show
    edge = ~ndi.binary_erosion(valid, iterations=1, border_value=0)
    cut = set(np.unique(labels[edge]).tolist()) - {0}
    area = np.bincount(labels.ravel())
    keep_ids = [i for i in range(1, len(area)) if np.sqrt(area[i] / np.pi) <= r_hi and area[i] >= 0.4 * np.pi * r_lo**2]
    kept: list[tuple[int, float, float, float]] = []
    for region in regionprops(np.where(np.isin(labels, keep_ids), labels, 0)):  # type: ignore[no-untyped-call]
        if region.solidity < min_solidity:
            continue
        if region.label in cut:
            circle = _visible_circle(region, edge, r_lo, r_hi)
            if circle is None:
                continue
            cy, cx, r = circle
        else:
            r = float(np.sqrt(region.area / np.pi))
            major = max(float(region.axis_major_length), 1e-9)
            if not r_lo <= r or float(region.axis_minor_length) / major < min_roundness:
                continue
            cy, cx = region.centroid
        rules = (bg, noise, nsigma, min_contrast, max_texture)
        if not _stands_out(smooth, labels, valid, region.label, cy, cx, r, *rules):
            continue
        kept.append((int(region.label), float(cy), float(cx), r))
    if not kept:
        return empty
    lut = np.zeros(len(area), np.int32)
    for n, (lab, *_rest) in enumerate(kept, start=1):
        lut[lab] = n
    arr = np.asarray([k[1:] for k in kept], dtype=np.float64)
    centres = (arr[:, :2] + 0.5) * f - 0.5  # coarse pixel centres to full-resolution coordinates
    return BeadCandidates(lut[labels], centres, arr[:, 2] * f, label_factor=f)


def _visible_circle(
    region: Any, edge: NDArray[np.bool_], r_lo: float, r_hi: float
) -> tuple[float, float, float] | None:
    """Circle through the rim of a region cut by the image edge (least squares), if it is a disc's.

    The region must show at least 40 % of the disc, its centre must lie in the image and its rim must
    be circular to a coarse px.
    """
    y0, x0 = region.bbox[0], region.bbox[1]
    own = np.pad(region.image, 1)
    rim = own & ~ndi.binary_erosion(own)
    rim[1:-1, 1:-1] &= ~edge[region.slice]  # rim pixels on the image edge are no part of the circle
    ry, rx = np.nonzero(rim)
    if ry.size < 8:
        return None
    ry, rx = ry + (y0 - 1.0), rx + (x0 - 1.0)
    design = np.column_stack([ry, rx, np.ones_like(ry)])
    sol, *_ = np.linalg.lstsq(design, ry**2 + rx**2, rcond=None)
    cy, cx = 0.5 * sol[0], 0.5 * sol[1]
    r2 = sol[2] + cy**2 + cx**2
    if not r2 > 0:
        return None
    r = float(np.sqrt(r2))
    resid = np.hypot(ry - cy, rx - cx) - r
    inside = 0 <= cy < edge.shape[0] and 0 <= cx < edge.shape[1] and not edge[int(cy), int(cx)]
    if not (r_lo <= r <= r_hi and inside and float(np.sqrt(np.mean(resid**2))) <= max(1.0, 0.1 * r)):
        return None
    if region.area < 0.4 * np.pi * r2:
        return None
    return float(cy), float(cx), r


def _stands_out(
    smooth: NDArray[np.float32],
    labels: NDArray[np.int32],
    valid: NDArray[np.bool_],
    label: int,
    cy: float,
    cx: float,
    r: float,
    bg: float,
    noise: float,
    nsigma: float,
    min_contrast: float,
    max_texture: float,
) -> bool:
    """A flat disc clearly brighter than the ring of pixels around it (coarse image)."""
    outer = 1.5 * r + 3.0
    y0, y1 = max(int(cy - outer), 0), min(int(cy + outer) + 2, smooth.shape[0])
    x0, x1 = max(int(cx - outer), 0), min(int(cx + outer) + 2, smooth.shape[1])
    yy, xx = np.ogrid[y0:y1, x0:x1]
    rho = np.hypot(yy - cy, xx - cx)
    lab, val, img = labels[y0:y1, x0:x1], valid[y0:y1, x0:x1], smooth[y0:y1, x0:x1]
    inside = img[(lab == label) & (rho <= max(0.7 * r - 1.0, 1.5))]  # clear of the smoothed rim
    ring = img[(lab == 0) & val & (rho >= r + 1.5) & (rho <= outer)]
    if inside.size < 3 or ring.size < 8:
        return False
    level = float(np.median(inside))
    step = level - float(np.percentile(ring, 30))  # a bead next to tissue still has agarose on one side
    height = max(level - bg, 1e-12)
    texture = 1.4826 * float(np.median(np.abs(inside - level)))
    return step >= nsigma * noise and step >= min_contrast * height and texture <= max_texture * height + 3.0 * noise
