"""The segment, catalogue and crops steps on a hand-built output store with known nuclei."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from imaxt_pipeline.acquisition import Acquisition
from imaxt_pipeline.algorithms.segmentation import object_f1
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.steps import StepContext, step_module
from imaxt_pipeline.testing._segdata import two_channel_sample

SHAPE = (220, 260)


def _store(path, n_slices=2, name="mosaic", pixel_um=0.8):
    acq = Acquisition(
        sample="seg",
        modality="STPT",
        pixel_size_um=pixel_um,
        slice_thickness_um=15.0,
        tile_shape=(128, 128),
        overlap=0.1,
        channels=["nuclear", "cyto"],
        rows=2,
        cols=2,
        slices=n_slices,
    )
    out = OutputStore(str(path))
    truth = []
    image = out.create_image(
        name,
        channel_names=acq.channels,
        shape_czyx=(2, n_slices, *SHAPE),
        scale_zyx_um=(15.0, pixel_um, pixel_um),
        dtype="float32",
        levels=2,
        chunks_yx=(128, 128),
    )
    for s in range(n_slices):
        img, nuc, _ = two_channel_sample(SHAPE, seed=40 + s, density=0.35 - 0.12 * s)
        image.write_plane(s, img * 1000)
        truth.append(nuc)
    return acq, out, truth


def _ctx(acq, out, client, slices):
    return StepContext(raw=SimpleNamespace(acquisition=acq), output=out, client=client, slices=slices)


def _run(ctx, name, **kw):
    mod = step_module(name)
    return mod.run(ctx, mod.Params(**kw))


@pytest.fixture(scope="module")
def processed(tmp_path_factory, dask_client):
    acq, out, truth = _store(tmp_path_factory.mktemp("seg") / "out.zarr")
    ctx = _ctx(acq, out, dask_client, [0, 1])
    # diameter 8 µm = 10 px at 0.8 µm/px; 128-px blocks so that planes span several blocks
    results = {
        "segment": _run(ctx, "segment", block=128, diameter_um=8.0, max_expansion_um=4.8),
        "catalogue": _run(ctx, "catalogue", block=96),  # 3 x 3 blocks: objects cut by seams
        "crops": _run(ctx, "crops", size=24),
    }
    return acq, out, truth, results


def test_labels_are_ngff_and_match_truth(processed):
    acq, out, truth, results = processed
    assert "qc/segment_overlay.png" in results["segment"].outputs
    for name in ("nuclei", "cells"):
        lab = out.open_image(f"mosaic/labels/{name}")
        assert lab.is_label and lab.shape == (2, *SHAPE)
        meta = lab.group(mode="r").attrs["ome"]
        assert meta["image-label"]["source"] == {"image": "../../"}
        assert len(meta["image-label"]["colors"]) >= 100
        assert name in out.root["mosaic/labels"].attrs["ome"]["labels"]
    nuclei = out.open_image("mosaic/labels/nuclei")
    for s in range(2):
        assert object_f1(truth[s], nuclei.read_plane(s)).f1 >= 0.85
    assert out.location.exists("qc/segment_overlay.png")


def test_labels_equal_the_whole_plane_merge(processed):
    """Block-written labels are those of merging each plane whole (the step before labels went block by block)."""
    from imaxt_pipeline.parallel.segmentation import global_labels, segment_blockwise

    acq, out, _, _ = processed
    seg_mod = step_module("segment")
    image = out.open_image("mosaic")
    params, _ = seg_mod.resolved_params(seg_mod.Params(block=128, diameter_um=8.0, max_expansion_um=4.8), acq.channels)
    for s in range(2):
        sample, scale = seg_mod._sample(image, s)
        segmenter = seg_mod.make_segmenter(params, pixel_um=0.8, plane_sample=sample, sample_scale=scale)
        whole = segment_blockwise(image.to_dask()[:, s], segmenter, block=128).compute(scheduler="sync")
        for i, name in enumerate(("nuclei", "cells")):
            np.testing.assert_array_equal(
                out.open_image(f"mosaic/labels/{name}").read_plane(s), global_labels(whole[i], s)
            )


def test_catalogue_in_blocks_equals_the_whole_plane_catalogue(processed):
    from imaxt_pipeline.algorithms.measure import cell_catalogue
    from imaxt_pipeline.parallel.segmentation import local_labels

    acq, out, _, _ = processed
    cells = out.read_table("cells")
    image = out.open_image("mosaic")
    for s in range(2):
        labs = [local_labels(out.open_image(f"mosaic/labels/{n}").read_plane(s)) for n in ("cells", "nuclei")]
        ref, _ = cell_catalogue(*labs, image.read_plane(s), channel_names=acq.channels, pixel_size_um=0.8)
        got = cells[cells["slice"] == s].sort_values("label")
        assert len(got) == len(ref) > 50
        for column in (
            "area_px",
            "centroid_y_px",
            "perimeter_px",
            "eccentricity",
            "feret_diameter_max_px",
            "mean_cyto",
        ):
            np.testing.assert_allclose(got[column].to_numpy(), ref[column].to_numpy(), rtol=1e-9, atol=1e-7)
        np.testing.assert_array_equal(local_labels(got["nucleus_label"].to_numpy()), ref["nucleus_label"].to_numpy())


def test_catalogue_rows_and_units(processed):
    acq, out, truth, _ = processed
    cells, nuclei = out.read_table("cells"), out.read_table("nuclei")
    lab = out.open_image("mosaic/labels/cells")
    for s in range(2):
        plane = lab.read_plane(s)
        rows = cells[cells["slice"] == s]
        assert sorted(rows["label"]) == sorted(np.unique(plane[plane > 0]))
        big = rows.iloc[len(rows) // 2]
        ys, xs = np.nonzero(plane == big["label"])
        assert big["centroid_y_px"] == pytest.approx(ys.mean()) and big["area_px"] == len(ys)
        assert big["centroid_x_um"] == pytest.approx(xs.mean() * 0.8)
        assert (rows["centroid_z_um"] == s * 15.0).all()
    assert (cells["nucleus_label"] == cells["label"]).mean() > 0.99  # cells grow from their nuclei
    assert {"mean_nuclear", "integrated_cyto", "nucleus_feret_diameter_max_px"} <= set(cells.columns)
    assert len(nuclei) == sum(
        len(np.unique(out.open_image("mosaic/labels/nuclei").read_plane(s))) - 1 for s in range(2)
    )
    assert out.location.exists("qc/catalogue_histograms.png")


def test_ids_are_unique_across_the_sample_and_equal_the_label_values(processed):
    """cell_id = plane << 32 | label-in-plane: one id per object of the sample, the value in the 3-D label image."""
    from ome_zarr_models.v05.image_label import ImageLabel

    acq, out, _, _ = processed
    cells, nuclei = out.read_table("cells"), out.read_table("nuclei")
    assert cells["cell_id"].is_unique and nuclei["nucleus_id"].is_unique
    assert len(cells) > 100 and cells["cell_id"].dtype == np.uint64
    lab = out.open_image("mosaic/labels/cells")
    assert lab.array(0, mode="r").dtype == np.uint64
    volume = np.stack([lab.read_plane(s) for s in range(2)])
    assert sorted(cells["cell_id"]) == sorted(np.unique(volume[volume > 0]))  # one id per 3-D label value
    np.testing.assert_array_equal(cells["cell_id"].to_numpy() >> np.uint64(32), cells["plane"].to_numpy())
    assert (cells["cell_id"] == cells["label"]).all()
    # links both ways: cells grow from their nuclei (same id); each nucleus names its cell
    linked = cells[cells["nucleus_id"] > 0]
    assert len(linked) / len(cells) > 0.99 and linked["nucleus_id"].isin(nuclei["nucleus_id"]).all()
    back = nuclei.set_index("nucleus_id")["cell_id"]
    assert (back.loc[linked["nucleus_id"].to_numpy()].to_numpy() > 0).all()
    # display metadata: a colour and properties per id, valid NGFF
    meta = lab.group(mode="r").attrs["ome"]["image-label"]
    assert {c["label-value"] for c in meta["colors"]} == set(cells["cell_id"].tolist())
    first = next(p for p in meta["properties"] if p["label-value"] == int(cells["cell_id"].iloc[0]))
    assert first["plane"] == cells["plane"].iloc[0] and first["nucleus_id"] == cells["nucleus_id"].iloc[0]
    ImageLabel.from_zarr(lab.group(mode="r"))


def test_crops_follow_the_nuclei_catalogue(processed):
    acq, out, _, results = processed
    index = out.read_table("crops")
    crops = out.root["crops"]
    assert crops.shape == (len(out.read_table("nuclei")), 2, 24, 24) == (len(index), 2, 24, 24)
    assert index["row"].tolist() == list(range(len(index)))
    image, nuclei = out.open_image("mosaic"), out.open_image("mosaic/labels/nuclei")
    for i in (0, len(index) // 2, len(index) - 1):
        row = index.iloc[i]
        lab = nuclei.read_plane(int(row["plane"]))
        crop = np.asarray(crops[i])
        assert (crop[0] > 0).sum() == (lab == row["label"]).sum()  # whole nucleus inside, nothing else
        assert crop[0].sum() == pytest.approx(
            image.read_plane(int(row["plane"]))[0][lab == row["label"]].sum(), rel=1e-4
        )
    ranking = out.read_table("representative_slices")
    assert sorted(ranking["slice"]) == [0, 1] and ranking["rank"].tolist() == [1, 2]
    assert results["crops"].metrics["crops"] == len(index)


def test_live_processing_replaces_only_the_new_slice(processed, dask_client):
    acq, out, _, _ = processed
    before = out.read_table("cells")
    ctx = _ctx(acq, out, dask_client, [1])
    _run(ctx, "segment", block=128, diameter_um=8.0, max_expansion_um=4.8)
    _run(ctx, "catalogue")
    _run(ctx, "crops", size=24)
    after = out.read_table("cells")
    assert len(after) == len(before)
    np.testing.assert_allclose(after[after["slice"] == 0]["area_px"], before[before["slice"] == 0]["area_px"])
    assert len(out.read_table("crops")) == out.root["crops"].shape[0] == len(out.read_table("nuclei"))


@pytest.mark.slow  # cellpose over a whole cube on the cluster
def test_cube_is_preferred_and_cellpose_backend_runs(tmp_path, dask_client):
    acq, out, truth = _store(tmp_path / "out.zarr", n_slices=1, name="cube", pixel_um=1.0)
    out.create_image(
        "mosaic",
        channel_names=acq.channels,
        shape_czyx=(2, 1, 8, 8),
        scale_zyx_um=(15, 1, 1),
        dtype="float32",
        levels=1,
    )
    ctx = _ctx(acq, out, dask_client, [0])
    result = _run(ctx, "segment", backend="cellpose", block=128, diameter_um=10.0)  # 2 x 3 blocks
    assert result.metrics["image"] == "cube" and not out.has("mosaic/labels/nuclei")
    assert object_f1(truth[0], out.open_image("cube/labels/nuclei").read_plane(0)).f1 >= 0.85


def test_catalogue_without_labels_is_a_clear_error(tmp_path, dask_client):
    from imaxt_pipeline.errors import StoreError

    acq, out, _ = _store(tmp_path / "out.zarr", n_slices=1)
    with pytest.raises(StoreError, match="run the segment step first"):
        _run(_ctx(acq, out, dask_client, [0]), "catalogue")
