"""Stray light that reaches far in: its exponential tail is followed, not taken for vignetting or background.

The profiles here are what :func:`imaxt_pipeline.algorithms.calibration._stray.stray_profiles` hands its border
fit: the median excess over the model per line, from the border inwards, with noise and a sloped baseline (the
flat's error along the band). Decays and amplitudes are drawn at random.
"""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration._stray import _border_excess

E = 20  # border width (8 % of a 256 px tile)
LINES = 120  # the reach followed inwards


def _profile(rng, amplitude, scale, slope, noise):
    x = np.arange(LINES, dtype=float)
    base = 3.0 + slope * x / LINES
    return base + amplitude * np.exp(-x / scale) + rng.normal(0.0, noise, LINES), amplitude * np.exp(-x / scale)


@pytest.mark.parametrize("seed", range(6))
def test_a_long_tail_is_followed_past_the_border_width(seed):
    rng = np.random.default_rng(seed)
    amplitude, scale = rng.uniform(150, 800), rng.uniform(15, 30)
    inward, truth = _profile(rng, amplitude, scale, rng.uniform(-20, 20), 1.0)
    excess, missed = _border_excess(inward, E, 0.5, 4.0)
    # within 10 % (and 5 ADU) at the border, at the border width and at two decay lengths in
    for x in (0, E, int(2 * scale)):
        assert abs(excess[x] - truth[x]) <= 0.1 * truth[x] + 5.0, (x, excess[x], truth[x])
    # the old window [E, 2 E) alone: zero past E, and the border value short by the window's own light
    assert excess[E:].max() > 0.1 * amplitude * np.exp(-E / scale)
    assert np.isfinite(missed) and missed >= 0.0


def test_a_short_stray_is_measured_as_before():
    rng = np.random.default_rng(7)
    inward, truth = _profile(rng, 400.0, 3.0, 0.0, 1.0)
    excess, missed = _border_excess(inward, E, 0.5, 4.0)
    assert np.all(excess[E:] == 0.0)  # light gone within the border width: no tail fitted
    assert abs(excess[0] - truth[0]) < 5.0
    assert missed < 5.0


def test_a_sloped_baseline_alone_is_no_stray_light():
    rng = np.random.default_rng(8)
    x = np.arange(LINES, dtype=float)
    inward = 3.0 + 40.0 * (1.0 - x / LINES) + rng.normal(0.0, 1.0, LINES)  # a flat error, no stray light
    excess, _ = _border_excess(inward, E, 0.5, 4.0)
    # the window's fall sends it to the tail fit, which must not invent an exponential; at most the old
    # window estimate's few ADU at the border remain
    assert excess[E:].max() == 0.0
    assert excess.max() < 15.0


def test_an_unseen_stretch_is_skipped_not_read_as_zero():
    rng = np.random.default_rng(9)
    inward, truth = _profile(rng, 500.0, 22.0, 0.0, 1.0)
    inward[60:] = np.nan  # tissue from line 60 on: the bands are not agarose there
    excess, _ = _border_excess(inward, E, 0.5, 4.0)
    assert abs(excess[40] - truth[40]) <= 0.1 * truth[40] + 5.0
