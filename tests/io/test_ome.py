"""OME-Zarr images: plane and region writes, the shared pyramid reducer, label metadata."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.io.ome import create_image, create_labels
from imaxt_pipeline.io.urls import Location


@pytest.fixture
def image(tmp_path):
    loc = Location(str(tmp_path / "o.zarr"))
    return create_image(
        loc,
        "img",
        shape_czyx=(2, 3, 37, 21),
        scale_zyx_um=(15.0, 0.5, 0.5),
        channel_names=["a", "b"],
        dtype="float32",
        levels=4,
        chunks_yx=(8, 8),
    )


def test_constant_planes_stay_constant_at_every_level_and_edge(image):
    """Odd sizes at every level (37 x 21 -> 19 x 11 -> 10 x 6 -> 5 x 3): the edges are not darkened."""
    image.write_plane(1, np.full((2, 37, 21), 123.5, np.float32))
    labels = create_labels(image, "cells", dtype="uint32")
    labels.write_plane(1, np.full((37, 21), 7, np.uint32))
    for level in range(4):
        shape = tuple(-(-n // 2**level) for n in (37, 21))
        plane, lab = image.read_plane(1, level=level), labels.read_plane(1, level=level)
        assert plane.shape == (2, *shape) and lab.shape == shape
        assert np.all(plane == 123.5), level
        assert np.all(lab == 7), level
    assert not image.read_plane(0, level=3).any()  # other planes untouched


def test_integer_image_pyramid_is_rounded_and_constant(tmp_path):
    loc = Location(str(tmp_path / "u.zarr"))
    img = create_image(
        loc, "u", shape_czyx=(1, 1, 5, 3), scale_zyx_um=(1, 1, 1), channel_names=["a"], dtype="uint16", levels=3
    )
    img.write_plane(0, np.full((1, 5, 3), 1000.4))
    for level in range(3):
        assert np.all(img.read_plane(0, level=level) == 1000)


def test_write_region_writes_one_block_of_one_level(image):
    block = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    image.write_region(2, 1, (8, 3), block)
    got = image.read_plane(2, level=1)
    np.testing.assert_array_equal(got[:, 8:12, 3:9], block)
    assert got.sum() == block.sum()  # nothing else, and no other level
    assert not image.read_plane(2, level=0).any() and not image.read_plane(2, level=2).any()


def test_write_plane_rejects_a_plane_of_another_shape(image):
    with pytest.raises(ValueError, match="shape"):
        image.write_plane(0, np.zeros((2, 36, 21), np.float32))


def test_scale_colours_and_reducer_metadata(image):
    assert image.scale_zyx() == (15.0, 0.5, 0.5)
    assert image.scale_zyx(2) == (15.0, 2.0, 2.0)
    assert image.level_shape(1) == (2, 3, 19, 11)
    ms = image.group(mode="r").attrs["ome"]["multiscales"][0]
    assert ms["type"] == "mean" and ms["metadata"]["method"].endswith("downsample_mean")
    labels = create_labels(image, "nuclei")
    labels.set_label_colors([{"label-value": 1, "rgba": [1, 2, 3, 255]}])
    meta = labels.group(mode="r").attrs["ome"]["image-label"]
    assert meta["colors"] == [{"label-value": 1, "rgba": [1, 2, 3, 255]}] and meta["source"] == {"image": "../../"}
    with pytest.raises(ValueError, match="not a label image"):
        image.set_label_colors([])
