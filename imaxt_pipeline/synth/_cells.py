"""Flat 2-D planes of touching elliptical nuclei (and cytoplasm) with exact truth labels.

Independent of the 3-D simulator: the cellpose training script renders its
training set with :func:`render_nuclei_plane`, and the segmentation tests and
benchmark score against :func:`render_cells`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["render_cells", "render_nuclei_plane"]


def render_nuclei_plane(
    shape: tuple[int, int], *, n: int, rng: np.random.Generator, radius: tuple[float, float] = (4.0, 6.5)
) -> tuple[np.ndarray, np.ndarray]:
    """Render touching-but-not-overlapping elliptical nuclei.

    Parameters
    ----------
    shape : tuple of int
        Image shape (H, W).
    n : int
        Number of nuclei attempted (fewer when space runs out).
    rng : numpy.random.Generator
        Random source.
    radius : tuple of float
        Range of the semi-axes in px.

    Returns
    -------
    image : ndarray of float32
        Blurred, noisy intensity image in [0, ~1.5].
    labels : ndarray of int32
        Truth labels (0 = background).
    """
    h, w = shape
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    k = 0
    for _ in range(n * 4):
        if k >= n:
            break
        a, b = rng.uniform(*radius, size=2)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        th = rng.uniform(0, np.pi)
        r = int(np.ceil(max(a, b))) + 1  # work in the nucleus's bounding box only
        y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r + 1), max(0, int(cx) - r), min(w, int(cx) + r + 1)
        dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dy -= cy
        dx -= cx
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        inside = u * u + v * v <= 1.0
        box = labels[y0:y1, x0:x1]
        if not inside.any() or (box[inside] > 0).mean() > 0.02:
            continue
        k += 1
        inside &= box == 0
        box[inside] = k
        texture = 1.0 + 0.15 * rng.standard_normal(int(inside.sum()))
        signal[y0:y1, x0:x1][inside] = rng.uniform(0.5, 1.5) * texture
    background = rng.uniform(0.02, 0.15)
    image = ndi.gaussian_filter(signal, rng.uniform(0.7, 1.3)) + background
    scale = rng.uniform(50, 400)  # photons at intensity 1
    image = rng.poisson(np.clip(image, 0, None) * scale).astype(np.float32) / scale
    image += rng.normal(0, 0.02, shape).astype(np.float32)
    return image.astype(np.float32), labels


def render_cells(
    shape: tuple[int, int] = (256, 256), *, density: float = 0.35, seed: int = 0, expansion: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-channel plane of nuclei with cytoplasm, and its truth.

    Parameters
    ----------
    shape : tuple of int
        Plane shape (H, W).
    density : float
        Fraction of the plane covered by nuclei (before overlap rejection).
    seed : int
        Random seed.
    expansion : int
        Cytoplasm ring width in px around each nucleus.

    Returns
    -------
    image : ndarray of float32, shape (2, H, W)
        Channel 0 nuclear stain, channel 1 cytoplasm.
    nuclei, cells : ndarray of int32
        Truth labels; cell ``i`` grows from nucleus ``i``.

    Examples
    --------
    >>> image, nuclei, cells = render_cells((64, 64), seed=1)
    >>> image.shape, image.dtype.name, nuclei.shape
    ((2, 64, 64), 'float32', (64, 64))
    >>> bool(np.array_equal(np.unique(nuclei), np.unique(cells)))  # one cell per nucleus, same label
    True
    >>> bool(((nuclei > 0) <= (cells > 0)).all())  # every nucleus lies inside its cell
    True
    """
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    n = int(density * shape[0] * shape[1] / (np.pi * 25))
    nuclear, nuclei = render_nuclei_plane(shape, n=n, rng=rng)
    cells = expand_labels(nuclei, expansion).astype(np.int32)
    cyto = ndi.gaussian_filter(((cells > 0) & (nuclei == 0)).astype(np.float32) * 0.6, 1.0)
    cyto = cyto + 0.05 + rng.normal(0, 0.03, shape).astype(np.float32)
    return np.stack([nuclear, cyto]).astype(np.float32), nuclei, cells
