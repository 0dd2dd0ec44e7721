"""fuse_region into caller's buffers: the same values as fresh ones, whatever the buffers held."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.fusion import FusedRegion, fuse_region
from imaxt_pipeline.algorithms.optics import DistortionModel


@pytest.mark.parametrize("seed", range(2))
def test_fuse_region_into_dirty_buffers_equals_fresh(seed):
    rng = np.random.default_rng(seed)
    tiles = [rng.random((3, 40, 40), dtype=np.float32) for _ in range(4)]
    pos = np.array([[0.0, 0.0], [0.0, 35.0], [35.0, 0.0], [35.0, 35.0]]) + rng.uniform(0, 2, (4, 2))
    model = DistortionModel(k_y=rng.uniform(-0.01, 0.01), k_x=rng.uniform(-0.01, 0.01))
    region = (10, 60, 5, 70)
    want = fuse_region(tiles, pos, region, distortion=model)
    out = FusedRegion(np.full((3, 50, 65), np.nan, np.float32), np.full((50, 65), 7.0, np.float32))
    got = fuse_region(tiles, pos, region, distortion=model, out=out)
    assert got.image is out.image and got.weight is out.weight
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.weight, want.weight)
    with pytest.raises(ValueError, match="out buffers"):
        fuse_region(tiles, pos, (0, 10, 0, 10), out=out)
    with pytest.raises(ValueError, match="channels"):
        fuse_region([t[:2] for t in tiles], pos, region, out=out)
