"""Bead tasks reading their own windows of a mosaic store: the same beads as the blockwise Dask-array path."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from imaxt_pipeline.algorithms.registration import (
    BeadSpec,
    bead_channel_scores,
    bead_threshold,
    disc_model,
    threshold_levels,
)
from imaxt_pipeline.io.ome import create_image
from imaxt_pipeline.io.urls import Location
from imaxt_pipeline.parallel.registration import channel_scores, find_beads, find_plane_beads
from imaxt_pipeline.parallel.registration import threshold_levels as lazy_threshold_levels


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """Two planes of two channels (beads in channel 1, noise in channel 0), 3 pyramid levels, 64-px chunks."""
    loc = Location(str(tmp_path_factory.mktemp("beads") / "o.zarr"))
    kw = {"scale_zyx_um": (15, 1, 1), "channel_names": ["noise", "beads"], "dtype": "float32", "chunks_yx": (64, 64)}
    image = create_image(loc, "mosaic", shape_czyx=(2, 2, 480, 400), levels=3, **kw)
    rng = np.random.default_rng(5)
    yy, xx = np.indices((480, 400), dtype=float)
    clean = np.full(yy.shape, 20.0)
    for k, (cy, cx) in enumerate(((60, 60), (70, 200), (90, 330), (230, 120), (250, 280), (400, 80), (410, 250))):
        clean += disc_model([cy + 7 * k % 11, cx, 18.0 + 3 * k, 1.5, 60.0, 0.0], yy, xx)
    beads = rng.poisson(clean).astype(np.float32)
    beads[:, :30] = 0  # missing data along one side, through a bead
    for z, plane in enumerate((beads, np.ascontiguousarray(beads[::-1]))):
        image.write_plane(z, np.stack([rng.poisson(30.0, plane.shape).astype(np.float32), plane]))
    return image


def test_store_windows_find_what_the_dask_array_blocks_find(mosaic):
    spec = BeadSpec(pixel_size_um=1.0, diameter_um=90.0)
    plane = mosaic.read_plane(1)[1]
    thr = bead_threshold(plane)
    kw = {"block": 160, "threshold": thr}
    ref = dask.compute(find_beads(da.from_array(plane, chunks=(173, 211)), spec, **kw), scheduler="sync")[0]
    one, three = dask.compute(
        find_plane_beads(mosaic, 1, 1, spec, per_task=1, **kw),
        find_plane_beads(mosaic, 1, 1, spec, per_task=3, **kw),
        scheduler="threads",
    )
    assert int(ref["fit_ok"].sum()) >= 6  # the beads of 18 to 36 px, cut by blocks (and the data edge)
    # each block is searched on the same window whichever task reads it: identical tables, in block order
    pd.testing.assert_frame_equal(one, ref)
    pd.testing.assert_frame_equal(three, ref)
    graph = find_plane_beads(mosaic, 1, 1, spec, per_task=3, **kw).__dask_graph__()
    assert len(graph) == 3 + 1  # a task per row of three blocks (3 x 3 of 160 px) and the concatenation
    with pytest.raises(ValueError, match="block"):
        find_plane_beads(mosaic, 1, 1, spec, block=0)


def test_plane_statistics_are_those_of_the_levels(mosaic):
    scores, levels = dask.compute(
        channel_scores(mosaic, [0, 1], level=1, rel=0.5), lazy_threshold_levels(mosaic, [0, 1], 1, level=2)
    )
    for z in range(2):
        data = mosaic.read_plane(z, level=1)
        np.testing.assert_allclose(scores[z], bead_channel_scores(data, scale=2.0, sigma=1.0, rel=0.5))
        assert levels[z] == threshold_levels(mosaic.read_plane(z, level=2)[1], sigma=1.0, nsigma=5.0)
    assert scores[0][1] > 3 * max(scores[0][0], 1.0)  # the bead channel's bright objects are the largest
