"""``imaxt register-modality`` on a processed synthetic STPT sample: the demo's Axioscan CZI and IMC MCD (via it,
and directly), orphan, no beads, a two-scene CZI landing in a watched bucket, a mapping following a re-made cube."""

from __future__ import annotations

import dataclasses
import shutil

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


def _to_cube(stpt, section, out=None):
    """Truth mosaic px (x, y) of ``section`` -> the reference cube's px: the mosaic canvas, then the cube's shift."""
    from imaxt_pipeline.io import results
    from imaxt_pipeline.io.rawzarr import RawStore

    _, done = stpt
    geom = results.mosaic_canvas(RawStore(done.store))
    meta = OutputStore(out or done.out, mode="r").imaxt_attrs()
    offsets = (meta.get("register") or {}).get("slice_offsets_px")
    off = np.asarray(offsets[section], float) if offsets else np.zeros(2)
    shift_yx = geom.to_mosaic(np.zeros(2)) - off + np.asarray(meta["cube"]["pad_before"], float)
    return np.hstack([np.eye(2), shift_yx[::-1, None]])


def _bead_error(fed, truth_affine_to_cube, xy):
    return np.hypot(*(apply_affine(np.array(fed["affine_px"]), xy) - apply_affine(truth_affine_to_cube, xy)).T)


def _one_line(capsys):
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.slow
def test_demo_registers_an_axioscan_slide_and_an_imc_acquisition(stpt, capsys):
    """The demo's federation part on a processed store: a CZI slide, an MCD acquisition via it, and directly."""
    from imaxt_pipeline.service.cli import main
    from imaxt_pipeline.workflows._federation_demo import register_demo_slides, write_demo_slides

    root, done = stpt
    section = 3
    slides = write_demo_slides(done.truth, root / "incoming", section=section, seed=6)
    truth = slides.slide_truth  # flipped, rotated by -80 degrees, 0.89 um px
    assert truth.flip and slides.slide_file.suffix == ".czi" and slides.imc_file.suffix == ".mcd"
    px = done.truth.params.pixel_size_um
    figures = register_demo_slides(slides, done.out, root / "slides", name="s", stpt_um=px)
    axio, imc = figures
    print("\n".join(f.describe() for f in figures))
    assert axio.error is None and imc.error is None
    assert axio.section == imc.section == section and "(truth 3, right)" in axio.describe()
    assert axio.median_px <= 1.0 and f"({axio.median_px * px:.2f} um)" in axio.describe()
    out = str(root / "slides" / "s-slide.zarr")
    stored = OutputStore(out, mode="r").imaxt_attrs()["federation"]
    assert FED_KEYS <= set(stored) and stored["section"] == section and stored["chain"] == []
    assert stored["flip"] is True and stored["stale"] is False
    assert stored["reference_cube"]["shape"] == list(OutputStore(done.out, mode="r").open_image("cube").shape)
    to_cube = compose_affine(_to_cube(stpt, section), truth.affine_px)
    err = _bead_error(stored, to_cube, truth.beads[["x_px", "y_px"]].to_numpy())
    print(
        f"axioscan: median bead error {np.median(err):.3f} px ({np.median(err) * px:.2f} um), {stored['residual_px']}"
    )
    assert np.median(err) <= 1.0 and stored["residual_px"]["median"] <= 1.0 and stored["matched_beads"] >= 10
    assert np.all(np.array(stored["affine_sigma_px"]) > 0)
    store = OutputStore(out, mode="r")
    assert store.location.exists("qc/federation.png") and store.has_table("beads")
    assert store.owner().tool == "imaxt-pipeline register-modality"
    assert store.imaxt_attrs()["provenance"][-1]["step"] == "register-modality"

    itruth = slides.imc_truth
    assert len(itruth.beads) >= 10
    fed2 = OutputStore(str(root / "slides" / "s-imc.zarr"), mode="r").imaxt_attrs()["federation"]
    assert fed2["section"] == section and fed2["chain"] == [out] and fed2["modality"] == "imc"
    ierr = _bead_error(fed2, compose_affine(to_cube, itruth.affine_px), itruth.beads[["x_px", "y_px"]].to_numpy())
    print(f"imc: median bead error {np.median(ierr):.3f} px ({np.median(ierr) * px:.2f} um), {len(itruth.beads)} beads")
    assert np.median(ierr) <= 2.0

    # IMC straight onto the cube (no --via): >= 10 beads in its field, but a 400 um window has too few beads
    # and no outline to pick its section among the reference's: one line, never a guess, nothing written
    rc = main(["register-modality", str(slides.imc_file), "--reference", done.out, "--out", str(root / "d.zarr")])
    err_lines = _one_line(capsys)
    assert rc == 2 and len(err_lines) == 1 and "not enough fiducials" in err_lines[0], err_lines
    assert "--via" in err_lines[0] and not (root / "d.zarr").exists()

    # a re-run replaces our own store; a foreign destination is refused before any work
    from imaxt_pipeline.workflows.federate import register_modality

    register_modality(str(slides.slide_file), done.out, out)
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a store written by"):
        register_modality(str(slides.slide_file), done.out, str(foreign))
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


@pytest.mark.slow
def test_watched_two_scene_slide_registers_each_once_and_follows_a_remade_cube(stpt, tmp_path, dask_client, capsys):
    """A 2-scene CZI (section 4, and an orphan) lands under slides/<sample>/ of a watched bucket once the sample is
    done: the watcher registers it once, scene 0 into its store, scene 1 failing with one line. Then sections
    land (registration refined, the cube re-made on another canvas) and --refresh moves the mapping onto it."""
    from imaxt_pipeline.service.cli import main
    from imaxt_pipeline.service.slides import SlideStep, slide_key
    from imaxt_pipeline.service.state import Ledger, LocalStateStore
    from imaxt_pipeline.service.watcher import Watcher
    from imaxt_pipeline.synth import render_slide, write_slide_czi
    from imaxt_pipeline.testing import Sample

    _, done = stpt
    bucket = tmp_path / "bucket"
    ref = bucket / "_imaxt" / "processed" / "synth.zarr"
    shutil.copytree(done.out, ref)  # the sample as the watcher processed it
    ledger = Ledger(LocalStateStore(tmp_path / "state"))
    ledger.observe("synth", "inputs")
    claimed = ledger.claim("synth", "w", ttl=60)
    ledger.finish("synth", "w", token=claimed.lease_token)
    # section 4 holds 10 STPT beads (section 2 only 5 of this sparse sample's: too few to register by)
    img0, truth0 = render_slide(done.truth, 4, seed=1, pixel_size_um=0.9)
    img1, _ = render_slide(done.truth, -1, seed=2, pixel_size_um=0.9)
    write_slide_czi(bucket / "slides" / "synth" / "two.czi", [img0, img1], 0.9)

    def no_sample(job, cancel):
        raise AssertionError(f"the slides folder is not a sample: {job.sample}")

    watcher = Watcher(str(bucket), no_sample, ledger, slides=SlideStep(), poll_interval=1.0)
    (state,) = watcher.poll_once()
    assert state.sample == slide_key("synth", "two.czi") and state.status == "failed" and state.attempts == 1
    assert "scene 1: no partner section" in state.last_error and "1 of 2 sections" in state.last_error
    scene0 = bucket / "_imaxt" / "processed" / "slides" / "synth" / "two-scene0.zarr"
    assert scene0.exists() and not scene0.with_name("two-scene1.zarr").exists()
    fed = OutputStore(str(scene0), mode="r").imaxt_attrs()["federation"]
    xy = truth0.beads[["x_px", "y_px"]].to_numpy()
    to_cube = compose_affine(_to_cube(stpt, 4), truth0.affine_px)
    assert fed["section"] == 4 and np.median(_bead_error(fed, to_cube, xy)) <= 1.0
    assert watcher.poll_once() == []  # exactly once: the same file is not taken again

    # sections landing: a refined registration moves every section, the cube is re-made on a larger canvas
    reference = OutputStore(str(ref))
    drift = [[3.0 * k, -40.0 * k] for k in range(6)]  # (dy, dx) per section
    reference.update_imaxt_attrs("register", {"slice_offsets_px": drift})
    Sample(raw=done.raw, store=done.store, out=str(ref)).run(
        steps=("cube",), client=dask_client, **{"steps.cube.levels": 2}
    )
    cube = OutputStore(str(ref), mode="r").imaxt_attrs()["cube"]
    assert cube["pad_before"] != fed["reference_cube"]["pad_before"]
    capsys.readouterr()
    assert main(["register-modality", "--refresh", str(scene0)]) == 0
    assert "moved by" in capsys.readouterr().out
    moved = OutputStore(str(scene0), mode="r").imaxt_attrs()["federation"]
    err = _bead_error(moved, compose_affine(_to_cube(stpt, 4, out=str(ref)), truth0.affine_px), xy)
    print(f"refreshed: median bead error {np.median(err):.3f} px on the re-made cube, {moved['refreshed'][-1]}")
    assert np.median(err) <= 1.0 and moved["reference_cube"]["pad_before"] == cube["pad_before"]
    beads = OutputStore(str(scene0), mode="r").read_table("beads")
    assert np.allclose(beads["x_cube_px"], apply_affine(np.array(moved["affine_px"]), beads[["x_px", "y_px"]])[:, 0])
    assert main(["register-modality", "--refresh", str(scene0)]) == 0
    assert "current" in capsys.readouterr().out
    shutil.rmtree(ref / "cube")  # the cube gone: the mapping is stale, and says why
    assert main(["register-modality", "--refresh", str(scene0)]) == 1
    assert "stale" in capsys.readouterr().out
    gone = OutputStore(str(scene0), mode="r").imaxt_attrs()["federation"]
    assert gone["stale"] is True and "no cube" in gone["stale_reason"]


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


def test_register_modality_needs_reference_and_out_unless_refreshing(tmp_path, capsys):
    from imaxt_pipeline.service.cli import main

    assert main(["register-modality", str(tmp_path / "s.czi"), "--out", str(tmp_path / "o.zarr")]) == 2
    (err,) = _one_line(capsys)
    assert "--reference and --out are required (unless --refresh)" in err
    assert main(["register-modality", "--refresh", str(tmp_path / "none.zarr")]) == 2
    (err,) = _one_line(capsys)
    assert "not a slide store" in err
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "none.zarr").exists()
