"""The raw Zarr store as the steps read it."""

from __future__ import annotations

import numpy as np

from imaxt_pipeline.io.rawzarr import RawStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.testing import write_raw_sample


def test_read_tile_is_every_channel_of_one_tile(tmp_path):
    import pickle

    import tifffile

    sample = write_raw_sample(tmp_path / "raw", slices=2, rows=1, cols=2, tile=16)
    upload(str(sample), str(tmp_path / "raw.zarr"), progress=False)
    raw = RawStore(str(tmp_path / "raw.zarr"))
    tile = raw.read_tile(1, 0, 1)
    assert tile.shape == (2, 16, 16) and tile.dtype == np.uint16
    for c in range(2):
        np.testing.assert_array_equal(tile[c], tifffile.imread(sample / "tiles" / f"s001_c{c}_r0_c1.tif"))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(raw.read_tile))(1, 0, 1), tile)  # workers use it
