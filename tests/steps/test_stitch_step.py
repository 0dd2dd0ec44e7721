"""calibrate -> stitch -> mosaic through the runner on a real multi-process cluster (synthetic STPT data)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.synth import SynthParams
from imaxt_pipeline.testing import only_steps, uploaded_sample

pytestmark = pytest.mark.slow  # calibrate -> stitch -> mosaic through run_pipeline

ROWS = COLS = 3
ON = only_steps("calibrate", "stitch", "mosaic")
PARAMS = SynthParams(slices=2, rows=ROWS, cols=COLS, seed=11, tile_shape=(256, 256))


@pytest.fixture(scope="module")
def stitched(tmp_path_factory, dask_client):
    root = tmp_path_factory.mktemp("stitch")
    sample = uploaded_sample(root, PARAMS)
    # Live processing: slice 0 lands first, slice 1 later.
    for slices in ([0], [1]):
        sample.run(slices=slices, client=dask_client, **{"steps.mosaic.levels": 2, "steps.mosaic.chunk": 64}, **ON)
    return sample.truth, sample.out


def test_positions_match_truth(stitched):
    truth, out = stitched
    meta = OutputStore(out, mode="r").imaxt_attrs()
    pos = meta["stitch"]["tile_positions_px"]
    assert len(pos) == 2 * ROWS * COLS
    for s in range(PARAMS.slices):
        keys = [f"{s}/{t // COLS}/{t % COLS}" for t in range(ROWS * COLS)]
        p = np.array([pos[k] for k in keys])
        true = np.array([truth.tile_positions_px[k] for k in keys])
        err = p - true
        err = np.hypot(*(err - err.mean(axis=0)).T)
        # translation removed only: the simulated magnification (0.15 %) cannot be told from the
        # tile spacing by overlaps and adds 0.35-0.5 px at the edge tiles (see test_stitch_synth.py);
        # slice 0 is solved alone (live), before slice 1 refines the shared distortion: 0.54 here.
        assert np.median(err) <= 0.75 and err.max() <= 2.0, (s, err)
        d = p - true
        for ax in range(2):  # what the overlaps determine: all but a per-axis scale
            design = np.stack([np.ones(len(true)), true[:, ax] - true[:, ax].mean()], axis=1)
            d[:, ax] -= design @ np.linalg.lstsq(design, d[:, ax], rcond=None)[0]
        assert np.median(np.hypot(*d.T)) <= 0.1, (s, d)
        res = meta["stitch"]["residuals"][str(s)]
        assert res["n_used"] >= 10 and res["median_px"] < 0.5
    cal = meta["calibrate"]
    assert cal["source"]["distortion"] == "estimated-from-overlaps"
    assert cal["distortion"]["k_x"] == pytest.approx(truth.distortion.k_x, abs=0.002)
    assert abs(cal["dark"][1] - truth.dark) < 40
    assert cal["trim"]["left"] >= 3 and cal["slices_used"] == [0, 1]


def test_mosaic_confidence_and_qc(stitched):
    _, out = stitched
    root = zarr.open_group(out, mode="r")
    mosaic, conf = root["mosaic/0"], root["confidence/0"]
    assert mosaic.shape[:2] == (2, 2) and conf.shape == (1, 2, *mosaic.shape[2:])
    assert root["mosaic/1"].shape[-2:] == tuple(-(-n // 2) for n in mosaic.shape[-2:])
    for plane in range(2):
        w = conf[0, plane]
        img = mosaic[0, plane]
        assert (w > 0).mean() > 0.6
        assert img[w == 0].max() == 0
        # dark removed, flat-corrected: agarose ~50 counts, cyto tissue ~550
        cyto = mosaic[1, plane][w > 0]
        assert 20 < np.percentile(cyto, 5) < 90 and 400 < np.percentile(cyto, 90) < 900
    ome = root["mosaic"].attrs["ome"]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["nuclear", "cyto"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][-1] == 1.0
    store = OutputStore(out, mode="r")
    pairs = store.read_table("stitch_pairs")
    assert set(pairs["slice"]) == {0, 1} and {"residual", "used", "ncc"} <= set(pairs.columns)
    assert store.location.exists("qc/stitch.png")
    assert "tile_positions_px" in store.imaxt_attrs()["stitch"]


def test_flat_refined_from_the_seams(stitched):
    """`stitch` refines the estimated flat from the solved overlaps: it then matches the simulated vignetting."""
    from imaxt_pipeline.testing import band_error as _band_error

    truth, out = stitched
    store = OutputStore(out, mode="r")
    cal = store.imaxt_attrs()["calibrate"]
    assert cal["source"]["flat"] == "estimated+overlaps"
    flat = np.asarray(zarr.open_group(out, mode="r")["calibration/flat"][...])
    # From tile statistics alone the seam bands are 1.3-2.4 % off (tests/test_flat_refine.py); refined < 1 %.
    for c in range(flat.shape[0]):
        assert _band_error(flat[c], truth.flat, PARAMS) < 0.01
    assert any(
        e["name"] == "stitch" and "calibration/flat" in e.get("outputs", []) for e in store.imaxt_attrs()["provenance"]
    )


def test_a_single_tile_section_stitches_to_its_stage_position(tmp_path, dask_client):
    """An IMC acquisition or a one-field coverslip has no overlapping pairs: stitch places the tile, no error."""
    sample = uploaded_sample(tmp_path, SynthParams(slices=1, rows=1, cols=1, seed=3, tile_shape=(96, 96)))
    sample.run(client=dask_client, **only_steps("stitch"))
    meta = OutputStore(sample.out, mode="r").imaxt_attrs()["stitch"]
    assert list(meta["tile_positions_px"]) == ["0/0/0"]
    assert meta["residuals"]["0"]["n_pairs"] == 0
    assert len(OutputStore(sample.out, mode="r").read_table("stitch_pairs")) == 0


def test_flagged_tiles_are_named_in_the_mosaic_qc(tmp_path, dask_client, monkeypatch):
    """Independent-noise tiles share nothing: every tile is flagged, and the QC figure gets those lines."""
    from imaxt_pipeline.steps import mosaic
    from imaxt_pipeline.testing import write_raw_sample

    seen = []
    real = mosaic.stitch_figure
    monkeypatch.setattr(mosaic, "stitch_figure", lambda panels, **kw: seen.extend(panels) or real(panels, **kw))
    raw = write_raw_sample(tmp_path / "raw", slices=1, rows=2, cols=2, tile=48, channels=("DAPI",))
    sample = uploaded_sample(tmp_path, raw)
    sample.run(client=dask_client, **only_steps("stitch", "mosaic"), **{"steps.mosaic.levels": 1})
    flags = OutputStore(sample.out, mode="r").imaxt_attrs()["stitch"]["flags"]
    assert len(flags) == 4
    assert [p.slice_index for p in seen] == [0] and sorted(seen[0].flags) == sorted(flags.values())
    assert all("placed by stage" in line for line in seen[0].flags)
