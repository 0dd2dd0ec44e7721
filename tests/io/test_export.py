"""What a processed store shows to other tools: the root entry point, measured windows, the AnnData cells table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from imaxt_pipeline.errors import ConfigError, StoreError
from imaxt_pipeline.io.export import cells_anndata, export_spatialdata, refresh_views
from imaxt_pipeline.io.output import OutputStore


def _image(out, name, value, shape=(2, 2, 30, 20)):
    img = out.create_image(
        name, channel_names=["nuclear", "cyto"], shape_czyx=shape, scale_zyx_um=(15, 1, 1), dtype="float32", levels=2
    )
    rng = np.random.default_rng(len(name))
    img.write_plane(1, rng.uniform(0.5, 1.5, (2, *shape[2:])).astype(np.float32) * value)
    return img


def test_root_points_at_the_mosaic_then_at_the_cube(tmp_path):
    out = OutputStore(str(tmp_path / "o.zarr"))
    out.update_imaxt_attrs("sample", "s1")
    out.update_imaxt_attrs("slices_done", [1])
    assert refresh_views(out) == {}  # nothing to show yet
    _image(out, "mosaic", 1000.0)
    entry = refresh_views(out)
    assert entry["multiscales"][0]["name"] == "s1"
    assert [d["path"] for d in entry["multiscales"][0]["datasets"]] == ["mosaic/0", "mosaic/1"]
    _image(out, "cube", 3000.0, shape=(2, 2, 34, 24))
    out.create_labels("cube", "cells", dtype="uint64")
    entry = refresh_views(out)
    assert [d["path"] for d in entry["multiscales"][0]["datasets"]] == ["cube/0", "cube/1"]
    assert entry["labels"] == ["cube/labels/cells"]
    root = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert root.attrs["ome"] == entry and root.attrs["imaxt"]["sample"] == "s1"
    for name, value in (("mosaic", 1000.0), ("cube", 3000.0)):
        windows = [c["window"] for c in root[name].attrs["ome"]["omero"]["channels"]]
        assert all(0.5 * value <= w["start"] < w["end"] <= 1.5 * value for w in windows), name
    assert entry["omero"] == root["cube"].attrs["ome"]["omero"]
    # the OutputStore's own later writes keep the entry point
    out.update_imaxt_attrs("complete", True)
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["ome"] == entry


def _cells(ids):
    n = len(ids)
    return pd.DataFrame(
        {
            "cell_id": np.asarray(ids, np.uint64),
            "slice": np.zeros(n, np.int32),
            "plane": (np.asarray(ids, np.uint64) >> np.uint64(32)).astype(np.int32),
            "nucleus_id": np.asarray(ids, np.uint64),
            "centroid_x_um": np.arange(n, dtype=float),
            "centroid_y_um": np.arange(n, dtype=float) * 2,
            "centroid_z_um": np.full(n, 15.0),
            "area_um2": np.full(n, 3.0),
            "mean_nuclear": np.arange(n, dtype=float) + 0.5,
            "mean_cyto": np.ones(n),
            "integrated_nuclear": np.ones(n),
            "integrated_cyto": np.ones(n),
        }
    )


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_cells_anndata_is_keyed_by_cell_id():
    ids = [(1 << 32) | 1, (1 << 32) | 2, (2 << 32) | 1]
    adata = cells_anndata(_cells(ids), ["nuclear", "cyto"])
    assert list(adata.obs_names) == [str(i) for i in ids] and list(adata.var_names) == ["nuclear", "cyto"]
    np.testing.assert_array_equal(adata.X[:, 0], [0.5, 1.5, 2.5])
    np.testing.assert_array_equal(adata.obsm["spatial"][1], [1.0, 2.0, 15.0])
    assert adata.obs["cell_id"].tolist() == ids and set(adata.obs["region"]) == {"cells"}
    assert adata.layers["integrated"].shape == (3, 2)
    with pytest.raises(StoreError, match="repeats"):
        cells_anndata(_cells([ids[0], ids[0]]), ["nuclear", "cyto"])
    with pytest.raises(StoreError, match="no cell_id"):
        cells_anndata(_cells(ids).drop(columns="cell_id"), ["nuclear", "cyto"])


def test_export_goes_beside_the_store_not_into_it(tmp_path):
    out = OutputStore(str(tmp_path / "o.zarr"))
    with pytest.raises(ConfigError, match="beside the store"):
        export_spatialdata(out.url, str(tmp_path / "o.zarr" / "sd.zarr"))
    with pytest.raises(ConfigError, match="beside the store"):
        export_spatialdata(out.url, out.url)
    assert not (tmp_path / "o.zarr" / "sd.zarr").exists()


def test_export_never_replaces_data_it_did_not_write(tmp_path):
    out = OutputStore(str(tmp_path / "o.zarr"))
    foreign = tmp_path / "sd.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists"):
        export_spatialdata(out.url, str(foreign))
    with pytest.raises(ConfigError, match="not an export of imaxt-pipeline"):
        export_spatialdata(out.url, str(foreign), overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
