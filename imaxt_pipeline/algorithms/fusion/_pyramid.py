"""The one 2×2 pyramid reducer of every multiscale image (mosaic, confidence, cube, labels).

Level ``l + 1`` of an image of shape ``(..., h, w)`` has shape
``(..., ceil(h / 2), ceil(w / 2))``. Intensities are the mean of each 2×2
block; an odd last row or column is completed by replicating the edge, so
that the edge pixel is the mean of what exists (zero padding would halve it,
or quarter the corner). Labels take the top-left sample of each block
(nearest): a label value is never averaged into one that does not exist, and
a constant image stays exactly constant, edges included.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["downsample", "downsample_labels", "downsample_mean"]


def downsample_mean(image: ArrayLike) -> NDArray[np.float32]:
    """2×2 mean over the last two axes in float32; odd edges averaged over what exists.

    Parameters
    ----------
    image : array_like (..., h, w)
        Intensities; any real dtype (computed in float32).

    Returns
    -------
    ndarray (..., ceil(h / 2), ceil(w / 2)), float32
    """
    from ._mean2x2 import mean2x2  # numba compiles (or loads) on first use: importing fusion stays cheap

    arr = np.asarray(image, np.float32)
    h, w = arr.shape[-2:]
    out: NDArray[np.float32] = np.empty((*arr.shape[:-2], -(-h // 2), -(-w // 2)), np.float32)
    if arr.size:
        # (a00 + a10) + (a01 + a11), then a quarter (exact, a power of two); an odd edge pairs with itself
        mean2x2(np.ascontiguousarray(arr).reshape(-1, h, w), out.reshape(-1, *out.shape[-2:]))
    return out


def downsample_labels(labels: ArrayLike) -> NDArray[np.generic]:
    """Nearest 2×2 reduction over the last two axes: the top-left sample of each block (dtype kept).

    Parameters
    ----------
    labels : array_like (..., h, w)
        Integer label image.

    Returns
    -------
    ndarray (..., ceil(h / 2), ceil(w / 2))
    """
    arr: NDArray[np.generic] = np.asarray(labels)
    return arr[..., ::2, ::2]


def downsample(data: ArrayLike, *, label: bool) -> NDArray[np.generic]:
    """One pyramid step: :func:`downsample_labels` when ``label``, else :func:`downsample_mean`."""
    return downsample_labels(data) if label else downsample_mean(data)
