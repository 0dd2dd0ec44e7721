"""Synthetic nuclei + cells with exact truth for the segmentation tests (seeded)."""

from __future__ import annotations

from imaxt_pipeline.training.train_cellpose import render_cells


def two_channel_sample(shape=(256, 256), *, density=0.35, seed=0, expansion=4):
    """(image (2, H, W) float32, truth nuclei, truth cells); see ``render_cells``."""
    return render_cells(shape, density=density, seed=seed, expansion=expansion)
