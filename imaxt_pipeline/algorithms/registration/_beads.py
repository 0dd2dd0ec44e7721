"""Bead-channel statistics and the pieces of bead detection shared by the classical detector and the U-Net.

Beads are bright, round and much larger than nuclei: ``bead_threshold``
(``_bead_threshold``) separates them from background and tissue, :func:`split_beads` splits touching
discs with a watershed on the distance transform, :func:`candidates_from_labels`
keeps round regions of a radius range (the U-Net's path; the classical
detector's size and shape rules in µm are in ``_bead_detect``), and the bead
channel is the one whose bright objects are largest (:func:`bead_channel_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import regionprops
from skimage.segmentation import watershed

from ._bead_threshold import background_stats, bead_mask

__all__ = [
    "BeadCandidates",
    "bead_channel_scores",
    "candidates_from_labels",
    "normalise",
    "pick_bead_channel",
    "split_beads",
]


@dataclass(frozen=True)
class BeadCandidates:
    """Bead candidates of one image.

    Attributes
    ----------
    labels : ndarray (H // label_factor, W // label_factor) of int32
        Label image; candidate ``i`` has label ``i + 1``. Pixel ``(y, x)`` of the
        image has label ``labels[y // label_factor, x // label_factor]`` (0 past its end).
    centres : ndarray (N, 2)
        Centroid (y, x) of each candidate, image px.
    radii : ndarray (N,)
        Equivalent-disc radius ``sqrt(area / pi)``, image px.
    label_factor : int
        Image px per label px (the classical detector labels its block-averaged image).
    """

    labels: NDArray[np.int32]
    centres: NDArray[np.float64]
    radii: NDArray[np.float64]
    label_factor: int = 1

    def __len__(self) -> int:
        return len(self.radii)


def split_beads(mask: ArrayLike, *, min_radius: float = 4.0) -> NDArray[np.int32]:
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
    fg = np.asarray(mask, bool)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndi.distance_transform_edt(fg)
    smooth = ndi.gaussian_filter(dist, 1.0)
    comp, _ = ndi.label(fg)
    # scikit-image is untyped
    peaks: NDArray[np.intp] = peak_local_max(  # type: ignore[no-untyped-call]
        smooth, min_distance=max(int(min_radius), 1), threshold_abs=0.6 * min_radius, labels=comp, exclude_border=False
    )
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    split = watershed(-smooth, markers, mask=fg)  # type: ignore[no-untyped-call]  # scikit-image is untyped
    return np.asarray(split, dtype=np.int32)


def candidates_from_labels(
    labels: ArrayLike, *, min_radius: float = 4.0, max_radius: float = 80.0, min_solidity: float = 0.85
) -> BeadCandidates:
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
    lab = np.asarray(labels, np.int32)
    out = np.zeros(lab.shape, np.int32)
    centres: list[tuple[float, float]] = []
    radii: list[float] = []
    for region in regionprops(lab):  # type: ignore[no-untyped-call]  # scikit-image is untyped
        r = np.sqrt(region.area / np.pi)
        if not (min_radius <= r <= max_radius) or region.solidity < min_solidity:
            continue
        centres.append(region.centroid)
        radii.append(r)
        out[tuple(region.coords.T)] = len(radii)
    return BeadCandidates(out, np.asarray(centres, float).reshape(-1, 2), np.asarray(radii, float))


def bead_channel_scores(
    planes: ArrayLike, *, scale: float = 1.0, sigma: float = 1.0, rel: float = 0.5, min_area: int = 3
) -> NDArray[np.float64]:
    """How bead-like the brightest compact objects of each channel are.

    In each channel the objects brighter than half-way to the channel's
    maximum (:func:`bead_threshold`) are labelled and the score is their
    median equivalent radius, in full-resolution px. Beads are the largest
    bright objects of a sample; a channel whose brightest objects include
    many nuclei (a few px, thousands of them) scores low even though it
    also shows the beads.

    Parameters
    ----------
    planes : ndarray (C, H, W)
        One plane per channel, full resolution or a pyramid level fine
        enough to resolve nuclei (e.g. binned by 2).
    scale : float, optional
        Full-resolution px per pixel of ``planes``.
    sigma, rel : float, optional
        Smoothing (in ``planes`` px) and relative threshold
        (see :func:`bead_threshold`).
    min_area : int, optional
        Smallest object counted, in ``planes`` px (drops noise specks).

    Returns
    -------
    ndarray (C,)
        Score per channel (0 when no object qualifies).

    Raises
    ------
    ValueError
        If ``planes`` is not 3-D.
    """
    stack = np.asarray(planes, dtype=np.float32)
    if stack.ndim != 3:
        raise ValueError(f"planes must be (C, H, W), got shape {stack.shape}")
    scores = np.zeros(len(stack))
    for c, plane in enumerate(stack):
        if not np.any(plane != 0):
            continue
        labels, n = ndi.label(bead_mask(plane, sigma=sigma, rel=rel))
        if n == 0:
            continue
        area = np.bincount(labels.ravel())[1:]
        area = area[area >= min_area]
        if area.size:
            scores[c] = float(np.median(np.sqrt(area / np.pi))) * scale
    return scores


def pick_bead_channel(scores: ArrayLike) -> int:
    """Index of the bead channel: the highest score (see :func:`bead_channel_scores`).

    Parameters
    ----------
    scores : ndarray (C,)
        Per-channel bead score.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``scores`` is not a non-empty 1-D array.
    """
    vals = np.asarray(scores, dtype=np.float64)
    if vals.ndim != 1 or vals.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {vals.shape}")
    return int(np.nanargmax(vals))


def normalise(image: ArrayLike) -> NDArray[np.float32]:
    """Map an image to the bead U-Net's input range: asinh of background-normalised flux.

    Parameters
    ----------
    image : ndarray
        Bead-channel image (zeros = outside the tiles, kept at 0 output).

    Returns
    -------
    ndarray of float32
    """
    img = np.asarray(image, dtype=np.float32)
    bg, noise = background_stats(img)
    out = np.arcsinh((img - bg) / (3.0 * noise)) / 3.0
    out[img == 0] = 0.0
    res: NDArray[np.float32] = out.astype(np.float32)
    return res
