"""Seams of the mosaic: the calibration estimated from the tiles halves the overlap intensity mismatch.

The simulator's tiles (no calibration given) are corrected three ways: raw
(the true dark only), the calibration estimated from the same 9 tiles, and
the true calibration (``truth.dark``, ``truth.stray``, ``truth.flat``). Each
is scored by :func:`overlap_mismatch` at the TRUE sub-pixel positions
through the TRUE distortion, so what remains is intensity, not texture
misregistration: with the true calibration the seams agree to the shot
noise (under 1 %).

Each mosaic is scored over the pixels it fuses: the raw one over the whole
overlap, stray-light columns at x = 0 included (a stripe at every seam), the
calibrated one over its confidence map (trimmed border out). On the same
pixels for both, the estimated calibration still improves every seam but
halves the mismatch only in some samples: from 9 tiles of one slice the flat
is 1.5-2.5 % off near the borders, the scene's own low-frequency variation.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.calibration import estimate_calibration, overlap_mismatch
from imaxt_pipeline.algorithms.optics import DistortionModel, displacement_field
from imaxt_pipeline.testing._grids import one_slice_grid

CASES = {
    "seed0": dict(seed=0),
    "seed1": dict(seed=1),
    "seed2": dict(seed=2),
    "empty": dict(seed=3, empty_fraction=0.4),
    "demo-tiles": dict(seed=0, tile_shape=(512, 512)),
}


@pytest.fixture(scope="module", params=list(CASES))
def sample(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    p, truth, tiles, _, true = one_slice_grid(root, **CASES[request.param])
    t0 = time.perf_counter()
    cal = estimate_calibration(tiles, max_trim_px=int(p.overlap * p.tile_shape[1] / 4))
    seconds = time.perf_counter() - t0
    return request.param, p, truth, tiles, true, cal, seconds


def test_estimated_calibration_halves_seam_mismatch(sample):
    name, p, truth, tiles, true, cal, seconds = sample
    raw = tiles.astype(np.float32) - truth.dark
    conf = cal.confidence(p.tile_shape)

    def mismatch(img, weights=None):
        return overlap_mismatch(img, true, distortion=truth.distortion, weights=weights)

    before, after = mismatch(raw), mismatch(cal.apply(tiles), conf)
    ideal = mismatch((raw - truth.stray) / truth.flat)
    same = mismatch(raw, conf)  # raw on the pixels the calibrated mosaic keeps
    print(
        f"\n{name}: mismatch raw {before:.4f} (trimmed pixels {same:.4f}) estimated {after:.4f} "
        f"true {ideal:.4f}; dark {np.round(cal.dark, 1)} (truth {truth.dark}); estimate {seconds:.2f} s"
    )
    assert ideal < 0.01  # the measure sees intensity only: true calibration, seams agree
    assert ideal <= 0.5 * before
    assert after <= 0.5 * before, (before, after)
    assert after < same


def test_dark_and_flat_near_the_seams(sample):
    name, p, truth, tiles, true, cal, seconds = sample
    assert cal.source["dark"] == "estimated"
    # 16 ADU off at worst (seed 2) since the simulator draws each section's tissue texture afresh (it was <= 10
    # on the old shared texture): the low-percentile estimate depends on the scene; see issue 14's dark check.
    assert np.all(np.abs(cal.dark - truth.dark) <= 20), cal.dark
    # flat shape (relative to the truth) in the overlap bands, where seams are made
    h, w = p.tile_shape
    band = np.zeros((h, w), bool)
    ov = int(p.overlap * w)
    band[:ov] = band[-ov:] = True
    band[:, :ov] = band[:, -ov:] = True
    for flat in cal.flat:
        rel = flat / truth.flat
        rel = rel / rel[band].mean()
        assert np.sqrt(np.mean((rel[band] - 1) ** 2)) < 0.03, name


def _two_tiles(gain_b=1.0):
    """Two 128² tiles of one smooth textured scene at sub-pixel positions, seen through a distortion."""
    rng = np.random.default_rng(0)
    scene = 200 + 50 * ndi.gaussian_filter(rng.normal(size=(200, 260)), 4) / 0.07
    model = DistortionModel(k_y=0.004, k_x=0.005)
    pos = np.array([[20.3, 10.6], [24.8, 117.2]])
    dy, dx = displacement_field((128, 128), model)
    yy, xx = np.indices((128, 128), dtype=float)
    tiles = np.stack([ndi.map_coordinates(scene, [yy + dy + py, xx + dx + px], order=3) for py, px in pos])
    tiles[1] *= gain_b
    return tiles, pos, model


def test_mismatch_measures_intensity_not_texture():
    tiles, pos, model = _two_tiles()
    assert overlap_mismatch(tiles, pos, distortion=model) < 0.002
    # ignoring the distortion (2 px at the seams) misregisters the texture: the smoothing does not hide it all
    assert overlap_mismatch(tiles, pos) > 3 * overlap_mismatch(tiles, pos, distortion=model)
    # tile b 10 % brighter: 2 * 0.1 / 2.1
    brighter, _, _ = _two_tiles(1.1)
    assert overlap_mismatch(brighter, pos, distortion=model) == pytest.approx(0.2 / 2.1, abs=0.003)


def test_mismatch_input_validation():
    tiles, pos, model = _two_tiles()
    with pytest.raises(ValueError, match="do not match"):
        overlap_mismatch(tiles, pos[:1])
    with pytest.raises(ValueError, match="do not match"):
        overlap_mismatch(tiles, pos, weights=np.ones((4, 4)))
    with pytest.raises(ValueError, match="two tiles"):
        overlap_mismatch(tiles, pos + [[0, -200], [0, 200]])
