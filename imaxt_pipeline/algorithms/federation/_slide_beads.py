"""Bead centres on slide-scanner images: whole-section discs, either contrast, any background.

A slide shows a bead as the silhouette of the part of the sphere inside the 15 um section: a disc
with a hard rim, darker (bright field) or brighter (fluorescence) than the mounting medium around
it. The STPT detector of :mod:`imaxt_pipeline.algorithms.registration` models a thin optical cut of
a fluorescent bead on dark agarose; here the disc is found by its contrast to a local background
(a median far wider than a bead), thresholded at half that contrast, and measured by its area
(radius) and contrast-weighted centroid (centre, exact for a symmetric disc). Beads sit in the
mounting medium around the tissue, so a disc whose surroundings differ from the slide's bare
background (the image border) is a nucleus, not a bead.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

__all__ = ["SLIDE_BEAD_COLUMNS", "find_slide_beads"]

SLIDE_BEAD_COLUMNS = ("x_px", "y_px", "radius_px", "contrast")

Array = NDArray[np.float64]


def find_slide_beads(
    image: Array,
    *,
    min_radius_px: float,
    max_radius_px: float,
    nsigma: float = 6.0,
    min_fill: float = 0.8,
) -> Array:
    """Disc-shaped blobs of ``min_radius_px``..``max_radius_px`` standing out from their surroundings.

    Parameters
    ----------
    image : ndarray (H, W)
        One channel of the slide.
    min_radius_px, max_radius_px : float
        Radius range of bead discs on this slide.
    nsigma : float
        A disc's contrast must exceed this many noise sigmas (robust, from the residual image).
    min_fill : float
        Area over the area of the circle of the blob's own second moments (1 for a disc); tissue
        fragments and edges fall below.

    Returns
    -------
    ndarray (N, 4)
        Columns :data:`SLIDE_BEAD_COLUMNS`: centre (x, y) px, radius px, signed contrast.
    """
    img = np.asarray(image, np.float64)
    # background: median of blocks ~4 bead radii wide (a disc fills a fifth of one), interpolated
    f = max(2, int(np.ceil(4 * max_radius_px)))
    h, w = img.shape
    ph, pw = -h % f, -w % f
    padded = np.pad(img, ((0, ph), (0, pw)), mode="reflect")
    blocks = np.median(padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f), axis=(1, 3))
    centres_y, centres_x = (np.arange(n) * f + 0.5 * (f - 1) for n in blocks.shape)
    gy = np.interp(np.arange(h), centres_y, np.arange(len(centres_y)))
    gx = np.interp(np.arange(w), centres_x, np.arange(len(centres_x)))
    bg = ndi.map_coordinates(blocks, np.meshgrid(gy, gx, indexing="ij"), order=1, mode="nearest")
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    glass = float(np.median(border))
    resid = ndi.gaussian_filter(img - bg, 0.7)
    noise = 1.4826 * float(np.median(np.abs(resid - np.median(resid)))) + 1e-9
    min_area, max_area = 0.25 * np.pi * min_radius_px**2, 2.0 * np.pi * max_radius_px**2
    rows: list[tuple[float, float, float, float]] = []
    for sign in (1.0, -1.0):
        r = sign * resid
        seeds, n = ndi.label(r > nsigma * noise)
        if n == 0:
            continue
        # half-contrast threshold of each blob: its own peak plateau
        area0 = np.bincount(seeds.ravel(), minlength=n + 1)[1:]
        # a blob whose surroundings differ from the bare background is a nucleus or a fold inside the tissue,
        # not a bead: skipped before any work on it: its seed's median contrast and centroid, for all blobs at once
        plateaus, cents = _seed_stats(r, seeds, n)
        at = np.clip(cents.astype(np.int64), 0, [h - 1, w - 1])
        on_medium = np.abs(bg[at[:, 0], at[:, 1]] - glass) <= 0.25 * plateaus
        for lab, sl in enumerate(ndi.find_objects(seeds), start=1):
            if sl is None or not min_area <= area0[lab - 1] <= max_area or not on_medium[lab - 1]:
                continue
            pad = int(np.ceil(0.5 * max_radius_px))
            y0, x0 = max(sl[0].start - pad, 0), max(sl[1].start - pad, 0)
            y1, x1 = min(sl[0].stop + pad, img.shape[0]), min(sl[1].stop + pad, img.shape[1])
            patch = r[y0:y1, x0:x1]
            inner = patch[seeds[y0:y1, x0:x1] == lab]
            plateau = float(np.median(inner))
            level = 0.5 * max(plateau, 0.5 * float(inner.max()))
            comp, k = ndi.label(patch > level)
            if k == 0:
                continue
            cy, cx = (np.asarray(c) for c in ndi.center_of_mass(seeds[y0:y1, x0:x1] == lab))
            which = comp[
                int(np.clip(np.rint(cy), 0, patch.shape[0] - 1)), int(np.clip(np.rint(cx), 0, patch.shape[1] - 1))
            ]
            if which == 0:
                continue
            mask = comp == which
            if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
                continue  # cut by the image edge or merged into something larger
            area = float(mask.sum())
            radius = float(np.sqrt(area / np.pi))
            if not min_radius_px <= radius <= max_radius_px:
                continue
            yy, xx = np.nonzero(mask)
            cov = np.cov(np.vstack([yy, xx]).astype(np.float64)) if area > 2 else np.eye(2)
            # a uniform disc of radius r has variance r^2 / 4 along every axis
            moment_area = 4.0 * np.pi * float(np.sqrt(max(np.linalg.det(cov), 1e-12)))
            eig = np.linalg.eigvalsh(cov)
            if area / moment_area < min_fill or eig[0] < 0.5 * eig[1]:
                continue  # ragged, or elongated (an axis ratio below 0.7)
            wgt = np.clip(patch[mask], 0.0, None)
            wy = float(np.sum(wgt * yy) / np.sum(wgt)) + y0
            wx = float(np.sum(wgt * xx) / np.sum(wgt)) + x0
            rows.append((wx, wy, radius, sign * plateau))
    return np.array(rows, np.float64).reshape(-1, 4)


def _seed_stats(values: Array, seeds: NDArray[np.int32], n: int) -> tuple[Array, Array]:
    """Median of ``values`` and centroid (y, x) over each labelled seed 1..n (sorting only the seed pixels)."""
    yy, xx = np.nonzero(seeds)
    lab = seeds[yy, xx]
    v = values[yy, xx]
    order = np.lexsort((v, lab))
    counts = np.bincount(lab, minlength=n + 1)[1:]
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sv = v[order]
    lo, hi = start + (counts - 1) // 2, start + counts // 2  # the two middle values (one when odd)
    medians = 0.5 * (sv[lo] + sv[hi])
    cy = np.bincount(lab, weights=yy, minlength=n + 1)[1:] / counts
    cx = np.bincount(lab, weights=xx, minlength=n + 1)[1:] / counts
    return medians, np.column_stack([cy, cx])
