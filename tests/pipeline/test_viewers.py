"""A processed store as viewers see it: the root opens as the cube with its labels, display windows from the data,
and the SpatialData export of the cells (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from imaxt_pipeline.synth import SynthParams
from imaxt_pipeline.testing import processed_sample

pytestmark = pytest.mark.slow  # run_pipeline over mosaic, cube, segment, catalogue

# spatialdata's dependencies warn when imported / writing: xarray-schema imports pkg_resources, ome-zarr's
# writer (used by spatialdata) builds a deprecated Scaler default. Harmless for what is checked here.
EXPORT_WARNINGS = (
    "ignore:pkg_resources is deprecated:UserWarning",
    "ignore:Call to deprecated class Scaler:DeprecationWarning",
    "ignore::FutureWarning",
    # the export holds the table, not the label image it annotates (docs/tables.md): spatialdata says so on reading
    "ignore:The table is annotating 'cells', which is not present:UserWarning",
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory, dask_client):
    params = SynthParams(slices=2, rows=2, cols=2, tile_shape=(128, 128), tissue_fraction=0.35, seed=5)
    return processed_sample(
        tmp_path_factory.mktemp("viewers"),
        params,
        steps=("mosaic", "cube", "segment", "catalogue"),
        client=dask_client,
        **{"steps.mosaic.levels": 3, "steps.cube.levels": 3},
    )


def test_the_store_root_opens_as_the_cube_with_its_labels(sample):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v05.image import Image

    root = zarr.open_group(sample.out, mode="r")
    cube = root["cube"]
    nodes = list(Reader(parse_url(sample.out))())
    first = nodes[0]
    assert first.zarr.path.rstrip("/") == sample.out.rstrip("/")  # the root itself, not cube/
    assert [d.shape for d in first.data] == [root[f"cube/{level}"].shape for level in range(3)]
    np.testing.assert_array_equal(np.asarray(first.data[1][:, 1]), np.asarray(root["cube/1"][:, 1]))
    assert first.metadata["channel_names"] == list(sample.truth.params.channels)
    windows = [[c["window"]["start"], c["window"]["end"]] for c in cube.attrs["ome"]["omero"]["channels"]]
    assert first.metadata["contrast_limits"] == windows
    labels = {n.zarr.basename(): n for n in nodes if n.load(Label)}
    assert set(labels) == {"nuclei", "cells"}
    assert labels["cells"].data[0].shape == root["cube/0"].shape[1:] and labels["cells"].data[0].dtype == np.uint64
    # still where the results contract puts them, and the root is valid NGFF
    assert all(isinstance(root[name], zarr.Group) for name in ("cube", "mosaic", "confidence"))
    Image.from_zarr(root)
    assert root.attrs["imaxt"]["format_version"]  # the pipeline's attributes are kept beside "ome"


@pytest.mark.parametrize("name", ["mosaic", "confidence", "cube"])
def test_display_windows_are_measured_from_the_data(sample, name):
    from ome_zarr_models.v05.image import Image

    group = zarr.open_group(sample.out, mode="r")[name]
    Image.from_zarr(group)
    ome = group.attrs["ome"]
    levels = len(ome["multiscales"][0]["datasets"])
    level = next((lv for lv in range(levels) if np.prod(group[str(lv)].shape[-2:]) <= 1_000_000), levels - 1)
    data = np.asarray(group[str(level)][:])
    for c, channel in enumerate(ome["omero"]["channels"]):
        values = data[c][data[c] != 0]
        lo, hi = np.percentile(values, [0.1, 99.9])
        window = channel["window"]
        assert (window["start"], window["end"]) == pytest.approx((lo, hi), rel=1e-5), (name, c)
        assert window["min"] <= values.min() and window["max"] >= values.max()
        assert window["end"] != 1.0 and window["end"] > window["start"]
    if name == "confidence":
        assert ome["omero"]["channels"][0]["window"]["end"] > 1.0  # overlaps sum weights above 1
    for level, ds in enumerate(ome["multiscales"][0]["datasets"]):
        shift = ds["coordinateTransformations"][1]["translation"]
        y_um = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][2]
        assert shift[2:] == pytest.approx([(2**level - 1) / 2 * y_um] * 2)


@pytest.mark.filterwarnings(*EXPORT_WARNINGS)
def test_spatialdata_export_loads_a_unique_cell_table_keyed_by_the_label_values(sample, tmp_path):
    import anndata
    import spatialdata

    from imaxt_pipeline.io.output import OutputStore
    from imaxt_pipeline.service.cli import main

    out = str(tmp_path / "sample.sdata.zarr")
    assert main(["export-spatialdata", sample.out, out]) == 0
    sdata = spatialdata.read_zarr(out)
    table = sdata.tables["table"]
    cells = OutputStore(sample.out, mode="r").read_table("cells")
    assert table.n_obs == len(cells) > 50 and table.obs["cell_id"].is_unique
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["instance_key"] == "cell_id" and attrs["region"] == "cells" and attrs["region_key"] == "region"
    # the instance key is the label value of the 3-D cell label image
    labels = np.asarray(zarr.open_group(sample.out, mode="r")["cube/labels/cells/0"][:])
    assert set(table.obs["cell_id"].astype(np.uint64).tolist()) == set(np.unique(labels[labels > 0]).tolist())
    channels = list(sample.truth.params.channels)
    assert list(table.var_names) == channels
    np.testing.assert_allclose(table.X[:, 0], cells[f"mean_{channels[0]}"], rtol=1e-6)
    np.testing.assert_allclose(table.obsm["spatial"][:, 0], cells["centroid_x_um"])
    assert {"slice", "plane", "nucleus_id", "area_um2", "centroid_z_um"} <= set(table.obs.columns)
    assert anndata.read_zarr(f"{out}/tables/table").n_obs == len(cells)  # plain AnnData readers too
    # beside the store, never into it
    assert main(["export-spatialdata", sample.out, f"{sample.out}/export.zarr"]) == 2
    assert not zarr.storage.LocalStore(sample.out).root.joinpath("export.zarr").exists()
