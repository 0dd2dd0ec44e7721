"""Dark, flat field and trim estimated from the tiles themselves."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import estimate_calibration
from imaxt_pipeline.algorithms.calibration._flatfield import estimate_dark, estimate_tile_model
from imaxt_pipeline.algorithms.optics import Calibration, Trim, apply_flat, confidence_map

TILE = 256
DARK = 100.0


def _tiles(seed, n=24, size=TILE, dark=DARK, tissue=True):
    """Raw tiles of the additive model ``dark + flat * scene + stray`` with Poisson + read noise.

    The scene is half agarose (50 counts) half tissue (550 counts, textured),
    or all agarose without ``tissue``;
    the flat drops to 0.7 at the corners; stray light ``400 exp(-x / 4)``
    enters at x = 0 (the simulator's instrument, on random scenes).
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size), dtype=float)
    c = (size - 1) / 2
    flat = 1.0 - 0.3 * (((yy - c) / c) ** 2 + ((xx - c) / c) ** 2) / 2
    stray = 400.0 * np.exp(-xx / 4.0)
    out = []
    for _ in range(n):
        field = ndi.gaussian_filter(rng.normal(size=(size, size)), 12, mode="wrap")
        tex = ndi.gaussian_filter(rng.normal(size=(size, size)), 3)
        tex = np.clip(tex / tex.std(), -2, 2)
        scene = np.where(tissue & (field > np.median(field)), 550.0 * (1 + 0.2 * tex), 50.0 * (1 + 0.04 * tex))
        out.append(rng.poisson(flat * scene + stray) + dark + rng.normal(0, 5, (size, size)))
    return np.array(out), flat, stray


def test_tile_model_recovers_dark_flat_stray():
    raw, flat, stray = _tiles(1)
    m = estimate_tile_model(raw)
    assert m.dark_source == "two-level fit"
    # spread of the two-level fit over seeds 0-5 with 24 tiles: 96-101
    assert m.dark == pytest.approx(DARK, abs=6)
    assert m.flat[8, 8] / m.flat[128, 128] == pytest.approx(flat[8, 8] / flat[128, 128], abs=0.06)
    x = m.trim.left
    assert x >= 3 and x == max(m.trim.as_dict().values())
    assert np.median(m.stray[:, x]) == pytest.approx(stray[0, x], rel=0.35)
    assert np.abs(m.stray[:, 3 * TILE // 4 :]).max() < 10  # little at the far side (agarose: 50)


def test_shared_flat_across_channels():
    raw, flat, _ = _tiles(2)
    dim = DARK + (raw - DARK) * 0.4  # a weaker channel seeing the same optics
    cal = estimate_calibration(np.stack([raw, dim]))
    np.testing.assert_array_equal(cal.flat[0], cal.flat[1])
    assert cal.source["dark"] == "estimated"
    assert np.all(np.abs(cal.dark - DARK) < 15)
    sy, sx = cal.trim.valid((TILE, TILE))
    rel = cal.flat[0][sy, sx] / flat[sy, sx]
    assert np.std(rel / rel.mean()) < 0.05


def test_one_scene_level_cannot_separate_dark_from_flat():
    raw, flat, stray = _tiles(0, n=12, tissue=False)  # pure agarose: one scene level
    m = estimate_tile_model(raw)
    assert m.dark_source == "low-percentile" and m.dark > DARK  # an upper bound, reported as such
    np.testing.assert_allclose(m.flat, 1.0)  # left uniform rather than shaped by the dark error
    m = estimate_tile_model(raw, dark=DARK)  # with the dark known, agarose alone gives the flat
    assert m.flat[8, 8] / m.flat[128, 128] == pytest.approx(flat[8, 8] / flat[128, 128], abs=0.03)


def test_estimate_dark_close_to_offset():
    rng = np.random.default_rng(0)
    tiles = 100.0 + rng.normal(0, 3, (4, 64, 64))
    tiles[:, :, 32:] += rng.uniform(50, 500, (4, 64, 32))  # half empty, half signal
    assert estimate_dark(tiles) == pytest.approx(100.0, abs=3.0)


def test_trim_and_confidence():
    raw, _, _ = _tiles(3, n=16)
    raw = np.rot90(raw, k=-1, axes=(1, 2))  # the stray light now enters at the top rows
    trim = estimate_tile_model(raw).trim
    assert trim.top >= 3 and trim.top == max(trim.as_dict().values())
    conf = confidence_map((100, 100), trim=Trim(top=trim.top))
    assert conf[: trim.top].max() == 0 and conf[trim.top :].min() == 1
    feathered = confidence_map((100, 100), trim=Trim(left=5), feather=10)
    assert feathered[50, 4] == 0 and 0 < feathered[50, 8] < 1 and feathered[50, 50] == 1


def test_input_validation():
    with pytest.raises(ValueError, match="too small"):
        estimate_tile_model(np.ones((2, 8, 8)))
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        estimate_tile_model(np.ones((8, 8)))
    np.testing.assert_allclose(apply_flat(np.full((4, 4), 110.0), np.full((4, 4), 2.0), dark=10.0), 50.0)
    cal = Calibration.identity(2)
    assert cal.apply(np.ones((2, 3, 4, 4))).shape == (2, 3, 4, 4)
