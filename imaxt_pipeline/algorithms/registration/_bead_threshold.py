"""Bead thresholds: background, noise and plateau of a bead-channel image, and the mask above the threshold.

Beads are uniformly filled discs far brighter than the tissue: :func:`bead_threshold`
sits above the noise and a fraction of the way up to the bead plateau;
:func:`threshold_levels` gives its parts (:class:`ThresholdLevels`), so that
planes measured apart (one task each) share one plateau. :func:`bead_mask` is
the smoothed image above it, holes filled (:func:`fill_holes`, one labelling
instead of scipy's pixel-by-pixel growth).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi

__all__ = [
    "ThresholdLevels",
    "background_stats",
    "bead_mask",
    "bead_threshold",
    "fill_holes",
    "pixel_noise",
    "smoothing_gain",
    "threshold_levels",
]


def background_stats(image: ArrayLike, *, valid: ArrayLike | None = None) -> tuple[float, float]:
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
    img = np.asarray(image)
    sel = (img != 0) if valid is None else np.asarray(valid, bool)
    vals = img[sel & np.isfinite(img)]
    if vals.size < 16:
        return 0.0, 1.0
    if vals.size > 200_000:
        vals = vals[:: vals.size // 200_000]
    vals = vals.astype(np.float64)  # after the selection: the whole image is never copied to float64
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med)))
    return med, max(1.4826 * mad, 1e-6)


def pixel_noise(image: ArrayLike, *, valid: ArrayLike | None = None) -> float:
    """Per-pixel noise from horizontal neighbour differences (1.4826 x MAD / sqrt 2), blind to smooth structure.

    Parameters
    ----------
    image : ndarray (H, W)
    valid : ndarray of bool, optional
        Pixels to use (default: not exactly 0).

    Returns
    -------
    float
    """
    img = np.asarray(image)
    if not np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float64)
    ok = (img != 0) if valid is None else np.asarray(valid, bool)
    if img.ndim != 2 or img.shape[1] < 2:
        return 1.0
    pair = ok[:, 1:] & ok[:, :-1]
    # in the image's own float type: neighbours within a factor 2 of each other differ exactly (Sterbenz)
    diff = (img[:, 1:] - img[:, :-1])[pair]
    if diff.size < 16:
        return 1.0
    if diff.size > 400_000:
        diff = diff[:: diff.size // 400_000]
    return max(1.4826 * float(np.median(np.abs(diff.astype(np.float64)))) / float(np.sqrt(2.0)), 1e-6)


def smoothing_gain(sigma: float) -> float:
    """Factor by which a 2-D Gaussian of ``sigma`` px reduces white noise (1 for no smoothing)."""
    return 1.0 if sigma <= 0 else min(1.0, 1.0 / (2.0 * np.sqrt(np.pi) * sigma))


class ThresholdLevels(NamedTuple):
    """The statistics :func:`bead_threshold` is made of, so that planes can share one bead plateau.

    Attributes
    ----------
    background : float
        Median of the smoothed valid pixels.
    floor : float
        ``background + nsigma * noise`` (the noise of the smoothed image).
    top : float
        Brightest smoothed valid pixel (0 when there is none, as is then ``background``).
    """

    background: float
    floor: float
    top: float

    def threshold(self, rel: float, peak: float | None = None) -> float:
        """The larger of ``floor`` and ``rel`` of the way from the background to ``peak`` (default ``top``)."""
        if rel <= 0:
            return self.floor
        top = self.top if peak is None else (peak or self.background)
        return max(self.floor, self.background + rel * (top - self.background))


def threshold_levels(
    image: ArrayLike, *, sigma: float = 2.0, nsigma: float = 5.0, smooth: ArrayLike | None = None
) -> ThresholdLevels:
    """Background, noise floor and plateau of a bead-channel image (see :func:`bead_threshold`).

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image (zeros = outside the tiles).
    sigma : float, optional
        Gaussian smoothing in px before the statistics.
    nsigma : float, optional
        Floor in units of the noise of the smoothed image.
    smooth : ndarray (H, W), optional
        ``image`` already smoothed by ``sigma`` (saves the filter when the caller has it).

    Returns
    -------
    ThresholdLevels
    """
    img = np.asarray(image, dtype=np.float32)
    valid = img != 0
    if smooth is None:
        smooth = ndi.gaussian_filter(img, sigma) if sigma > 0 else img
    sm = np.asarray(smooth)
    bg, _spread = background_stats(sm, valid=valid)
    # the spread of the pixel values holds the tissue's structure; the noise is that of neighbour differences
    floor = bg + nsigma * pixel_noise(img, valid=valid) * smoothing_gain(sigma)
    top = float(sm[valid].max()) if valid.any() else 0.0
    return ThresholdLevels(float(bg), float(floor), top)


def bead_threshold(
    image: ArrayLike, *, sigma: float = 2.0, nsigma: float = 5.0, rel: float = 0.5, peak: float | None = None
) -> float:
    """Intensity separating beads from background and tissue.

    Beads are uniformly filled discs far brighter than the tissue, so the
    threshold is the larger of ``bg + nsigma * noise`` and the level a
    fraction ``rel`` of the way from the background to the bead plateau
    (``peak``, by default the maximum of the smoothed image).

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image (may be a binned/pyramid level; zeros = outside
        the tiles).
    sigma : float, optional
        Gaussian smoothing in px before the statistics.
    nsigma : float, optional
        Minimum threshold in units of the background noise.
    rel : float, optional
        Fraction of the way from background to ``peak`` (0 disables).
    peak : float, optional
        Bead plateau level (default: maximum of the smoothed image).

    Returns
    -------
    float
    """
    return threshold_levels(image, sigma=sigma, nsigma=nsigma).threshold(rel, peak)


def fill_holes(mask: ArrayLike) -> NDArray[np.bool_]:
    """``scipy.ndimage.binary_fill_holes`` (4-connected background), by one labelling of the background.

    scipy grows the outside into the background one pixel per pass, which takes
    seconds on a large mask; the background components touching the border are
    the same pixels.

    Parameters
    ----------
    mask : ndarray of bool (H, W)

    Returns
    -------
    ndarray of bool
        ``mask`` with every background region not connected to the border set.
    """
    fg = np.asarray(mask, bool)
    if fg.ndim != 2 or fg.size == 0:
        return np.asarray(ndi.binary_fill_holes(fg), bool)
    holes, n = ndi.label(~fg)
    if n == 0:
        return fg.copy()
    outside = np.zeros(n + 1, bool)
    outside[holes[0]] = outside[holes[-1]] = outside[holes[:, 0]] = outside[holes[:, -1]] = True
    outside[0] = False  # label 0 is the foreground
    filled: NDArray[np.bool_] = ~outside[holes]
    return filled


def bead_mask(
    image: ArrayLike, *, sigma: float = 2.0, nsigma: float = 5.0, rel: float = 0.5, threshold: float | None = None
) -> NDArray[np.bool_]:
    """Pixels above the bead threshold after smoothing.

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image.
    sigma : float, optional
        Gaussian smoothing in px.
    nsigma, rel : float, optional
        See :func:`bead_threshold` (used when ``threshold`` is None).
    threshold : float, optional
        Absolute threshold (e.g. computed once per slice on a pyramid level,
        so that every block of the slice uses the same one).

    Returns
    -------
    ndarray of bool
        Foreground with holes filled.
    """
    img = np.asarray(image, dtype=np.float32)
    valid = img != 0
    smooth = ndi.gaussian_filter(img, sigma) if sigma > 0 else img
    if threshold is None:  # from the same smoothed image: one filter per call
        threshold = threshold_levels(img, sigma=sigma, nsigma=nsigma, smooth=smooth).threshold(rel)
    return fill_holes((smooth > threshold) & valid)
