"""The beads step's choice of pyramid level for the channel scores, in µm."""

from __future__ import annotations

import pytest

from imaxt_pipeline.io.ome import create_image
from imaxt_pipeline.io.urls import Location
from imaxt_pipeline.steps.beads import SCORE_PIXEL_UM, score_level


@pytest.mark.parametrize(("pixel_size_um", "level"), [(0.56, 2), (0.5, 2), (0.65, 1), (1.2, 1), (2.24, 0), (4.0, 0)])
def test_channel_scores_use_the_coarsest_level_that_resolves_nuclei(tmp_path, pixel_size_um, level):
    kw = {"scale_zyx_um": (15, pixel_size_um, pixel_size_um), "channel_names": ["a"], "dtype": "float32"}
    image = create_image(Location(str(tmp_path / "o.zarr")), "mosaic", shape_czyx=(1, 1, 600, 1000), levels=5, **kw)
    assert score_level(image, pixel_size_um) == level
    scale = image.shape[-1] / image.level_shape(level)[-1]
    assert pixel_size_um * scale <= SCORE_PIXEL_UM or level == 0
    if level + 1 < image.levels:  # the next level's pixels would blur the nuclei
        assert pixel_size_um * image.shape[-1] / image.level_shape(level + 1)[-1] > SCORE_PIXEL_UM
