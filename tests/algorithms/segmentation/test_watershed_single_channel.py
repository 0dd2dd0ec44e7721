"""Single-channel nuclei with only the nucleus diameter configured: object F1 >= 0.85 at IoU 0.5.

The segmenter is built exactly as the segment step builds it (``make_segmenter``: plane-wide
thresholds, watershed backend, no cytoplasm channel); the scene (nucleus count, size range) is
drawn per seed and the worst seed must pass.
"""

from __future__ import annotations

import numpy as np

from imaxt_pipeline.algorithms.segmentation import object_f1
from imaxt_pipeline.steps.params import SegmentParams
from imaxt_pipeline.steps.segment import make_segmenter
from imaxt_pipeline.synth._cells import render_nuclei_plane


def test_watershed_reaches_f1_085_on_single_channel_nuclei_over_seeds():
    scores = []
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        radius = (float(rng.uniform(3.5, 4.5)), float(rng.uniform(5.5, 7.0)))
        image, truth = render_nuclei_plane((384, 384), n=int(rng.integers(200, 500)), rng=rng, radius=radius)
        params = SegmentParams(diameter_um=float(np.mean(radius)) * 2, nuclear_channel=0, cyto_channel=None)
        segmenter = make_segmenter(params, pixel_um=1.0, plane_sample=image[None], sample_scale=1.0)
        scores.append(object_f1(truth, segmenter.segment(image[None]).nuclei).f1)
    assert min(scores) >= 0.85, scores
