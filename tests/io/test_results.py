"""The typed results contract: format version, calibration, tables, offsets, labels, crops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel
from imaxt_pipeline.errors import StoreError
from imaxt_pipeline.io import results
from imaxt_pipeline.io.output import FORMAT_VERSION, OutputStore


@pytest.fixture
def out(tmp_path):
    return OutputStore(str(tmp_path / "out.zarr"))


def test_new_store_carries_the_format_version_and_old_ones_are_stamped(tmp_path, out):
    assert out.imaxt_attrs()["format_version"] == FORMAT_VERSION
    assert OutputStore(out.url, mode="r").imaxt_attrs()["format_version"] == FORMAT_VERSION
    old = OutputStore(str(tmp_path / "old.zarr"))
    old.root.attrs["imaxt"] = {"provenance": [], "complete": False}  # written before the contract had a version
    assert results.check_format_version(old) == FORMAT_VERSION
    assert old.imaxt_attrs()["format_version"] == FORMAT_VERSION
    old.update_imaxt_attrs("format_version", "99.0")
    with pytest.raises(StoreError, match="results format 99.0"):
        results.check_format_version(old)


def test_calibration_round_trip(out):
    assert results.read_calibration(out, 2).source["flat"] == "none"  # identity before `calibrate`
    rng = np.random.default_rng(0)
    flat, stray = rng.uniform(0.8, 1.2, (2, 8, 6)), rng.uniform(0, 5, (2, 8, 6))
    cal = Calibration(
        dark=np.array([100.0, 90.0]),
        flat=flat,
        stray=stray,
        distortion=DistortionModel(k_x=1e-3),
        source={"dark": "estimated", "flat": "estimated"},
    )
    written = results.write_calibration(out, cal, slices_used=[0, 1])
    assert written == [results.FLAT, results.STRAY]
    back = results.read_calibration(out, 2)
    np.testing.assert_array_equal(back.flat, flat.astype(np.float32))
    np.testing.assert_array_equal(back.stray, stray.astype(np.float32))
    np.testing.assert_array_equal(back.dark, [100.0, 90.0])
    assert back.distortion.k_x == pytest.approx(1e-3)
    assert results.calibration_record(out)["slices_used"] == [0, 1]
    results.write_calibration(out, Calibration(dark=np.zeros(2)))
    assert results.read_calibration(out, 2).flat is None  # a later record without a flat drops it


def test_replace_slices_keeps_other_slices_and_sorts(out):
    first = pd.DataFrame({"slice": [1, 0, 1], "plane": [1, 0, 1], "label": [2, 1, 1]})
    assert results.replace_slices(out, "cells", first, [0, 1], sort_by=("plane", "label"))["label"].tolist() == [
        1,
        1,
        2,
    ]
    out.write_table("cells", first)
    redo = pd.DataFrame({"slice": [1], "plane": [1], "label": [5]})
    merged = results.replace_slices(out, "cells", redo, [1], sort_by=("plane", "label"))
    assert merged[["slice", "label"]].values.tolist() == [[0, 1], [1, 5]]
    assert results.read_table_or_none(out, "nope") is None


def test_slice_offsets_nulls_read_as_zero_and_later_slices_hold_the_last(out):
    assert results.read_slice_offsets(out, 3) is None
    results.write_slice_offsets(
        out, np.array([[0.0, 0.0], [1.23456, np.nan]]), np.full((2, 2), 0.1), unconstrained=[1], chi2=[1.0, None]
    )
    meta = out.imaxt_attrs()["register"]
    assert meta["slice_offsets_px"] == [[0.0, 0.0], [1.2346, None]] and meta["unconstrained"] == [1]
    np.testing.assert_array_equal(results.read_slice_offsets(out, 4), [[0, 0], [1.2346, 0], [1.2346, 0], [1.2346, 0]])


def test_tile_positions_and_stitch_points(out):
    assert results.read_tile_positions(out) == {}
    key = results.position_key(2, 0, 1)
    results.write_stitch_record(out, {"tile_positions_px": {key: [1.5, 2.5]}, "residuals": {}})
    assert results.read_tile_positions(out) == {"2/0/1": [1.5, 2.5]}
    assert results.read_stitch_points(out, exclude=[0]).empty
    out.write_table(results.STITCH_POINTS, pd.DataFrame({"slice": [0, 1], "reference": [0, 0]}))
    assert results.read_stitch_points(out, exclude=[0])["slice"].tolist() == [1]


def test_source_image_labels_and_catalogue_errors(out):
    with pytest.raises(StoreError, match="run the mosaic step first"):
        results.source_image(out)
    out.create_image("mosaic", channel_names=["a"], shape_czyx=(1, 1, 4, 4), scale_zyx_um=(1, 1, 1), levels=1)
    assert results.source_image(out) == "mosaic"
    with pytest.raises(StoreError, match="mosaic/labels/nuclei is missing"):
        results.open_label_images(out, "mosaic")
    for lab in results.LABELS:
        out.create_labels("mosaic", lab)
    nuclei, cells = results.open_label_images(out, "mosaic")
    assert nuclei.path.endswith("labels/nuclei") and cells.path.endswith("labels/cells") and cells.is_label
    out.create_image("cube", channel_names=["a"], shape_czyx=(1, 1, 4, 4), scale_zyx_um=(1, 1, 1), levels=1)
    assert results.source_image(out) == "cube"
    with pytest.raises(StoreError, match="run the catalogue step first"):
        results.read_catalogue(out)


def test_crops_array_is_created_then_appended(out):
    arr = results.crops_array(out, n=3, channels=["a", "b"], size=4, chunk=2, image="mosaic", append=False)
    arr[:] = 1.0
    grown = results.crops_array(out, n=5, channels=["a", "b"], size=4, chunk=2, image="mosaic", append=True)
    assert grown.shape == (5, 2, 4, 4) and grown.chunks == (2, 2, 4, 4)
    got = np.asarray(out.open_array(results.CROPS)[:])
    assert got[:3].min() == 1.0 and not got[3:].any()
    assert grown.attrs["imaxt"]["index_table"] == "tables/crops.parquet"
