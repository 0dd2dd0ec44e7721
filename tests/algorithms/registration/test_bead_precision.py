"""Bead detection by size and shape in µm at 0.56 and 2.24 µm/px against the simulator's truth.

Sections are drawn by the synth scene renderer (tissue with section-own texture, nuclei, 90 µm beads
cut at every height) under a randomised instrument (background, read noise, PSF, bead S/N 4-80,
tissue 10-90 % as bright as the beads in the bead channel), several seeds per pixel size. Counted:
cuts of radius >= 0.3 R (95 % of the cuts of a sphere) whose disc lies wholly in the image. Targets
(issue 15): false positives <= 3 % of detections, recall >= 95 %, median centre error <= 0.15 px
where S/N >= 5.
"""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.registration import BeadSpec, find_beads_numpy, good_beads
from imaxt_pipeline.testing._beads import bead_field, bead_truth_score


@pytest.mark.parametrize(
    ("pixel_size_um", "shape", "seeds"),
    [
        pytest.param(0.56, (1024, 1024), (21, 22, 23, 24), marks=pytest.mark.slow),
        (2.24, (384, 384), (31, 32, 33, 34)),
    ],
)
def test_precision_recall_and_centres_at_both_pixel_sizes(pixel_size_um, shape, seeds):
    spec = BeadSpec(pixel_size_um=pixel_size_um, diameter_um=90.0)
    counted = found = false = detections = 0
    errors = []
    for seed in seeds:
        image, truth = bead_field(seed, pixel_size_um, shape)
        df = find_beads_numpy(image, spec)
        df["good"] = good_beads(df, spec)
        n, f, fp, nd, err = bead_truth_score(
            df, truth, image.shape, min_radius=spec.min_radius_px, edge=spec.factor + 2
        )
        counted, found, false, detections = counted + n, found + f, false + fp, detections + nd
        errors.append(err)
    err = np.concatenate(errors)
    assert counted >= 12  # enough cuts for the fractions to mean something
    assert found >= 0.95 * counted, (found, counted)
    assert false <= 0.03 * detections, (false, detections)
    bright = err[err[:, 1] >= 5, 0]
    assert bright.size >= 8 and np.median(bright) <= 0.15


def test_spec_converts_microns_to_pixels():
    fine, coarse = BeadSpec(pixel_size_um=0.56), BeadSpec(pixel_size_um=2.24)
    assert fine.radius_px == pytest.approx(4 * coarse.radius_px)
    assert fine.min_radius_px == pytest.approx(0.3 * 45 / 0.56) and fine.factor == 8 and coarse.factor == 2
    assert fine.max_radius_px == pytest.approx(1.15 * 45 / 0.56 + 2)
