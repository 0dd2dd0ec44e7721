"""Calibration: a window of the detector is corrected exactly as that part of the whole tile; whether
its flat came from the data."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.optics import Calibration


@pytest.mark.parametrize("seed", range(3))
def test_window_equals_part_of_whole_tile(seed):
    rng = np.random.default_rng(seed)
    c, h, w = 2, 40, 30
    raw = rng.integers(0, 4000, (c, h, w)).astype(np.uint16)
    flat = rng.uniform(0.5, 1.5, (c, h, w)).astype(np.float32)
    stray = rng.uniform(0, 20, (c, h, w)).astype(np.float32)
    cal = Calibration(dark=rng.uniform(50, 120, c), flat=flat, stray=stray)
    y0, x0 = rng.integers(0, 20), rng.integers(0, 15)
    window = (slice(y0, y0 + 17), slice(x0, x0 + 11))
    whole = cal.apply(raw)
    part = cal.apply(raw[(slice(None), *window)], window=window)
    assert whole.dtype == part.dtype == np.float32
    np.testing.assert_array_equal(part, whole[(slice(None), *window)])
    # the same float32 arithmetic as (raw - dark - stray) / flat
    want = (raw.astype(np.float32) - cal.dark.astype(np.float32)[:, None, None] - stray) / flat
    np.testing.assert_array_equal(whole, want)
    stack = cal.apply(np.stack([raw, raw], axis=1), window=None)  # (C, T, H, W)
    np.testing.assert_array_equal(stack[:, 1], whole)
    with pytest.raises(ValueError, match="window"):
        cal.apply(raw[:, :5, :5], window=window)


@pytest.mark.parametrize(
    ("source", "has_flat", "estimated"),
    [
        ("estimated", True, True),
        ("estimated: uniform (ch0: fitted flat refused)", True, True),
        ("file", True, False),
        ("estimated", False, False),  # no flat at all: nothing for the seams to refine
        (None, True, False),
    ],
)
def test_flat_estimated_says_whether_the_seams_may_refine_the_flat(source, has_flat, estimated):
    flat = np.ones((1, 4, 4)) if has_flat else None
    cal = Calibration(dark=np.zeros(1), flat=flat, source={} if source is None else {"flat": source})
    assert cal.flat_estimated is estimated
