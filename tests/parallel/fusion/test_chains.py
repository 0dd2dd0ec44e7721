"""Chains of blocks: a task fuses a row's neighbours in turn, reads a shared tile once, equals block by block."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.fusion import tiles_touching
from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel, Trim
from imaxt_pipeline.parallel.fusion import block_chains, block_regions, fuse_block, fuse_block_chain


def _sample(seed, tile=96, grid=3):
    rng = np.random.default_rng(seed)
    pitch = 0.9 * tile
    pos = np.array([[r * pitch, c * pitch] for r in range(grid) for c in range(grid)]) + rng.uniform(0, 3, (grid**2, 2))
    raw = [rng.integers(100, 3000, (2, tile, tile)).astype(np.uint16) for _ in range(grid**2)]
    model = DistortionModel(k_y=rng.uniform(-6e-3, 6e-3), k_x=rng.uniform(-6e-3, 6e-3), mag_y=rng.uniform(-2e-3, 2e-3))
    flat = rng.uniform(0.7, 1.2, (2, tile, tile)).astype(np.float32)
    cal = Calibration(dark=np.array([90.0, 80.0]), flat=flat, trim=Trim(2, 2, 2, 2), distortion=model)
    return pos, raw, cal


def test_block_chains_cover_the_grid_in_block_order():
    chains = block_chains((300, 170), 64, (96, 96), max_chain=2)
    assert [r for chain in chains for r in chain] == block_regions((300, 170), 64)
    assert max(len(c) for c in chains) == 2 and all(len({r[0] for r in c}) == 1 for c in chains)  # along a row
    # tiles narrower than half a block: one block per task (its reads stay one block's)
    assert all(len(c) == 1 for c in block_chains((300, 170), 64, (31, 31)))


@pytest.mark.parametrize("seed", range(3))
def test_chain_equals_block_by_block_and_reads_shared_tiles_once(seed):
    pos, raw, cal = _sample(seed)
    canvas = (int(pos[:, 0].max()) + 100, int(pos[:, 1].max()) + 100)
    block = 64
    regions = block_regions(canvas, block)
    per_row = -(-canvas[1] // block)
    row = regions[per_row : 2 * per_row]  # the middle row: blocks share tiles with both neighbours

    def collect(store):
        def write(level, region, image, weight):
            store.append((level, region, image.copy(), weight.copy()))

        return write

    reads: list[int] = []

    def read(i):
        reads.append(i)
        return raw[i]

    chained: list = []
    means = fuse_block_chain(read, collect(chained), pos, (96, 96), row, cal, levels=2, n_channels=2)
    single: list = []
    want = [fuse_block(raw.__getitem__, collect(single), pos, (96, 96), r, cal, levels=2, n_channels=2) for r in row]
    assert means == pytest.approx(want, rel=1e-6)
    assert [(lv, r) for lv, r, _, _ in chained] == [(lv, r) for lv, r, _, _ in single]
    for (_, _, im, w), (_, _, im0, w0) in zip(chained, single, strict=True):
        np.testing.assert_array_equal(im, im0)  # the same arithmetic, reused buffers zeroed
        np.testing.assert_array_equal(w, w0)
    touching = [tiles_touching(pos, (96, 96), r, distortion=cal.distortion) for r in row]
    assert sum(map(len, touching)) > len(set().union(*touching))  # neighbours do share tiles
    assert sorted(reads) == sorted(set().union(*touching))  # each read once
    # no room to keep a tile: every block reads its own again, with the same result
    reads.clear()
    again: list = []
    fuse_block_chain(read, collect(again), pos, (96, 96), row, cal, levels=2, n_channels=2, tile_bytes=0)
    assert len(reads) == sum(map(len, touching))
    np.testing.assert_array_equal(again[0][2], chained[0][2])


def test_chain_of_blocks_off_every_tile_writes_zeros():
    pos, raw, cal = _sample(0)
    far = [(1000, 1064, 0, 64), (1000, 1064, 64, 128)]
    got: list = []
    means = fuse_block_chain(raw.__getitem__, lambda *a: got.append(a), pos, (96, 96), far, cal, n_channels=2)
    assert means == (0.0, 0.0)
    assert [a[2].shape for a in got] == [(2, 64, 64)] * 2 and not any(a[2].any() for a in got)
