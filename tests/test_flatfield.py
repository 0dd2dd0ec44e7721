"""Dark, flat field and trim estimated from the tiles themselves."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import Calibration, estimate_calibration
from imaxt_pipeline.algorithms.flatfield import (Trim, apply_flat, confidence_map, estimate_dark, estimate_flat,
                                                 estimate_trim, overlap_mismatch)
from imaxt_pipeline.algorithms.overlap import adjacent_pairs

from .test_overlap import grid_tiles

TILE = 192


def _instrument(tiles, dark=100.0, stray=0.6):
    yy, xx = np.indices((TILE, TILE), dtype=float)
    c = (TILE - 1) / 2
    flat = 1.0 - 0.3 * ((yy - c) ** 2 + (xx - c) ** 2) / c**2
    flat /= flat.mean()
    raw = dark + (tiles + 300.0) * flat * (1 + stray * np.exp(-xx / 2.5))  # + tissue background
    return raw, flat


def _mismatch(tiles, true, weights):
    """Mean relative intensity mismatch over the overlaps of neighbours (smoothed: noise aside)."""
    from scipy import ndimage as ndi

    tiles = [ndi.gaussian_filter(t, 2.0) for t in tiles]
    out = []
    for a, b in adjacent_pairs(3, 3):
        d = np.rint(true[b] - true[a]).astype(int)
        frac = (true[b] - true[a]) - d  # b's scene sits frac px further: resample it onto a's grid
        tb = ndi.shift(tiles[b], frac, order=3, mode="nearest")
        ya, xa = slice(max(0, d[0]), TILE + min(0, d[0])), slice(max(0, d[1]), TILE + min(0, d[1]))
        yb, xb = slice(max(0, -d[0]), TILE + min(0, -d[0])), slice(max(0, -d[1]), TILE + min(0, -d[1]))
        out.append(overlap_mismatch(tiles[a][ya, xa], tb[yb, xb], weights=weights[ya, xa] * weights[yb, xb]))
    return float(np.mean(out))


@pytest.mark.parametrize("statistic", ["median", "trimmed_mean"])
def test_flat_field_halves_overlap_mismatch(statistic):
    from imaxt_pipeline.algorithms.distortion import DistortionModel

    clean, true, _ = grid_tiles(7, rows=3, cols=3, tile=TILE, model=DistortionModel())
    more = [grid_tiles(s, rows=3, cols=3, tile=TILE, model=DistortionModel())[0] for s in (8, 9)]
    raw, flat = _instrument(np.concatenate([clean, *more]))  # three slices' tiles
    cal = estimate_calibration(raw[None], dark=100.0, statistic=statistic)
    assert cal.trim.left >= 3 and cal.trim.right == cal.trim.top == cal.trim.bottom == 0
    w = cal.confidence((TILE, TILE))
    before = _mismatch(raw[:9] - 100.0, true, w)
    after = _mismatch(cal.apply(raw[None, :9])[0], true, w)
    assert after <= 0.5 * before, (before, after)
    sy, sx = cal.trim.valid((TILE, TILE))
    rel = cal.flat[0][sy, sx] / flat[sy, sx]
    assert np.std(rel / rel.mean()) < 0.05


def test_estimate_dark_close_to_offset():
    rng = np.random.default_rng(0)
    tiles = 100.0 + rng.normal(0, 3, (4, 64, 64))
    tiles[:, :, 32:] += rng.uniform(50, 500, (4, 64, 32))  # half empty, half signal
    assert estimate_dark(tiles) == pytest.approx(100.0, abs=3.0)


def test_trim_and_confidence():
    rng = np.random.default_rng(1)
    base = rng.uniform(800, 1200, (10, 100, 100))
    base[:, :4, :] *= 2.0  # stray light on the top rows
    trim = estimate_trim(base)
    assert trim.top >= 4 and trim.bottom == trim.left == trim.right == 0
    conf = confidence_map((100, 100), trim=trim)
    assert conf[: trim.top].max() == 0 and conf[trim.top:].min() == 1
    feathered = confidence_map((100, 100), trim=Trim(left=5), feather=10)
    assert feathered[50, 4] == 0 and 0 < feathered[50, 8] < 1 and feathered[50, 50] == 1


def test_input_validation():
    with pytest.raises(ValueError, match="statistic"):
        estimate_flat(np.ones((2, 8, 8)), statistic="mode")
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        estimate_flat(np.ones((8, 8)))
    with pytest.raises(ValueError, match="same shape"):
        overlap_mismatch(np.ones((2, 2)), np.ones((3, 2)))
    np.testing.assert_allclose(apply_flat(np.full((4, 4), 110.0), np.full((4, 4), 2.0), dark=10.0), 50.0)
    cal = Calibration.identity(2)
    assert cal.apply(np.ones((2, 3, 4, 4))).shape == (2, 3, 4, 4)
