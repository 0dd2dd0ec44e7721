"""QC of segmentation and the catalogue: a label overlay, feature histograms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def segment_overlay(image: np.ndarray, labels: np.ndarray, *, plane: int, region: int) -> Figure:
    """Nuclear channel and cells (random colours) of a ``region``-px square around the labels' median pixel.

    Parameters
    ----------
    image : ndarray (h, w)
        The nuclear channel of the plane.
    labels : ndarray (h, w)
        Cell labels of the plane (0 = background).
    plane : int
        Plane index, for the titles.
    region : int
        Edge of the region shown, px.
    """
    from skimage.color import label2rgb

    ys, xs = np.nonzero(labels)
    cy, cx = (int(np.median(ys)), int(np.median(xs))) if len(ys) else (labels.shape[0] // 2, labels.shape[1] // 2)
    y0, x0 = max(0, cy - region // 2), max(0, cx - region // 2)
    sl = (slice(y0, y0 + region), slice(x0, x0 + region))
    img = image[sl]
    lo, hi = np.percentile(img, [1, 99.5])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.2, 1.0, size=(int(labels[sl].max()) + 1, 3))
    overlay = label2rgb(labels[sl], image=grey, colors=list(colours[1:]) or None, alpha=0.35, bg_label=0)
    fig = Figure(figsize=(10, 5))
    axes = fig.subplots(1, 2)
    axes[0].imshow(grey, cmap="gray")
    axes[1].imshow(overlay)
    for ax, title in zip(axes, ("nuclear channel", "cells (random colours)"), strict=True):
        ax.set_title(f"{title}, plane {plane}, y{y0} x{x0}")
        ax.axis("off")
    return fig


def catalogue_histograms(cells: pd.DataFrame, channels: Sequence[str]) -> Figure:
    """Histograms of cell (and nucleus) areas and of the mean intensity of each channel."""
    fig = Figure(figsize=(4 * (1 + len(channels)), 3.2))
    axes = np.atleast_1d(fig.subplots(1, 1 + len(channels)))
    if len(cells):
        axes[0].hist(cells["area_um2"], bins=50, color="0.3")
        if "nucleus_area_um2" in cells:
            axes[0].hist(cells["nucleus_area_um2"].dropna(), bins=50, color="tab:blue", alpha=0.6)
        for ax, ch in zip(axes[1:], channels, strict=True):
            ax.hist(cells[f"mean_{ch}"], bins=50, color="tab:orange")
    axes[0].set_xlabel("area (µm²): cells grey, nuclei blue")
    for ax, ch in zip(axes[1:], channels, strict=True):
        ax.set_xlabel(f"mean intensity, {ch}")
    for ax in axes:
        ax.set_ylabel("cells")
    fig.suptitle(f"{len(cells)} cells")
    return fig
