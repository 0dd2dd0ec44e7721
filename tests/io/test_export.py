"""What a processed store shows to other tools: the root entry point, measured windows, AnnData and SpatialData."""

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


@pytest.mark.slow  # importing spatialdata takes most of it
@pytest.mark.filterwarnings("ignore::FutureWarning")
# anndata 0.12's views set pandas' 'mode.chained_assignment', which pandas 3 deprecates: not ours to fix
@pytest.mark.filterwarnings("ignore:The 'mode.chained_assignment' option is deprecated")
def test_spatialdata_in_memory_and_on_disk_holds_the_image_labels_and_the_table(tmp_path, monkeypatch):
    import dask.array as da

    from imaxt_pipeline.io.export import load_spatialdata

    out = OutputStore(str(tmp_path / "o.zarr"))
    _image(out, "cube", 100.0, shape=(2, 3, 30, 20))
    cells_img, nuclei_img = (out.create_labels("cube", lab, dtype="uint64") for lab in ("cells", "nuclei"))
    ids = [(1 << 32) | 1, (1 << 32) | 2, (2 << 32) | 1]  # plane << 32 | local: unique across the sample
    for z, rows in ((1, (ids[0], ids[1])), (2, (ids[2],))):
        plane = np.zeros((30, 20), np.uint64)
        for k, value in enumerate(rows):
            plane[2 + 10 * k : 8 + 10 * k, 3:9] = value
        cells_img.write_plane(z, plane)
        nuclei_img.write_plane(z, np.where(plane > 0, plane, 0)[:, ::-1].copy())
    table = _cells(ids + [(3 << 32) | 7])  # one cell the labels do not hold
    out.write_table("cells", table)

    sdata = load_spatialdata(out.url)  # imports spatialdata quietly (its own dependencies warn)
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    assert set(sdata.images) == {"cube"} and set(sdata.labels) == {"cells", "nuclei"} and set(sdata.tables) == {"table"}
    image = sdata.images["cube"]
    assert [image[f"scale{lv}"]["image"].shape for lv in (0, 1)] == [(2, 3, 30, 20), (2, 3, 15, 10)]
    assert list(image["scale0"]["image"].coords["c"].values) == ["nuclear", "cyto"]
    assert isinstance(image["scale0"]["image"].data, da.Array)  # lazy, read from the store
    np.testing.assert_array_equal(image["scale0"]["image"].data[:, 1].compute(), out.open_image("cube").read_plane(1))
    for element in (image, sdata.labels["cells"]):
        assert get_transformation(element, "global").to_affine_matrix(("z", "y", "x"), ("z", "y", "x"))[
            [0, 1, 2], [0, 1, 2]
        ].tolist() == [15.0, 1.0, 1.0]  # µm per level-0 voxel
    labels = sdata.labels["cells"]["scale0"]["image"]
    assert labels.dtype == np.uint64 and labels.dims == ("z", "y", "x")
    attrs = sdata.tables["table"].uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["instance_key"]) == ("cells", "cell_id")
    # the table <-> labels link spatialdata itself computes: label values matched to cell_id
    matched = sd.match_table_to_element(sdata, "cells")
    assert sorted(matched.obs["cell_id"].tolist()) == sorted(ids)
    assert set(np.unique(labels.data.compute())) - {0} == set(ids)

    # on disk: spatialdata writes the same object beside the store and reads it back with the rasters
    export_spatialdata(out.url, str(tmp_path / "sd.zarr"))
    back = sd.read_zarr(str(tmp_path / "sd.zarr"))
    assert set(back.images) == {"cube"} and set(back.labels) == {"cells", "nuclei"} and set(back.tables) == {"table"}
    assert [back.images["cube"][f"scale{lv}"]["image"].shape for lv in (0, 1)] == [(2, 3, 30, 20), (2, 3, 15, 10)]
    assert list(back.images["cube"]["scale0"]["image"].coords["c"].values) == ["nuclear", "cyto"]
    for name, element in (
        ("cube", back.images["cube"]),
        ("cells", back.labels["cells"]),
        ("nuclei", back.labels["nuclei"]),
    ):
        source = sdata.images[name] if name == "cube" else sdata.labels[name]
        for lv in (0, 1):
            np.testing.assert_array_equal(
                element[f"scale{lv}"]["image"].data.compute(), source[f"scale{lv}"]["image"].data.compute()
            )
        assert get_transformation(element, "global").to_affine_matrix(("z", "y", "x"), ("z", "y", "x"))[
            [0, 1, 2], [0, 1, 2]
        ].tolist() == [15.0, 1.0, 1.0]
    assert back.tables["table"].uns["spatialdata_attrs"]["instance_key"] == "cell_id"
    assert sorted(sd.match_table_to_element(back, "cells").obs["cell_id"].tolist()) == sorted(ids)

    def write_half_then_fail(self, path, **kwargs):
        (tmp_path / "half.zarr").mkdir()
        (tmp_path / "half.zarr" / "zarr.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(sd.SpatialData, "write", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_spatialdata(out.url, str(tmp_path / "half.zarr"))
    assert not (tmp_path / "half.zarr").exists()  # nothing half-written is left


def test_viewer_layers_are_the_cube_and_its_labels_once_each(tmp_path):
    from imaxt_pipeline.io.export import viewer_layers

    out = OutputStore(str(tmp_path / "o.zarr"))
    out.update_imaxt_attrs("sample", "s1")
    out.update_imaxt_attrs("slices_done", [1])
    with pytest.raises(StoreError, match="no image at the store root"):
        viewer_layers(out.url)
    _image(out, "mosaic", 10.0)
    _image(out, "cube", 10.0, shape=(2, 2, 34, 24))
    for lab in ("nuclei", "cells"):
        out.create_labels("cube", lab, dtype="uint64")
    refresh_views(out)
    layers = viewer_layers(out.url)
    # what napari-ome-zarr shows: the cube (not the mosaic) once, though ome-zarr reaches it again via the labels
    assert [(e["kind"], e["name"]) for e in layers[:1]] == [("image", "s1")]
    assert sorted((e["kind"], e["name"]) for e in layers[1:]) == [("labels", "cells"), ("labels", "nuclei")]
    assert layers[0]["shapes"] == [(2, 2, 34, 24), (2, 2, 17, 12)] and layers[0]["channels"] == ["nuclear", "cyto"]
    assert all(e["shapes"][0] == (2, 34, 24) for e in layers[1:])


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_of_a_store_without_cells_says_so_and_writes_nothing(tmp_path):
    out = OutputStore(str(tmp_path / "o.zarr"))
    _image(out, "cube", 10.0)
    with pytest.raises(StoreError, match="no cell labels"):
        export_spatialdata(out.url, str(tmp_path / "sd.zarr"))
    out.create_labels("cube", "cells", dtype="uint64")
    with pytest.raises(StoreError, match=r"cells\.parquet is missing"):
        export_spatialdata(out.url, str(tmp_path / "sd.zarr"))
    assert not (tmp_path / "sd.zarr").exists()
