"""The cube's plane shift, block by block, equals the whole-plane shift; fast fusion kernels equal scipy's."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.fusion._fuse import _add_bilinear, _detector_grid, _DetectorGrid
from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel, detector_coordinates
from imaxt_pipeline.algorithms.registration import apply_offset
from imaxt_pipeline.io.ome import create_image
from imaxt_pipeline.io.urls import Location
from imaxt_pipeline.parallel.registration import aligned_plane, write_blocks


@pytest.mark.parametrize(
    ("offset", "order", "atol"),
    # order 1 is apply_offset's own kernel, bit for bit; order 3 differs by the chunked prefilter's rounding only
    [((2.3, -4.7), 1, 0.0), ((-3.0, 1.0), 1, 0.0), ((0.0, 0.0), 3, 1e-12), ((5.61, 3.2), 3, 1e-6)],
)
def test_aligned_plane_written_block_by_block_equals_apply_offset(tmp_path, offset, order, atol):
    rng = np.random.default_rng(1)
    plane = rng.random((2, 70, 90)).astype(np.float32)
    pad, out_shape = np.array([8, 8]), (86, 106)
    loc = Location(str(tmp_path / "o.zarr"))
    kw = {"scale_zyx_um": (1, 1, 1), "channel_names": ["a", "b"], "dtype": "float32", "chunks_yx": (16, 16)}
    mosaic = create_image(loc, "mosaic", shape_czyx=(2, 1, 70, 90), levels=1, **kw)
    mosaic.write_plane(0, plane)
    cube = create_image(loc, "cube", shape_czyx=(2, 1, *out_shape), levels=2, **kw)
    moved = aligned_plane(mosaic, 0, np.array(offset), pad_before=pad, out_shape=out_shape, block=32, order=order)
    assert moved.chunks == ((2,), (32, 32, 22), (32, 32, 32, 10))
    tasks = write_blocks(cube, 0, moved, levels=2)
    assert len(tasks) == 12
    dask.compute(*tasks, scheduler="threads")
    want = apply_offset(plane, np.array(offset), pad_before=pad, out_shape=out_shape, order=order)
    got = cube.read_plane(0)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    assert np.abs(got).max() > 0.5  # the content landed on the canvas
    if np.all(np.equal(offset, np.round(offset))):  # an integral shift copies the mosaic bit for bit
        dy, dx = (pad - np.asarray(offset)).astype(int)
        np.testing.assert_array_equal(got[:, dy : dy + 70, dx : dx + 90], plane)
    assert cube.read_plane(0, level=1).shape == (2, 43, 53)


@pytest.mark.parametrize("seed", range(3))
def test_bilinear_kernel_equals_map_coordinates(seed):
    # a distorted grid overhanging the detector on every side, added at an offset of larger buffers
    rng = np.random.default_rng(seed)
    shape = (60, 50)
    tile, base = rng.random((3, *shape), dtype=np.float32) * 1000, rng.random(shape, dtype=np.float32)
    model = DistortionModel(k_y=rng.uniform(-0.02, 0.02), k_x=rng.uniform(-0.02, 0.02), mag_y=rng.uniform(-0.01, 0.01))
    rows, cols = np.linspace(-3, 63, 70) + rng.uniform(0, 1), np.linspace(-2.5, 52.7, 65) + rng.uniform(0, 1)
    grid = _DetectorGrid(rows, cols, shape, model, step=4)
    dy, dx = grid.rows(0, rows.size)
    assert grid.window() == (slice(0, 60), slice(0, 50))  # the grid overhangs: the whole detector
    acc, wsum = np.zeros((3, 75, 80), np.float32), np.zeros((75, 80), np.float32)
    _add_bilinear(acc, wsum, (3, 11), tile, base, grid)
    inner = (slice(3, 73), slice(11, 76))
    wt = ndi.map_coordinates(base, [dy, dx], order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(wsum[inner], wt, atol=1e-5)
    for c in range(3):
        ref = wt * ndi.map_coordinates(tile[c], [dy, dx], order=1, mode="nearest")
        np.testing.assert_allclose(acc[c][inner], ref, rtol=1e-5, atol=1e-3)
    outside = np.ones(wsum.shape, bool)
    outside[inner] = False
    assert not wsum[outside].any() and not acc[:, outside].any()  # nothing lands off the grid
    assert (wsum[inner] == 0).any() and (wsum[inner] > 0).any()
    # a grid over the middle of the detector samples only a window of it: raw taps corrected there
    inner_grid = _DetectorGrid(rows[20:40] * 0.5 + 12, cols[10:30] * 0.5 + 9, shape, model, step=4)
    window = inner_grid.window()
    assert window is not None and window[0].stop - window[0].start < 30 and window[1].stop - window[1].start < 30
    raw = rng.integers(100, 4000, (3, *shape)).astype(np.uint16)
    cal = Calibration(
        dark=rng.uniform(0, 90, 3),
        flat=(0.6 + 0.8 * rng.random((3, *shape))).astype(np.float32),
        stray=(rng.random((3, *shape)) * 20).astype(np.float32),
    )
    dy, dx = inner_grid.rows(0, 20)
    acc, wsum = np.zeros((3, 20, 20), np.float32), np.zeros((20, 20), np.float32)
    _add_bilinear(acc, wsum, (0, 0), raw, base, inner_grid, cal)
    corrected = cal.apply(raw)
    wt = ndi.map_coordinates(base, [dy, dx], order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(wsum, wt, atol=1e-5)
    for c in range(3):
        ref = wt * ndi.map_coordinates(corrected[c], [dy, dx], order=1)
        np.testing.assert_allclose(acc[c], ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("seed", range(3))
def test_interpolated_inverse_distortion_is_within_3e3_px(seed):
    rng = np.random.default_rng(seed)
    # up to ~12 px at the corners of a 2048 px tile, as on the instrument
    model = DistortionModel(
        mag_y=rng.uniform(-2e-3, 2e-3),
        mag_x=rng.uniform(-2e-3, 2e-3),
        k_y=rng.uniform(-6e-3, 6e-3),
        k_x=rng.uniform(-6e-3, 6e-3),
    )
    rows, cols = np.arange(1400, 2048) - rng.uniform(0, 5), np.arange(0, 700) + rng.uniform(0, 5)  # a corner
    got = _detector_grid(rows, cols, (2048, 2048), model)
    want = detector_coordinates(*np.meshgrid(rows, cols, indexing="ij"), (2048, 2048), model)
    assert max(np.abs(g - w).max() for g, w in zip(got, want, strict=True)) < 3e-3
