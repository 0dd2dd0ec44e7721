"""The cube's block tasks: each block read from its own mosaic window equals scipy's whole-plane shift, bit for bit.

Planes, canvases, offsets and block edges are drawn over several seeds (blocks that do not
divide the canvas, windows leaving the plane on every side, integral, a hair off integral and
sub-pixel shifts);
empty blocks write no chunk, and a rewritten plane leaves no stale chunk behind.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest

from imaxt_pipeline.algorithms.registration import apply_offset
from imaxt_pipeline.io.ome import create_image
from imaxt_pipeline.io.urls import Location
from imaxt_pipeline.parallel.registration import aligned_plane, write_blocks
from imaxt_pipeline.parallel.registration._cube import shift_block

KW = {"scale_zyx_um": (1, 1, 1), "dtype": "float32", "chunks_yx": (16, 16)}


def _mosaic(tmp_path: Path, plane: np.ndarray):
    c, h, w = plane.shape
    mosaic = create_image(Location(str(tmp_path / "m.zarr")), "mosaic", shape_czyx=(c, 1, h, w), levels=1,
                          channel_names=[str(i) for i in range(c)], **KW)  # fmt: skip
    mosaic.write_plane(0, plane)
    return mosaic


@pytest.mark.parametrize("seed", range(4))
def test_every_block_equals_the_whole_plane_shift(tmp_path, seed):
    rng = np.random.default_rng(seed)
    c, h, w = 3, int(rng.integers(50, 90)), int(rng.integers(50, 90))
    plane = (rng.random((c, h, w)) * rng.uniform(1, 5000)).astype(np.float32)
    mosaic = _mosaic(tmp_path, plane)
    pad = rng.integers(0, 15, 2)
    out_shape = (h + int(pad[0]) + int(rng.integers(0, 15)), w + int(pad[1]) + int(rng.integers(0, 15)))
    block = int(rng.choice([16, 24, 40]))
    integral = np.round(rng.uniform(-9, 9, 2))
    cases = [(rng.uniform(-9, 9, 2), 1), (integral, 1), (integral + rng.choice([-1e-10, 1e-10], 2), 1)]
    for offset, order in [*cases, (rng.uniform(-5, 5, 2), 0)]:
        want = apply_offset(plane, offset, pad_before=pad, out_shape=out_shape, order=order)
        src = tuple((offset - pad).tolist())
        for y0 in range(0, out_shape[0], block):
            for x0 in range(0, out_shape[1], block):
                region = (y0, min(y0 + block, out_shape[0]), x0, min(x0 + block, out_shape[1]))
                got = shift_block(mosaic, 0, region, src, order)
                assert got.dtype == np.float32 and got.shape == (c, region[1] - y0, region[3] - x0)
                np.testing.assert_array_equal(got, want[:, y0 : region[1], x0 : region[3]])
        assert np.abs(want).max() > 0.5  # the content landed on the canvas


def test_cubic_block_equals_the_whole_plane_shift_to_float32_rounding(tmp_path):
    rng = np.random.default_rng(7)
    plane = rng.random((2, 75, 61)).astype(np.float32)
    mosaic = _mosaic(tmp_path, plane)
    pad, out_shape, offset = np.array([6, 9]), (90, 80), np.array([3.37, -5.81])
    want = apply_offset(plane, offset, pad_before=pad, out_shape=out_shape, order=3)
    got = aligned_plane(mosaic, 0, offset, pad_before=pad, out_shape=out_shape, block=32, order=3)
    np.testing.assert_allclose(got.compute(scheduler="sync"), want, rtol=0, atol=1e-6)


def test_one_task_computes_every_channel_of_a_block(tmp_path):
    plane = np.random.default_rng(3).random((4, 40, 40)).astype(np.float32)
    moved = aligned_plane(_mosaic(tmp_path, plane), 0, np.array([0.4, 0.3]), pad_before=np.array([4, 4]),
                          out_shape=(48, 48), block=16)  # fmt: skip
    graph = dict(moved.__dask_graph__())
    shifts = [k for k in graph if str(k).startswith("shift_block")]
    assert len(shifts) == 9  # 3 x 3 blocks, not 4 channels x 9 (nor mosaic pieces shared between tasks)
    assert moved.chunks[0] == (4,)  # one chunk per block: written as it is, no channel pieces to gather
    assert not [k for k in graph if str(k).startswith(("getitem", "rechunk"))]  # no per-channel pieces


def test_empty_blocks_write_nothing_and_a_rewrite_leaves_no_stale_chunk(tmp_path):
    plane = np.zeros((2, 64, 64), np.float32)
    plane[:, 50:, 50:] = 1.0  # data only in the last block of 32 px, in one of its chunks
    mosaic = _mosaic(tmp_path, plane)
    cube = create_image(Location(str(tmp_path / "c.zarr")), "cube", shape_czyx=(2, 1, 64, 64), levels=2,
                        channel_names=["a", "b"], **KW)  # fmt: skip
    root = tmp_path / "c.zarr" / "cube" / "0" / "c"

    def chunk_files() -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    def write(offset: np.ndarray) -> None:
        moved = aligned_plane(mosaic, 0, offset, pad_before=np.zeros(2), out_shape=(64, 64), block=32)
        dask.compute(*write_blocks(cube, 0, moved, levels=2), scheduler="sync")

    write(np.zeros(2))
    files = chunk_files()
    # level 0: only the 2 channels x 4 chunks of the block holding data (its zero chunks included)
    assert len(files) == 8 and all(f.split("/")[2:] in (["2", "2"], ["2", "3"], ["3", "2"], ["3", "3"]) for f in files)
    np.testing.assert_array_equal(cube.read_plane(0), plane)
    write(np.array([40.0, 40.0]))  # everything moved off the canvas but the corner: old chunks must go
    want = apply_offset(plane, np.array([40.0, 40.0]), pad_before=np.zeros(2), out_shape=(64, 64))
    np.testing.assert_array_equal(cube.read_plane(0), want)
    assert len(chunk_files()) == 8 and all(set(f.split("/")[2:]) <= {"0", "1"} for f in chunk_files())
