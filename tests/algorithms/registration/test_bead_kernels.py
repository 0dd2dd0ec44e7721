"""The fast pieces of bead finding equal the slow ones they replace, and the good-fit rules on radii."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.registration import BeadSpec, bead_threshold, detect_beads, good_beads
from imaxt_pipeline.algorithms.registration._bead_fit import fit_beads
from imaxt_pipeline.algorithms.registration._bead_threshold import fill_holes, threshold_levels
from imaxt_pipeline.algorithms.registration._beads import bead_channel_scores
from imaxt_pipeline.testing import bead_scene


@pytest.mark.parametrize("density", [0.0, 0.2, 0.45, 0.6, 1.0])
def test_fill_holes_equals_scipy(density):
    rng = np.random.default_rng(int(density * 100))
    mask = ndi.gaussian_filter(rng.random((97, 131)), 1.5) < np.quantile(rng.random(10), density)
    mask |= rng.random(mask.shape) < 0.05 * density  # specks and one-pixel holes
    np.testing.assert_array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7], ring[4, 4] = True, False
    assert fill_holes(ring)[4, 4] and not fill_holes(ring)[0, 0]
    line = np.array([[True, False, True]])
    np.testing.assert_array_equal(fill_holes(line), ndi.binary_fill_holes(line))


def test_threshold_levels_make_the_threshold_and_share_a_plateau():
    img, _ = bead_scene(2, shape=(200, 180), n=8)
    img[:20] = 0  # missing data
    lv = threshold_levels(img, sigma=1.0, nsigma=5.0)
    assert lv.background < lv.floor < lv.top
    assert lv.threshold(0.5) == bead_threshold(img, sigma=1.0, nsigma=5.0, rel=0.5)
    assert lv.threshold(0.5, peak=2 * lv.top) == bead_threshold(img, sigma=1.0, rel=0.5, peak=2 * lv.top)
    assert lv.threshold(0.0) == lv.floor
    empty = threshold_levels(np.zeros((32, 32)))
    assert empty.top == 0.0 and empty.threshold(0.5) == bead_threshold(np.zeros((32, 32)))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        bead_channel_scores(img)


def test_cutout_masks_equal_the_whole_image_ones():
    """Missing data and neighbours found per cutout (labels at the detection resolution) = whole-image masks."""
    img, _ = bead_scene(3, shape=(400, 380), n=25)
    img[:, :70] = 0  # a data edge through some beads
    img[300:310, 200:260] = 0  # and a gap
    spec = BeadSpec(pixel_size_um=1.0, diameter_um=90.0)
    cands = detect_beads(img, spec)
    f = cands.label_factor
    assert f == spec.factor > 1 and cands.labels.shape == (img.shape[0] // f, img.shape[1] // f) and len(cands) >= 5
    full = np.zeros(img.shape, np.int32)
    full[: cands.labels.shape[0] * f, : cands.labels.shape[1] * f] = np.kron(cands.labels, np.ones((f, f), np.int32))
    valid = ndi.binary_erosion(img != 0, iterations=2, border_value=1)
    common = {"grow": f + 3, "ring": 8.0}
    fast = fit_beads(img, cands.centres, cands.radii, labels=cands.labels, label_factor=f, missing_margin=2, **common)
    slow = fit_beads(img, cands.centres, cands.radii, labels=full, valid=valid, **common)
    np.testing.assert_array_equal([astuple(fit) for fit in fast], [astuple(fit) for fit in slow])  # NaN = NaN
    assert sum(bool(fit) for fit in fast) >= 5


def _row(radius, det_radius, **kw):
    base = {"y_px": 50.0, "x_px": 50.0, "y_err": 0.05, "x_err": 0.05, "radius_err": 0.05, "width_px": 1.4}
    base |= {"amplitude": 100.0, "background": 10.0, "chi2": 1.0, "snr": 30.0, "fit_ok": True, "det_y": 50.0}
    return {**base, "det_x": 50.0, "radius_px": radius, "det_radius": det_radius, **kw}


def test_good_beads_rules_on_the_radius():
    spec = BeadSpec(pixel_size_um=2.24)  # cuts of 6.03 to 25.1 px searched, detection blocks of 2 px
    rows = [_row(r, r - 0.3) for r in (10.0, 14.0, 18.0, 20.0)]
    rows.append(_row(23.0, 10.8))  # the fit settled on a disc twice the object detected
    rows.append(_row(5.95, 5.8))  # a cut of 6.1 px: its erfc half height lies w^2/2r inside the rim
    rows.append(_row(5.0, 4.8))  # a cut below the range searched
    good = good_beads(pd.DataFrame(rows), spec)
    assert good.tolist() == [True, True, True, True, False, True, False]
    assert good_beads(pd.DataFrame(rows), spec, max_radius_change=2.0)[4]
