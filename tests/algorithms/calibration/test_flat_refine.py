"""Flat refinement from the tile overlaps (:mod:`imaxt_pipeline.algorithms.flat_refine`).

The simulator's tiles (no calibration given) are calibrated from tile
statistics (:func:`estimate_calibration`), whose flat is 1.5-2.5 % off near
the borders, then the flat is refined from the overlaps of the 3 x 3 tiles,
at the TRUE positions and distortion, and at those solved from the tiles
(as in ``tests/test_stitch_synth.py``). Seams are scored by
:func:`overlap_mismatch` at the true positions (so what remains is
intensity, not texture misregistration) on the same pixels for raw and for
each calibration: those of the calibration's confidence map.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.polynomial import legendre
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.calibration import estimate_calibration, flat_change, overlap_mismatch, refine_flat
from imaxt_pipeline.algorithms.optics import DistortionModel, displacement_field
from imaxt_pipeline.algorithms.stitching import adjacent_pairs, solve_positions
from imaxt_pipeline.parallel.stitching import match_tiles
from imaxt_pipeline.testing import band_error as _band_error
from imaxt_pipeline.testing import one_slice_grid

CASES = {
    "seed0": {"seed": 0},
    "seed1": {"seed": 1},
    "seed2": {"seed": 2},
    "empty": {"seed": 3, "empty_fraction": 0.4},
    "demo-tiles": {"seed": 0, "tile_shape": (512, 512)},
}
PAIRS = adjacent_pairs(3, 3)


@pytest.fixture(scope="module", params=list(CASES))
def sample(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    p, truth, tiles, stage, true = one_slice_grid(root, **CASES[request.param])
    cal = estimate_calibration(tiles, max_trim_px=int(p.overlap * p.tile_shape[1] / 4))
    ms = [match_tiles(lambda i: tiles[:, i], a, b, tuple(stage[b] - stage[a]), cal) for a, b in PAIRS]
    sol = solve_positions(ms, stage, tile_shape=p.tile_shape, fit_magnification=False)
    return request.param, p, truth, tiles, true, cal, sol


@pytest.mark.parametrize("frame", ["true", "solved"])
def test_refined_flat_halves_seam_mismatch(sample, frame):
    name, p, truth, tiles, true, cal, sol = sample
    pos, dist = (true, truth.distortion) if frame == "true" else (sol.positions, sol.distortion)
    conf = cal.confidence(p.tile_shape)
    corrected = cal.apply(tiles)
    gain = refine_flat(corrected, pos, PAIRS, distortion=dist, confidence=conf)
    assert gain.shape == p.tile_shape and gain.mean() == pytest.approx(1.0)

    def mismatch(img, at=true, model=truth.distortion):
        return overlap_mismatch(img, at, distortion=model, weights=conf)

    raw = tiles.astype(np.float32) - truth.dark
    same, before, after = mismatch(raw), mismatch(corrected), mismatch(corrected / gain)
    err0, err1 = (_band_error(f, truth.flat, p) for f in (cal.flat[0], cal.flat[0] * gain))
    print(
        f"\n{name} ({frame} positions): mismatch / raw on the same pixels {before / same:.3f} -> "
        f"{after / same:.3f}; flat error in the seam bands {err0:.4f} -> {err1:.4f}"
    )
    assert after <= 0.5 * same, (before / same, after / same)
    assert after < before
    assert err1 < 0.5 * err0, (err0, err1)
    if frame == "solved":  # scored where the pipeline would put the tiles, it still halves
        assert mismatch(corrected / gain, pos, dist) <= 0.5 * mismatch(raw, pos, dist)


def _grid_tiles(gain, *, channels=(1.0,), seed=1):
    """3 x 3 tiles of 128 px (16 px overlaps, sub-pixel jitter) of one smooth textured scene through a distortion."""
    rng = np.random.default_rng(seed)
    h, w = gain.shape
    scene = 200 + 50 * ndi.gaussian_filter(rng.normal(size=(400, 400)), 4) / 0.07
    model = DistortionModel(k_y=0.004, k_x=0.005)
    pos = np.array([[10 + 112 * r, 10 + 112 * c] for r in range(3) for c in range(3)]) + rng.uniform(-3, 3, (9, 2))
    dy, dx = displacement_field((h, w), model)
    yy, xx = np.indices((h, w), dtype=float)
    tiles = np.stack([gain * ndi.map_coordinates(scene, [yy + dy + py, xx + dx + px], order=3) for py, px in pos])
    return np.stack([k * tiles for k in channels]), pos, model


def _known_gain(shape):
    v, u = (np.linspace(-1, 1, n) for n in shape)
    p2v, p2u, p3u = legendre.legval(v, [0, 0, 1]), legendre.legval(u, [0, 0, 1]), legendre.legval(u, [0, 0, 0, 1])
    log_g = (
        0.03 * p2v[:, None]
        + 0.02 * u[None, :]
        + 0.015 * np.outer(v, u)
        - 0.01 * p3u[None, :]
        + 0.01 * np.outer(p2v, p2u)
    )  # up to degree 4, about -3 .. +7 %
    g = np.exp(log_g)
    return g / g.mean()


def test_recovers_known_vignetting():
    truth = _known_gain((128, 128))
    tiles, pos, model = _grid_tiles(truth, channels=(1.0, 3.0))
    gain = refine_flat(tiles, pos, distortion=model)
    rel = gain / truth
    rel /= rel.mean()
    band = np.zeros(truth.shape, bool)
    band[:16] = band[-16:] = True
    band[:, :16] = band[:, -16:] = True
    assert np.sqrt(np.mean((rel[band] - 1) ** 2)) < 0.0015
    assert np.abs(rel - 1).max() < 0.005  # the interior too: the overlaps pin a low-degree surface
    before = overlap_mismatch(tiles, pos, distortion=model)
    assert overlap_mismatch(tiles / gain, pos, distortion=model) < 0.05 * before
    # a callable reading one (C, H, W) tile at a time gives the same answer
    lazy = refine_flat(lambda i: tiles[:, i], pos, distortion=model)
    np.testing.assert_allclose(lazy, gain, rtol=1e-6)


def test_no_vignetting_no_correction():
    tiles, pos, model = _grid_tiles(np.ones((128, 128)))
    gain = refine_flat(tiles, pos, distortion=model)
    assert np.abs(gain - 1).max() < 0.002
    assert flat_change(gain) < 0.002  # a refinement that moves nothing reads as (almost) no change


def test_flat_change_is_the_rms_log_gain():
    truth = _known_gain((128, 128))
    assert flat_change(truth) == pytest.approx(np.sqrt(np.mean(np.log(truth) ** 2)))
    assert flat_change(np.full((4, 4), 1.05)) == pytest.approx(np.log(1.05))
    # a gain and its inverse move the flat equally far
    assert flat_change(1 / truth) == pytest.approx(flat_change(truth))
    for bad in (np.zeros((2, 2)), np.full((2, 2), np.nan), np.ones(0)):
        with pytest.raises(ValueError, match="finite and positive"):
            flat_change(bad)


def test_input_validation():
    tiles, pos, model = _grid_tiles(np.ones((128, 128)))
    with pytest.raises(ValueError, match="do not match"):
        refine_flat(tiles, pos[:4])
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        refine_flat(tiles, pos[:, 0])
    with pytest.raises(ValueError, match="two tiles"):
        refine_flat(tiles, pos * 3)
    dark = tiles.copy()
    dark[:, :, :, :] = 0.0
    with pytest.raises(ValueError, match="median level"):
        refine_flat(dark, pos, distortion=model)
