"""calibrate -> stitch -> mosaic through the runner on a real multi-process cluster."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import zarr

from imaxt_pipeline.algorithms.distortion import DistortionModel
from imaxt_pipeline.config import load_config
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.pipeline import run_pipeline

from .test_flatfield import TILE, _instrument
from .test_overlap import grid_tiles

ROWS = COLS = 3
OTHERS = {f"steps.{s}.enabled": False for s in ("beads", "register", "cube", "segment", "catalogue", "crops")}
ON = {f"steps.{s}.enabled": True for s in ("calibrate", "stitch", "mosaic")}
MODEL = DistortionModel(k_y=0.006, k_x=0.006)


def _write_sample(root, slices=2):
    (root / "tiles").mkdir(parents=True)
    acq = {"sample": "stitchy", "modality": "STPT", "pixel_size_um": 1.0, "slice_thickness_um": 15.0,
           "tile_shape": [TILE, TILE], "overlap": 0.12, "channels": ["nuc", "cyto"], "rows": ROWS, "cols": COLS,
           "slices": slices}
    (root / "acquisition.json").write_text(json.dumps(acq))
    truth = []
    with open(root / "tiles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice", "channel", "row", "col", "x_um", "y_um", "file"])
        for s in range(slices):
            tiles, true, stage = grid_tiles(20 + s, rows=ROWS, cols=COLS, tile=TILE, model=MODEL)
            raw, _ = _instrument(tiles)
            truth.append(true)
            for ch, gain in enumerate((1.0, 0.5)):
                for t in range(ROWS * COLS):
                    name = f"tiles/s{s}_c{ch}_t{t}.tif"
                    tifffile.imwrite(root / name, np.clip(100 + (raw[t] - 100) * gain, 0, 65535).astype(np.uint16))
                    w.writerow([s, ch, t // COLS, t % COLS, f"{stage[t, 1]:.3f}", f"{stage[t, 0]:.3f}", name])
    return truth


@pytest.fixture(scope="module")
def stitched(tmp_path_factory, dask_client):
    root = tmp_path_factory.mktemp("stitch")
    truth = _write_sample(root / "raw")
    upload(str(root / "raw"), str(root / "raw.zarr"), progress=False)
    out = str(root / "out.zarr")
    # Live processing: slice 0 lands first, slice 1 later.
    for slices in ([0], [1]):
        cfg = load_config(None, input_url=str(root / "raw.zarr"), output_url=out, slices=slices,
                          **{"steps.mosaic.levels": 2, "steps.mosaic.chunk": 64, "steps.calibrate.dark": 100.0}, **OTHERS, **ON)
        run_pipeline(cfg, client=dask_client)
    return truth, out


def test_positions_match_truth(stitched):
    truth, out = stitched
    meta = OutputStore(out, mode="r").imaxt_attrs()
    pos = meta["stitch"]["tile_positions_px"]
    assert len(pos) == 2 * ROWS * COLS
    for s, true in enumerate(truth):
        p = np.array([pos[f"{s}/{t // COLS}/{t % COLS}"] for t in range(ROWS * COLS)])
        err = p - true
        err = np.hypot(*(err - err.mean(axis=0)).T)
        assert np.median(err) <= 0.5 and err.max() <= 2.0, (s, err)
        res = meta["stitch"]["residuals"][str(s)]
        assert res["n_used"] >= 10 and res["median_px"] < 0.5
    cal = meta["calibrate"]
    assert cal["source"]["distortion"] == "estimated-from-overlaps"
    assert cal["distortion"]["k_x"] == pytest.approx(MODEL.k_x, abs=0.0015)
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
        assert np.median(img[w > 0]) > 200  # dark removed, flat-corrected tissue + background
    ome = root["mosaic"].attrs["ome"]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["nuc", "cyto"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][-1] == 1.0
    store = OutputStore(out, mode="r")
    pairs = store.read_table("stitch_pairs")
    assert set(pairs["slice"]) == {0, 1} and {"residual", "used", "ncc"} <= set(pairs.columns)
    assert store.location.exists("qc/stitch.png")
