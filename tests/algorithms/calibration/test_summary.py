"""Tile statistics: what the estimators need of a tile, reduced where it is read, equal to the direct reductions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.calibration import TileStats, estimate_calibration, summarise, summarise_tile
from imaxt_pipeline.algorithms.calibration._flatfield import estimate_tile_model
from imaxt_pipeline.algorithms.calibration._summary import block_noise, low_percentile


def _scene(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Raw tiles: agarose (40) and textured tissue (400), Poisson noise, dark 120, one darker tile."""
    field = ndi.gaussian_filter(rng.standard_normal((n, size, size)), (0, 10, 10))
    tex = ndi.gaussian_filter(rng.standard_normal((n, size, size)), (0, 2, 2))
    scene = np.where(field > 0, 400.0 * (1 + 0.5 * tex), 40.0)
    scene[0] *= 0.3  # a tile much darker than the rest: its low tail must count in full
    return (rng.poisson(np.maximum(scene, 0)) + 120 + rng.normal(0, 4, scene.shape)).astype(np.uint16)


def test_low_percentile_matches_full_resolution_smoothing() -> None:
    rng = np.random.default_rng(0)
    tiles = _scene(rng, 6, 256)
    # the darkest-pixel bound as it was computed on the stacked tiles: Gaussian of 2 px, pooled percentile
    for q in (0.5, 2.0, 10.0):
        direct = np.percentile(np.stack([ndi.gaussian_filter(t.astype(np.float32), 2.0) for t in tiles]), q)
        assert low_percentile(summarise(tiles), q) == pytest.approx(direct, abs=0.6), q


def test_block_noise_equals_median_absolute_deviation() -> None:
    rng = np.random.default_rng(1)
    tile = (rng.poisson(rng.uniform(20, 500, (1, 1)) + np.zeros((96, 80))) + rng.normal(0, 3, (96, 80))).astype(float)
    means, var = block_noise(tile, 16)
    t = tile[:96, :80]
    lap = np.pad(t[1:-1, 1:-1] - 0.25 * (t[:-2, 1:-1] + t[2:, 1:-1] + t[1:-1, :-2] + t[1:-1, 2:]), 1, mode="edge")
    blocks = lap.reshape(6, 16, 5, 16).transpose(0, 2, 1, 3).reshape(-1, 256)
    mad = np.median(np.abs(blocks - np.median(blocks, axis=1, keepdims=True)), axis=1)
    np.testing.assert_allclose(var, (1.4826 * mad) ** 2 / 1.25, rtol=1e-4)
    np.testing.assert_allclose(means, t.reshape(6, 16, 5, 16).mean(axis=(1, 3)).ravel(), rtol=1e-6)


def test_statistics_of_tiles_gather_and_resample() -> None:
    rng = np.random.default_rng(2)
    raw = _scene(rng, 4, 128)
    two = np.stack([raw, raw // 2])  # (C, T, H, W)
    per_tile = [summarise_tile(two[:, i], block=8, noise=i == 0) for i in range(4)]
    ch1 = TileStats.concat([p[1] for p in per_tile])
    direct = summarise(two[1], block=8, noise_every=4)
    for key in ("blocks", "rows", "cols", "low", "noise_means", "noise_vars"):
        np.testing.assert_array_equal(getattr(ch1, key), getattr(direct, key))
    assert ch1.n_tiles == 4 and ch1.noise_means.size == (128 // 16) ** 2
    np.testing.assert_allclose(ch1.rows[2], (raw[2] // 2).reshape(16, 8, 128).mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(ch1.blocks[2], (raw[2] // 2).reshape(16, 8, 16, 8).mean(axis=(1, 3)))
    np.testing.assert_allclose(ch1.cols[3], (raw[3] // 2).reshape(128, 16, 8).mean(axis=2).T, rtol=1e-6)
    again = ch1.take([3, 3, 0])
    assert again.n_tiles == 3 and np.array_equal(again.blocks[0], ch1.blocks[3])
    with pytest.raises(ValueError, match="different tile shapes"):
        TileStats.concat([summarise(raw, block=8), summarise(raw[:, :64], block=8)])


def test_statistics_are_small_and_estimate_the_same() -> None:
    rng = np.random.default_rng(3)
    tile = _scene(rng, 1, 1024)[0]
    stats = summarise_tile(tile[None], block=32, noise=True)[0]
    assert stats.nbytes < tile.nbytes / 5  # what a worker sends back: a fraction of the raw uint16 tile
    tiles = _scene(rng, 8, 256)
    direct = estimate_tile_model(summarise(tiles))
    cal = estimate_calibration(tiles[None])  # raw tiles in memory: the same estimate, through the statistics
    assert cal.dark[0] == direct.dark and np.array_equal(cal.flat[0], direct.flat)
    with pytest.raises(ValueError, match="differs"):
        estimate_tile_model(summarise(tiles), block=4)
