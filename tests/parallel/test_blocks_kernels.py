"""The cube's plane shift (dask-image) equals the numpy slice shift; fast fusion kernels equal scipy's."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.fusion._fuse import _add_bilinear, _detector_grid
from imaxt_pipeline.algorithms.optics import DistortionModel, detector_coordinates
from imaxt_pipeline.algorithms.registration import apply_offset
from imaxt_pipeline.io.ome import create_image
from imaxt_pipeline.io.urls import Location
from imaxt_pipeline.parallel.registration import aligned_plane, write_blocks


@pytest.mark.parametrize(
    ("offset", "order", "atol"),
    # order 1 is scipy's shift to the float32 ulp; order 3 differs by the chunked prefilter's rounding only
    [((2.3, -4.7), 1, 1e-6), ((-3.0, 1.0), 1, 0.0), ((0.0, 0.0), 3, 1e-12), ((5.61, 3.2), 3, 1e-6)],
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
    assert moved.chunks == ((1, 1), (32, 32, 22), (32, 32, 32, 10))
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


def test_bilinear_kernel_equals_map_coordinates():
    rng = np.random.default_rng(0)
    tile, base = rng.random((3, 60, 50), dtype=np.float32), rng.random((60, 50), dtype=np.float32)
    dy, dx = np.meshgrid(np.linspace(-3, 63, 70), np.linspace(-2.5, 52.7, 65), indexing="ij")
    dy, dx = dy + rng.normal(0, 0.3, dy.shape), dx + rng.normal(0, 0.3, dx.shape)
    acc, wsum = np.zeros((3, *dy.shape)), np.zeros(dy.shape)
    _add_bilinear(acc, wsum, tile, base, dy, dx)
    wt = ndi.map_coordinates(base, [dy, dx], order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(wsum, wt, atol=1e-5)
    for c in range(3):
        ref = wt * ndi.map_coordinates(tile[c], [dy, dx], order=1, mode="nearest")
        np.testing.assert_allclose(acc[c], ref, atol=1e-5)
    assert (wsum == 0).any() and (wsum > 0).any()


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
