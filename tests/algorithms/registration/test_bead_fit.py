"""Poisson ML profile fit of beads against rendered discs with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.registration import BeadFit, disc_model, fit_bead, radius_outliers
from imaxt_pipeline.algorithms.registration._bead_fit import fit_beads


def _render(rng, n=30, size=81, amp=20.0, bg=10.0):
    yy, xx = np.indices((size, size), dtype=float)
    truth, images = [], []
    for _ in range(n):
        p = np.array([size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2), rng.uniform(6, 30), 1.5, amp, bg])
        truth.append(p)
        images.append(rng.poisson(disc_model(p, yy, xx)).astype(float))
    return np.array(truth), images


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_centre_radius_and_errors_match_truth(dtype):
    rng = np.random.default_rng(1)
    truth, images = _render(rng)
    fits = [fit_bead(img.astype(dtype), y0=40, x0=40, r0=p[2] * 1.2) for p, img in zip(truth, images, strict=True)]
    assert all(fits)
    dy = np.array([f.y for f in fits]) - truth[:, 0]
    dx = np.array([f.x for f in fits]) - truth[:, 1]
    err = np.hypot(dy, dx)
    assert np.median(err) < 0.3
    assert np.median(np.abs([f.radius for f in fits] - truth[:, 2])) < 0.3
    # Reported errors are honest: pulls have unit spread.
    pulls = np.concatenate([dy / [f.y_err for f in fits], dx / [f.x_err for f in fits]])
    assert 0.6 < np.std(pulls) < 1.5
    assert 0.7 < np.median([f.chi2 for f in fits]) < 1.3


def test_errors_scale_with_gain():
    """Data in arbitrary units (gain 4): same centres, same errors in px."""
    rng = np.random.default_rng(2)
    truth, images = _render(rng, n=5)
    for p, img in zip(truth, images, strict=True):
        a = fit_bead(img, y0=40, x0=40, r0=p[2])
        b = fit_bead(img * 4.0, y0=40, x0=40, r0=p[2])
        assert abs(a.y - b.y) < 1e-3 and abs(a.x - b.x) < 1e-3
        assert abs(a.y_err / b.y_err - 1) < 0.05


def test_origin_and_touching_neighbours_with_labels():
    rng = np.random.default_rng(3)
    yy, xx = np.indices((120, 160), dtype=float)
    p1 = np.array([60.3, 50.6, 22.0, 1.5, 30.0, 5.0])
    p2 = np.array([58.8, 93.1, 20.0, 1.5, 30.0, 0.0])
    img = rng.poisson(disc_model(p1, yy, xx) + disc_model(p2, yy, xx)).astype(float)
    labels = np.where(np.hypot(yy - p1[0], xx - p1[1]) < 23, 1, 0)
    labels[np.hypot(yy - p2[0], xx - p2[1]) < 21] = 2
    fits = fit_beads(img, np.array([[60, 50], [59, 93]]), np.array([21.0, 19.0]), labels=labels)
    for f, p in zip(fits, (p1, p2), strict=True):
        assert f and np.hypot(f.y - p[0], f.x - p[1]) < 0.3 and abs(f.radius - p[2]) < 0.5


def test_blank_cutout_fails_falsy_and_bad_input_raises():
    rng = np.random.default_rng(4)
    blank = rng.poisson(10.0, (61, 61)).astype(float)
    fit = fit_bead(blank, y0=30, x0=30, r0=10)
    assert isinstance(fit, BeadFit)
    assert not fit or fit.snr < 3
    with pytest.raises(ValueError, match="2-D"):
        fit_bead(np.zeros((3, 10, 10)), y0=5, x0=5, r0=3)
    with pytest.raises(ValueError, match="usable pixels"):
        fit_bead(np.zeros((3, 3)), y0=1, x0=1, r0=1)


def test_radius_outliers():
    rng = np.random.default_rng(5)
    r = rng.normal(20, 1, 200)
    r[[3, 50]] = [60, 1]
    flags = radius_outliers(r, nsigma=5)
    assert flags[3] and flags[50] and flags.sum() <= 4
    assert radius_outliers(np.array([np.nan, 10, 10, 10]))[0]


def test_radius_outliers_keep_few_honest_cuts_and_reject_a_real_outlier_among_many():
    # three beads cut at three depths (the sweep's draws 18, 27): a MAD of three says nothing about them
    assert not radius_outliers(np.array([57.9, 57.3, 50.7])).any()
    # twelve alike and one cut nearer its pole: honest radii spread by the bead sizes at least (floor)
    r = np.r_[np.random.default_rng(2).normal(57.3, 0.2, 12), 50.7]
    assert not radius_outliers(r).any()
    assert radius_outliers(r, rel_floor=0.0)[-1]  # without the floor the tiny MAD would reject it
    # a real outlier (a merged pair, a tissue blob) among many is still rejected, with or without the floor
    many = np.r_[np.random.default_rng(3).uniform(40, 60, 40), 150.0]
    assert radius_outliers(many)[-1] and radius_outliers(many).sum() == 1
    # below min_count only non-finite radii are flagged, however far apart
    assert radius_outliers(np.array([20.0, 60.0, np.nan, 21.0]), min_count=10).tolist() == [False, False, True, False]


def test_rim_on_data_sees_the_data_edge_and_missing_pixels():
    from imaxt_pipeline.algorithms.registration._bead_rim import rim_on_data

    yy, xx = np.indices((200, 300), dtype=float)
    img = disc_model([100, 150, 30, 1.5, 100, 10], yy, xx)
    centres = np.array([[100, 150], [20, 150], [100, 290], [np.nan, 1.0]])
    cover = rim_on_data(img, centres, np.full(4, 30.0), np.full(4, 1.5))
    assert cover[0] == 1.0 and 0.5 < cover[1] < 0.9 and 0.4 < cover[2] < 0.7 and cover[3] == 0.0
    # pixels no tile covers (exact 0), and the 2 px next to them, are off the data too
    holed = img.copy()
    holed[:, 184:] = 0.0  # 34 px right of the centre: the rim at r + 3 = 33 px just clears it...
    assert rim_on_data(holed, centres[:1], [30.0], [1.5])[0] == 1.0
    assert rim_on_data(holed, centres[:1], [30.0], [1.5], missing_margin=2)[0] < 1.0  # ...its 2 px margin not
    assert rim_on_data(img, centres[:1], [30.0], [1.5], valid=xx < 170)[0] < 1.0
