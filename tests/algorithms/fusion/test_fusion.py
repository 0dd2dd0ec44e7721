"""Fusion: weighted blending, distortion-aware placement, block-wise Dask fusion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.fusion import downsample_mean, fuse_region, tiles_touching
from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel, Trim, displacement_field
from imaxt_pipeline.parallel.fusion import block_regions, fuse_blocks


def _scene(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.uniform(0, 1000, shape), 3.0) + 100.0


def _tiles(scene, positions, tile, model=None):
    """Detector tiles of ``scene`` at float top-left ``positions`` through ``model`` (default: none)."""
    dy, dx = displacement_field((tile, tile), model or DistortionModel())
    gy, gx = np.indices((tile, tile), dtype=float)
    return [ndi.map_coordinates(scene, [p[0] + gy + dy, p[1] + gx + dx], order=3)[None] for p in positions]


def test_fusion_recovers_scene_through_distortion():
    scene = _scene((200, 200))
    model = DistortionModel(k_y=0.006, k_x=0.006)
    positions = np.array([[10.3, 12.7], [10.9, 80.2], [70.4, 11.5], [71.1, 79.8]])
    tiles = _tiles(scene, positions, 96, model)
    region = (30, 150, 30, 150)
    fused = fuse_region(tiles, positions, region, distortion=model, order=3)
    naive = fuse_region(tiles, positions, region, order=3)
    truth = scene[30:150, 30:150]
    covered = fused.weight > 0
    err = np.abs(fused.image[0] - truth)[covered]
    err_naive = np.abs(naive.image[0] - truth)[naive.weight > 0]
    assert covered.mean() > 0.95
    assert np.median(err) < 2.0
    assert np.median(err_naive) > 3 * np.median(err)


def test_weights_zero_excluded_and_mean_in_overlap():
    a = np.full((1, 20, 20), 10.0, np.float32)
    b = np.full((1, 20, 20), 30.0, np.float32)
    w = np.ones((20, 20), np.float32)
    w[:, :5] = 0  # trimmed left border: b's left columns must not contribute
    out = fuse_region([a, b], np.array([[0.0, 0.0], [0.0, 10.0]]), (0, 20, 0, 30), weights=w)
    assert np.allclose(out.image[0, :, 10:15], 10.0)  # b trimmed there
    assert np.allclose(out.image[0, :, 15:20], 20.0)  # both, equal weight
    assert np.allclose(out.image[0, :, 20:30], 30.0)
    assert out.weight[:, 15:20].min() == pytest.approx(2.0)
    assert out.weight[:, :5].max() == 0.0  # a's own trim


def test_tiles_touching_selects_only_neighbours():
    pos = np.array([[r * 90.0, c * 90.0] for r in range(4) for c in range(4)])
    idx = tiles_touching(pos, (100, 100), (0, 50, 0, 50))
    assert idx == [0]
    idx = tiles_touching(pos, (100, 100), (105, 106, 105, 106))
    assert sorted(idx) == [5]
    assert sorted(tiles_touching(pos, (100, 100), (92, 93, 92, 93))) == [0, 1, 4, 5]


def test_downsample_mean_odd():
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    d = downsample_mean(x)
    assert d.shape == (2, 3)
    assert d[0, 0] == pytest.approx(x[:2, :2].mean())


def test_block_regions_cover_canvas_once():
    regions = block_regions((300, 170), 128)
    cover = np.zeros((300, 170), int)
    for y0, y1, x0, x1 in regions:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    with pytest.raises(ValueError, match="block"):
        block_regions((10, 10), 0)


def test_blockwise_dask_fusion_equals_numpy(dask_client, tmp_path):
    import zarr

    scene = _scene((260, 260), seed=3)
    positions = np.array([[r * 85.0 + 5.5, c * 85.0 + 4.25] for r in range(3) for c in range(3)])
    tiles = np.stack([t for t in _tiles(scene, positions, 96)], axis=1) * 2.0 + 50.0  # (C, T, H, W), flat 2, dark 50
    np.save(tmp_path / "tiles.npy", tiles)
    cal = Calibration(dark=np.array([50.0]), flat=np.full((1, 96, 96), 2.0, np.float32), trim=Trim(left=3))
    canvas = (270, 270)
    store = zarr.open_group(str(tmp_path / "out.zarr"), mode="w")
    for level in range(2):
        store.create_array(
            f"img{level}",
            shape=(1, -(-270 // 2**level), -(-270 // 2**level)),
            chunks=(1, 32, 32),
            dtype="float32",
            fill_value=0,
        )
        store.create_array(
            f"w{level}", shape=(-(-270 // 2**level),) * 2, chunks=(32, 32), dtype="float32", fill_value=0
        )
    from functools import partial

    lazy = fuse_blocks(
        partial(_read, str(tmp_path / "tiles.npy")),
        partial(_write, str(tmp_path / "out.zarr")),
        positions,
        (96, 96),
        canvas,
        cal,
        chunk=32,
        levels=2,
    )
    assert len(lazy) == len(block_regions(canvas, 64))
    dask_client.gather(dask_client.compute(lazy))
    ref = fuse_region(
        [cal.apply(tiles[:, i]) for i in range(9)], positions, (0, 270, 0, 270), weights=cal.confidence((96, 96))
    )
    got = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_allclose(got["img0"][...], ref.image, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got["w0"][...], ref.weight, rtol=1e-6)
    np.testing.assert_allclose(got["img1"][...], downsample_mean(ref.image), rtol=1e-4, atol=1e-2)
    inside = ref.weight > 0
    assert np.median(np.abs(ref.image[0][:260, :260] - scene[:260, :260])[inside[:260, :260]]) < 1.0


def _read(path, i):
    return np.load(path, mmap_mode="r")[:, i]


def _write(path, level, region, image, weight):
    import zarr

    g = zarr.open_group(path, mode="r+")
    y0, y1, x0, x1 = region
    g[f"img{level}"][:, y0:y1, x0:x1] = image
    g[f"w{level}"][y0:y1, x0:x1] = weight


@pytest.mark.parametrize("seed", range(3))
def test_raw_tiles_with_calibration_equal_calibrated_tiles(seed):
    # each region corrects only the part of a tile it samples: the same pixels as correcting it all
    rng = np.random.default_rng(seed)
    model = DistortionModel(k_y=rng.uniform(-8e-3, 8e-3), k_x=rng.uniform(-8e-3, 8e-3), mag_x=rng.uniform(-2e-3, 2e-3))
    positions = np.array([[r * 85.0, c * 85.0] for r in range(2) for c in range(2)]) + rng.uniform(0, 4, (4, 2))
    raw = [rng.integers(100, 3000, (2, 96, 96)).astype(np.uint16) for _ in range(4)]
    cal = Calibration(
        dark=np.array([80.0, 95.0]), flat=rng.uniform(0.6, 1.2, (2, 96, 96)).astype(np.float32), trim=Trim(left=2)
    )
    weights = cal.confidence((96, 96))
    for _ in range(4):
        y0, x0 = (int(v) for v in rng.integers(0, 150, 2))
        region = (y0, y0 + int(rng.integers(5, 60)), x0, x0 + int(rng.integers(5, 60)))
        got = fuse_region(raw, positions, region, weights=weights, distortion=model, calibration=cal)
        want = fuse_region([cal.apply(t) for t in raw], positions, region, weights=weights, distortion=model)
        np.testing.assert_allclose(got.image, want.image, rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(got.weight, want.weight)
