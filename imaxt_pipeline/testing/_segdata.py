"""Synthetic nuclei + cells with exact truth for the segmentation tests (seeded)."""

from __future__ import annotations

from imaxt_pipeline.synth import render_cells


def two_channel_sample(shape=(256, 256), *, density=0.35, seed=0, expansion=4):
    """(image (2, H, W) float32, truth nuclei, truth cells); see ``render_cells``."""
    return render_cells(shape, density=density, seed=seed, expansion=expansion)


def synth_plane(tmp_dir, *, seed=0, slice_index=0):
    """(noisy image (C, H, W), truth nuclei (H, W)) from the project's simulator (truth mosaic frame).

    Rendered from ``truth.clean`` with Poisson + read noise, so image and truth
    share one frame exactly; the plane holds agarose, tissue, nuclei and beads.
    """
    import numpy as np

    from imaxt_pipeline.synth import SynthParams, synthesize

    truth = synthesize(tmp_dir, SynthParams(slices=1, rows=2, cols=2, seed=seed, tile_shape=(256, 256)))
    rng = np.random.default_rng(seed)
    clean = truth.clean[slice_index]
    image = rng.poisson(np.clip(clean, 0, None)).astype(np.float32)
    image += rng.normal(0, truth.read_noise, clean.shape).astype(np.float32)
    return image, truth.nuclei[slice_index], truth
