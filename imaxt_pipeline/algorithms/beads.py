"""Classical bead detection: smoothing, threshold, distance-transform watershed.

Beads are bright, round and much larger than nuclei; the detector finds
bright connected regions, splits touching beads with a watershed on the
distance transform, and keeps round regions within the expected size range.
The same :func:`split_beads` turns a U-Net probability map into labels
(:mod:`imaxt_pipeline.algorithms.bead_unet`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import regionprops
from skimage.segmentation import watershed

__all__ = ["BeadCandidates", "background_stats", "bead_mask", "candidates_from_labels", "detect_beads",
           "pick_bead_channel", "split_beads"]


@dataclass(frozen=True)
class BeadCandidates:
    """Bead candidates of one image.

    Attributes
    ----------
    labels : ndarray (H, W) of int32
        Label image; candidate ``i`` has label ``i + 1``.
    centres : ndarray (N, 2)
        Centroid (y, x) of each candidate.
    radii : ndarray (N,)
        Equivalent-disc radius ``sqrt(area / pi)``.
    """

    labels: np.ndarray
    centres: np.ndarray
    radii: np.ndarray

    def __len__(self) -> int:
        return len(self.radii)


def background_stats(image: np.ndarray, *, valid: np.ndarray | None = None) -> tuple[float, float]:
    """Robust background level and noise (median, 1.4826 x MAD).

    Parameters
    ----------
    image : ndarray
        Image; pixels equal to 0 (outside any tile) are ignored unless
        ``valid`` is given.
    valid : ndarray of bool, optional
        Pixels to use.

    Returns
    -------
    (float, float)
        Background and its standard deviation.
    """
    img = np.asarray(image, dtype=np.float64)
    sel = (img != 0) if valid is None else np.asarray(valid, bool)
    vals = img[sel & np.isfinite(img)]
    if vals.size < 16:
        return 0.0, 1.0
    if vals.size > 200_000:
        vals = vals[:: vals.size // 200_000]
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med)))
    return med, max(1.4826 * mad, 1e-6)


def bead_mask(image: np.ndarray, *, sigma: float = 2.0, nsigma: float = 5.0) -> np.ndarray:
    """Pixels brighter than the background by ``nsigma`` after smoothing.

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image.
    sigma : float, optional
        Gaussian smoothing in px.
    nsigma : float, optional
        Threshold in units of the smoothed image's background noise.

    Returns
    -------
    ndarray of bool
        Foreground with holes filled.
    """
    img = np.asarray(image, dtype=np.float32)
    valid = img != 0
    smooth = ndi.gaussian_filter(img, sigma) if sigma > 0 else img
    bg, noise = background_stats(smooth, valid=valid)
    return ndi.binary_fill_holes((smooth > bg + nsigma * noise) & valid)


def split_beads(mask: np.ndarray, *, min_radius: float = 4.0) -> np.ndarray:
    """Split touching discs with a watershed on the distance transform.

    Parameters
    ----------
    mask : ndarray of bool (H, W)
        Foreground.
    min_radius : float, optional
        Smallest bead radius in px: markers are distance maxima at least
        this far apart and at least ``0.6 * min_radius`` deep.

    Returns
    -------
    ndarray of int32
        Label image, 0 = background.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndi.distance_transform_edt(mask)
    smooth = ndi.gaussian_filter(dist, 1.0)
    comp, _ = ndi.label(mask)
    peaks = peak_local_max(smooth, min_distance=max(int(min_radius), 1), threshold_abs=0.6 * min_radius,
                           labels=comp, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-smooth, markers, mask=mask).astype(np.int32)


def candidates_from_labels(labels: np.ndarray, *, min_radius: float = 4.0, max_radius: float = 80.0,
                           min_solidity: float = 0.85) -> BeadCandidates:
    """Keep round labelled regions within a radius range and relabel them.

    Parameters
    ----------
    labels : ndarray of int (H, W)
        Label image from :func:`split_beads`.
    min_radius, max_radius : float, optional
        Range of equivalent radii kept, in px.
    min_solidity : float, optional
        Minimum area / convex-hull area (discs: ~1; tissue fragments: less).

    Returns
    -------
    BeadCandidates
    """
    out = np.zeros(labels.shape, np.int32)
    centres, radii = [], []
    for region in regionprops(np.asarray(labels, np.int32)):
        r = np.sqrt(region.area / np.pi)
        if not (min_radius <= r <= max_radius) or region.solidity < min_solidity:
            continue
        centres.append(region.centroid)
        radii.append(r)
        out[tuple(region.coords.T)] = len(radii)
    return BeadCandidates(out, np.asarray(centres, float).reshape(-1, 2), np.asarray(radii, float))


def detect_beads(image: np.ndarray, *, sigma: float = 2.0, nsigma: float = 5.0, min_radius: float = 4.0,
                 max_radius: float = 80.0, min_solidity: float = 0.85) -> BeadCandidates:
    """Classical detector: :func:`bead_mask`, :func:`split_beads`, :func:`candidates_from_labels`.

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image (background need not be subtracted).
    sigma, nsigma : float, optional
        See :func:`bead_mask`.
    min_radius, max_radius, min_solidity : float, optional
        See :func:`candidates_from_labels`.

    Returns
    -------
    BeadCandidates

    Raises
    ------
    ValueError
        If ``image`` is not 2-D.

    Examples
    --------
    >>> yy, xx = np.indices((64, 64))
    >>> img = 10.0 + 100.0 * (np.hypot(yy - 30, xx - 33) < 10)
    >>> cands = detect_beads(img, nsigma=3)
    >>> len(cands), np.round(cands.centres[0]).tolist()
    (1, [30.0, 33.0])
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    labels = split_beads(bead_mask(img, sigma=sigma, nsigma=nsigma), min_radius=min_radius)
    return candidates_from_labels(labels, min_radius=min_radius, max_radius=max_radius, min_solidity=min_solidity)


def pick_bead_channel(corner_means: np.ndarray) -> int:
    """Index of the bead channel: the brightest in the agarose (as IMAXT did).

    Parameters
    ----------
    corner_means : ndarray (C,)
        Per channel, a high percentile of the image outside the tissue, or
        simply each channel's 99.9th percentile.

    Returns
    -------
    int
    """
    vals = np.asarray(corner_means, dtype=np.float64)
    if vals.ndim != 1 or vals.size == 0:
        raise ValueError(f"corner_means must be a non-empty 1-D array, got shape {vals.shape}")
    return int(np.nanargmax(vals))
