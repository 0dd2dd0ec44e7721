"""``imaxt register-modality`` on a processed synthetic STPT sample: Axioscan CZI, IMC via it, orphan, no beads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile

from imaxt_pipeline.algorithms.federation import apply_affine, compose_affine
from imaxt_pipeline.errors import InputError, StoreError
from imaxt_pipeline.io.output import OutputStore

FED_KEYS = {
    "version", "reference", "reference_cube", "section", "affine_px", "affine_sigma_px", "matched_beads",
    "residual_px", "flip", "rotation_deg", "chain",
}  # fmt: skip


@pytest.fixture(scope="module")
def stpt(tmp_path_factory, dask_client):
    """A 6-section sample through mosaic -> beads -> cube (no stage error: no stitch needed; the cube frame is
    the mosaic frame plus the cube's padding whether or not register ran, which ``_to_cube`` accounts for)."""
    from imaxt_pipeline.synth import SynthParams
    from imaxt_pipeline.testing import processed_sample

    params = SynthParams(
        slices=6, rows=2, cols=2, tile_shape=(256, 256), pixel_size_um=2.0, bead_radius_um=(9.0, 14.0), n_beads=150,
        tissue_fraction=0.35, seed=0, stage_error_px=0.0, corner_distortion_px=0.0,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("federate")
    done = processed_sample(
        root,
        params,
        steps=("mosaic", "beads", "cube"),
        client=dask_client,
        **{"steps.mosaic.levels": 2, "steps.cube.levels": 2},
    )
    return root, done


def _to_cube(stpt, section):
    """Truth mosaic px (x, y) of ``section`` -> the reference cube's px: the mosaic canvas, then the cube's shift."""
    from imaxt_pipeline.io import results
    from imaxt_pipeline.io.rawzarr import RawStore

    _, done = stpt
    geom = results.mosaic_canvas(RawStore(done.store))
    meta = OutputStore(done.out, mode="r").imaxt_attrs()
    offsets = (meta.get("register") or {}).get("slice_offsets_px")
    off = np.asarray(offsets[section], float) if offsets else np.zeros(2)
    shift_yx = geom.to_mosaic(np.zeros(2)) - off + np.asarray(meta["cube"]["pad_before"], float)
    return np.hstack([np.eye(2), shift_yx[::-1, None]])


@pytest.mark.slow
def test_axioscan_and_imc_register_onto_their_section(stpt):
    from imaxt_pipeline.synth import render_imc, render_slide, write_slide_czi
    from imaxt_pipeline.workflows.federate import register_modality

    root, done = stpt
    section = 3
    img, truth = render_slide(done.truth, section, seed=6)  # flipped, rotated by -80 degrees, 0.89 um px
    assert truth.flip
    czi = root / "slide.czi"
    write_slide_czi(czi, img, truth.pixel_size_um)
    out = str(root / "slide.zarr")
    fed = register_modality(str(czi), done.out, out)
    assert fed["section"] == section and fed["flip"] is True
    stored = OutputStore(out, mode="r").imaxt_attrs()["federation"]
    assert FED_KEYS <= set(stored) and stored["section"] == section and stored["chain"] == []
    assert stored["reference_cube"]["shape"] == list(OutputStore(done.out, mode="r").open_image("cube").shape)
    to_cube = compose_affine(_to_cube(stpt, section), truth.affine_px)
    xy = truth.beads[["x_px", "y_px"]].to_numpy()
    err = np.hypot(*(apply_affine(np.array(fed["affine_px"]), xy) - apply_affine(to_cube, xy)).T)
    px = done.truth.params.pixel_size_um
    print(
        f"axioscan: median bead error {np.median(err):.3f} px ({np.median(err) * px:.2f} um), "
        f"held-out {fed['residual_px']}"
    )
    assert np.median(err) <= 1.0 and fed["residual_px"]["median"] <= 1.0 and fed["matched_beads"] >= 10
    assert np.all(np.array(fed["affine_sigma_px"]) > 0)
    store = OutputStore(out, mode="r")
    assert store.location.exists("qc/federation.png") and store.has_table("beads")
    assert store.owner().tool == "imaxt-pipeline register-modality"
    assert store.imaxt_attrs()["provenance"][-1]["step"] == "register-modality"

    imc, itruth = render_imc(img, truth, seed=6, out_txt=root / "roi.txt")
    assert len(itruth.beads) >= 10
    fed2 = register_modality(str(root / "roi.txt"), done.out, str(root / "roi.zarr"), via=out)
    assert fed2["section"] == section and fed2["chain"] == [out]
    ixy = itruth.beads[["x_px", "y_px"]].to_numpy()
    ierr = np.hypot(
        *(
            apply_affine(np.array(fed2["affine_px"]), ixy)
            - apply_affine(compose_affine(to_cube, itruth.affine_px), ixy)
        ).T
    )
    print(
        f"imc: median bead error {np.median(ierr):.3f} px ({np.median(ierr) * px:.2f} um), "
        f"{len(itruth.beads)} beads in the field"
    )
    assert np.median(ierr) <= 2.0

    # a re-run replaces our own store; a foreign destination is refused before any work
    register_modality(str(czi), done.out, out)
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a store written by"):
        register_modality(str(czi), done.out, str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_orphan_and_beadless_slides_fail_with_one_line_and_write_nothing(stpt, capsys):
    from imaxt_pipeline.service.cli import main
    from imaxt_pipeline.synth import render_slide, write_slide_czi

    root, done = stpt
    img, _ = render_slide(done.truth, -1, seed=3)  # the section cut above the first imaged one
    write_slide_czi(root / "orphan.czi", img, 0.8)
    rc = main(["register-modality", str(root / "orphan.czi"), "--reference", done.out, "--out", str(root / "o.zarr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no partner section" in err[0], err
    assert not (root / "o.zarr").exists()

    few = dataclasses.replace(done.truth, beads=done.truth.beads.iloc[:0])
    img, st = render_slide(few, 2, seed=5)
    tifffile.imwrite(root / "nobeads.tif", img[0])
    rc = main(["register-modality", str(root / "nobeads.tif"), "--reference", done.out, "--out", str(root / "n.zarr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "pixel size unknown" in err[0], err
    args = ["--reference", done.out, "--out", str(root / "n.zarr"), "--pixel-size-um", f"{st.pixel_size_um}"]
    rc = main(["register-modality", str(root / "nobeads.tif"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "not enough fiducials" in err[0], err
    assert not (root / "n.zarr").exists()
    with pytest.raises(InputError, match="not a slide"):
        from imaxt_pipeline.workflows.federate import register_modality

        register_modality(str(root / "raw" / "acquisition.json"), done.out, str(root / "x.zarr"))


def test_reprojection_maps_points_tables_and_labels_both_ways():
    import pandas as pd

    from imaxt_pipeline.parallel.federation import map_points, map_table, reproject_image

    a = np.array([[0.0, -1.0, 40.0], [1.0, 0.0, 5.0]])  # a quarter turn and a shift
    pts = np.array([[3.0, 4.0], [10.0, 0.0]])
    np.testing.assert_allclose(map_points(map_points(pts, a), a, inverse=True), pts)
    t = map_table(pd.DataFrame({"centroid_x_px": pts[:, 0], "centroid_y_px": pts[:, 1]}), a)
    np.testing.assert_allclose(t[["centroid_x_px_stpt", "centroid_y_px_stpt"]].to_numpy(), map_points(pts, a))
    labels = np.zeros((30, 20), np.int32)
    labels[2:6, 3:9] = 7
    labels[20:25, 10:12] = 3
    out = reproject_image(labels, a, (40, 60), labels=True, chunks=(16, 16))
    assert out.chunksize == (16, 16)  # lazy, chunk by chunk
    got = out.compute()
    assert set(np.unique(got)) == {0, 3, 7}  # nearest neighbour: no blended ids
    yy, xx = np.nonzero(labels == 7)
    mx, my = map_points(np.column_stack([xx, yy]).astype(float), a).T
    assert np.all(got[np.rint(my).astype(int), np.rint(mx).astype(int)] == 7)
    back = reproject_image(got, a, labels.shape, inverse=True, labels=True).compute()
    np.testing.assert_array_equal(back, labels)
