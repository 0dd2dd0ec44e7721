"""Labels written block by block equal the whole-plane merge of segment_blockwise, pyramid included."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from imaxt_pipeline.algorithms.segmentation import CellGrowth, WatershedSegmenter
from imaxt_pipeline.io.ome import create_labels
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.parallel.pyramid import reduce_round
from imaxt_pipeline.parallel.segmentation import (
    global_labels,
    label_chunk,
    segment_blockwise,
    segment_plane_labels,
    written_levels,
)
from imaxt_pipeline.testing._segdata import two_channel_sample


@pytest.mark.parametrize("seed", [1, 6])
def test_block_written_labels_and_pyramid_equal_the_whole_plane_merge(tmp_path, seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(150, 190)), int(rng.integers(200, 250)))  # edges not multiples of a block
    image, _, _ = two_channel_sample(shape, seed=seed, density=float(rng.uniform(0.25, 0.4)))
    out = OutputStore(str(tmp_path / "o.zarr"))
    plane = 1
    img = out.create_image(
        "cube", channel_names=["n", "c"], shape_czyx=(2, 3, *shape), scale_zyx_um=(1, 1, 1), dtype="float32", levels=4
    )
    img.write_plane(plane, image)
    seg = WatershedSegmenter(nuclear_channel=0, cyto_channel=1, diameter=8.0, growth=CellGrowth(3.0, 1.0))
    block = 64
    labels = [create_labels(img, n, chunks_yx=(label_chunk(32), label_chunk(32))) for n in ("nuclei", "cells")]
    summaries, writes = segment_plane_labels(img.to_dask()[:, plane], seg, *labels, plane, block=block)
    counts = dask.compute(*summaries, *writes, scheduler="sync", optimize_graph=False)[len(summaries) :]
    level = written_levels(labels[0])
    assert level == 3 and len(writes) == -(-shape[0] // 128) * -(-shape[1] // 128)  # 32-px chunks x 2**2
    for lab in labels:
        dask.compute(*reduce_round(lab, [plane], level - 1, 32), scheduler="sync")
    whole = segment_blockwise(img.to_dask()[:, plane], seg, block=block).compute(scheduler="sync")
    assert max(counts) == whole[0].max() > 30
    ref = [create_labels(img, f"ref_{n}", chunks_yx=(32, 32)) for n in ("nuclei", "cells")]
    for i, (got, want) in enumerate(zip(labels, ref, strict=True)):
        want.write_plane(plane, global_labels(whole[i], plane))
        for lv in range(4):
            np.testing.assert_array_equal(got.read_plane(plane, level=lv), want.read_plane(plane, level=lv))
        assert not got.read_plane(0).any() and not got.read_plane(2).any()  # other planes untouched
