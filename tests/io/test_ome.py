"""OME-Zarr images: plane and region writes, the shared pyramid reducer, label metadata."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.io.ome import create_image, create_labels, write_entry_point
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


def test_levels_carry_scale_translation_and_the_reducer(image):
    """Mean levels are shifted by half a block minus half a pixel; label levels (top-left sample) are not."""
    from ome_zarr_models.v05.image import Image

    from imaxt_pipeline.algorithms import fusion

    ms = image.group(mode="r").attrs["ome"]["multiscales"][0]
    for level, ds in enumerate(ms["datasets"]):
        scale, shift = ds["coordinateTransformations"]
        f = 2**level
        assert scale == {"type": "scale", "scale": [1.0, 15.0, 0.5 * f, 0.5 * f]}
        assert shift == {"type": "translation", "translation": [0.0, 0.0, (f - 1) / 2 * 0.5, (f - 1) / 2 * 0.5]}
    assert ms["type"] == "mean" and hasattr(fusion, ms["metadata"]["method"].rsplit(".", 1)[1])
    labels = create_labels(image, "cells")
    lms = labels.group(mode="r").attrs["ome"]["multiscales"][0]
    assert lms["type"] == "nearest" and lms["metadata"]["method"].endswith("downsample_labels")
    assert all(ds["coordinateTransformations"][1]["translation"] == [0.0, 0.0, 0.0] for ds in lms["datasets"])
    assert labels.array(0, mode="r").dtype == np.uint64
    # the level-1 pixel centre is the mean of the level-0 centres it averages
    image.write_plane(0, np.broadcast_to(np.arange(21, dtype=np.float32), (2, 37, 21)).copy())
    assert image.read_plane(0, level=1)[0, 0, 0] == pytest.approx(0.5)  # x of pixels 0 and 1: centre 0.5 px
    Image.from_zarr(image.group(mode="r"))


def test_windows_come_from_the_data(image):
    rng = np.random.default_rng(0)
    before = image.group(mode="r").attrs["ome"]["omero"]["channels"]
    assert [c["window"]["end"] for c in before] == [1.0, 1.0]  # nothing measured yet
    plane = np.stack([rng.uniform(100, 4000, (37, 21)), rng.uniform(0.5, 4.0, (37, 21))]).astype(np.float32)
    image.write_plane(1, plane)
    windows = image.refresh_display()  # planes 0 and 2 are empty (fill value 0) and left out
    coarse = image.refresh_display([1], max_px=10)  # the coarsest level (5 x 3) when every level is too big
    assert coarse[0]["end"] == pytest.approx(np.percentile(image.read_plane(1, level=3)[0], 99.9), rel=1e-5)
    windows = image.refresh_display()
    for c, w in enumerate(windows):
        lo, hi = np.percentile(plane[c], [0.1, 99.9])  # level 0 is small enough to be the one sampled
        assert (w["start"], w["end"]) == pytest.approx((lo, hi), rel=1e-5)
        assert w["min"] <= w["start"] < w["end"] <= w["max"]
    assert windows[0]["end"] > 3000 and windows[1]["end"] < 5
    stored = image.group(mode="r").attrs["ome"]["omero"]["channels"]
    assert [c["window"] for c in stored] == windows and [c["label"] for c in stored] == ["a", "b"]
    assert stored[0]["color"] != stored[1]["color"]
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(image.group(mode="r"))
    with pytest.raises(ValueError, match="no channel windows"):
        create_labels(image, "nuclei").refresh_display()


def test_label_display_colours_and_properties(image):
    from ome_zarr_models.v05.image_label import ImageLabel

    from imaxt_pipeline.io.ome import label_colour

    labels = create_labels(image, "cells")
    ids = [(1 << 32) | 1, (2 << 32) | 1]
    assert labels.set_label_display(ids, [{"slice": 1, "area_um2": 2.5}, {"slice": 2, "area_um2": 3.0}])
    meta = labels.group(mode="r").attrs["ome"]["image-label"]
    assert [c["label-value"] for c in meta["colors"]] == ids
    assert meta["colors"][0]["rgba"] == list(label_colour(ids[0])) != meta["colors"][1]["rgba"]
    assert meta["properties"][1] == {"label-value": ids[1], "slice": 2, "area_um2": 3.0}
    ImageLabel.from_zarr(labels.group(mode="r"))
    assert not labels.set_label_display(range(1, 12), limit=10)  # too many: viewers colour them
    assert labels.group(mode="r").attrs["ome"]["image-label"]["colors"] == []


def test_entry_point_points_the_root_at_an_image(image, tmp_path):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v05.image import Image

    create_labels(image, "nuclei")
    root = zarr.open_group(str(tmp_path / "o.zarr"), mode="a")
    root.attrs["imaxt"] = {"keep": True}
    entry = write_entry_point(root, image, name="sample")
    assert [d["path"] for d in entry["multiscales"][0]["datasets"]] == ["img/0", "img/1", "img/2", "img/3"]
    assert entry["labels"] == ["img/labels/nuclei"]
    fresh = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert fresh.attrs["imaxt"] == {"keep": True}
    Image.from_zarr(fresh)
    nodes = list(Reader(parse_url(str(tmp_path / "o.zarr")))())
    assert nodes[0].data[0].shape == (2, 3, 37, 21) and nodes[0].metadata["channel_names"] == ["a", "b"]
    assert [n.zarr.basename() for n in nodes if n.load(Label)] == ["nuclei"]
    with pytest.raises(ValueError, match="directly under"):
        write_entry_point(root, create_labels(image, "cells"), name="x")
