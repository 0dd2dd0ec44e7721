"""Block-written pyramids (write_block + reduce_block) equal the whole-plane pyramid; shards."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.io.ome import block_edge, check_shard, create_image, create_labels, pyramid_levels
from imaxt_pipeline.io.urls import Location


def _regions(h: int, w: int, edge: int) -> list[tuple[int, int, int, int]]:
    return [(y, min(y + edge, h), x, min(x + edge, w)) for y in range(0, h, edge) for x in range(0, w, edge)]


@pytest.mark.parametrize("label", [False, True])
@pytest.mark.parametrize("shape", [(203, 157), (256, 96)])
def test_block_pyramid_equals_whole_plane_pyramid(tmp_path, shape, label):
    rng = np.random.default_rng(shape[0])
    h, w = shape
    levels, chunk = pyramid_levels(shape, min_px=16), 8
    assert levels >= 5
    loc = Location(str(tmp_path / "o.zarr"))
    images = []
    for name in ("whole", "blocks"):
        img = create_image(
            loc,
            name,
            shape_czyx=(2, 1, h, w),
            scale_zyx_um=(1, 1, 1),
            channel_names=["a", "b"],
            dtype="float32",
            levels=levels,
            chunks_yx=(chunk, chunk),
        )
        images.append(create_labels(img, "cells", chunks_yx=(chunk, chunk)) if label else img)
    whole, blocks = images
    data = rng.integers(0, 50, (h, w)).astype(np.uint64) if label else rng.random((2, h, w)).astype(np.float32)
    whole.write_plane(0, data)
    edge = block_edge(chunk, levels)  # 3 levels inside each block, then rounds of 2 levels
    for y0, y1, x0, x1 in _regions(h, w, edge):
        blocks.write_block(0, (y0, x0), data[..., y0:y1, x0:x1], n_levels=3)
    level = 2
    while level + 1 < levels:
        n = min(2, levels - 1 - level)
        lh, lw = blocks.level_shape(level)[-2:]
        for region in _regions(lh, lw, chunk * 2**n):
            blocks.reduce_block(0, level, region, n)
        level += n
    for lev in range(levels):
        np.testing.assert_allclose(blocks.read_plane(0, lev), whole.read_plane(0, lev), rtol=1e-6)


def test_pyramid_levels_reach_512_px_and_shards_are_checked(tmp_path):
    assert [pyramid_levels((n, n)) for n in (100, 512, 513, 2048, 20_000)] == [1, 1, 2, 3, 7]
    check_shard(1024, 512, 7)
    with pytest.raises(ValueError, match="shard"):
        check_shard(4096, 512, 7)  # larger than a block: two tasks would write one shard
    img = create_image(
        Location(str(tmp_path / "s.zarr")),
        "m",
        shape_czyx=(1, 2, 300, 200),
        scale_zyx_um=(1, 1, 1),
        channel_names=["a"],
        dtype="float32",
        levels=2,
        chunks_yx=(32, 32),
        shard_yx=64,
    )
    assert img.array(0).shards == (1, 1, 64, 64) and img.array(1).shards is None
    plane = np.arange(300 * 200, dtype=np.float32).reshape(1, 300, 200)
    img.write_block(1, (0, 0), plane, n_levels=2)
    np.testing.assert_array_equal(img.read_plane(1), plane)
