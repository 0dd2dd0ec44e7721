"""The synthetic STPT sample generator against its own ground truth."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.optics import displacement_field, max_displacement, undistort
from imaxt_pipeline.io.raw import read_raw_sample
from imaxt_pipeline.synth import SynthParams, demo_params, load_truth, synthesize

SMALL = SynthParams(slices=3, rows=2, cols=2, seed=0)
MINI = SynthParams(slices=2, rows=1, cols=2, tile_shape=(128, 128), seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "small"
    return root, synthesize(root, SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_table(root: Path) -> list[dict[str, str]]:
    with open(root / "tiles.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _tile(root: Path, s: int, ch: int, r: int, c: int) -> np.ndarray:
    return tifffile.imread(root / f"tiles/S{s:03d}_ch{ch}_r{r:02d}_c{c:02d}.tif").astype(np.float64)


def test_raw_layout_follows_the_contract(small):
    root, truth = small
    p = truth.params
    rows = _read_table(root)
    assert list(rows[0]) == ["slice", "channel", "row", "col", "x_um", "y_um", "file"]
    assert len(rows) == p.slices * len(p.channels) * p.rows * p.cols
    for row in rows[:5]:
        img = tifffile.imread(root / row["file"])
        assert img.dtype == np.uint16 and img.shape == p.tile_shape
    sample = read_raw_sample(str(root))  # the package's own validating reader
    assert sample.acquisition.channels == list(p.channels)
    assert sample.acquisition.tile_shape == p.tile_shape
    acq = json.loads((root / "acquisition.json").read_text())
    assert acq["modality"] == "STPT" and acq["optical_sections"] == 1


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    for name, params in (("a", MINI), ("b", MINI), ("c", SynthParams(**{**MINI.to_dict(), "seed": 4}))):
        synthesize(tmp_path / name, params)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 2 + 2 * 2 * 2 + 4 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    tiles = [k for k in a if k.startswith("tiles/")]
    assert all(a[k] != c[k] for k in tiles)
    assert a["truth/truth.json"] != c["truth/truth.json"]


def test_rewriting_a_sample_replaces_the_earlier_run(tmp_path):
    synthesize(tmp_path / "s", MINI)
    synthesize(tmp_path / "s", SynthParams(**{**MINI.to_dict(), "slices": 1}))
    listed = {row["file"] for row in _read_table(tmp_path / "s")}
    on_disk = {f"tiles/{p.name}" for p in (tmp_path / "s" / "tiles").iterdir()}
    assert listed == on_disk and len(listed) == 2 * 2
    assert load_truth(tmp_path / "s").clean.shape[0] == 1


def test_recorded_positions_carry_the_stage_error(small):
    root, truth = small
    p = truth.params
    true = truth.positions_array()
    recorded = truth.positions_array(recorded=True)
    err = true - recorded
    assert p.stage_error_px / 2 < err.std() < 2 * p.stage_error_px
    assert np.abs(err).max() <= 3 * p.stage_error_px
    assert (true >= 0).all()
    assert (true[..., 0] + p.tile_shape[0] <= truth.mosaic_shape[0]).all()
    assert (true[..., 1] + p.tile_shape[1] <= truth.mosaic_shape[1]).all()
    for row in _read_table(root):
        s, r, c = int(row["slice"]), int(row["row"]), int(row["col"])
        yx = np.array([float(row["y_um"]), float(row["x_um"])]) / p.pixel_size_um
        np.testing.assert_allclose(yx, recorded[s, r, c], atol=1e-3)


def _expected_raw(truth, s: int, ch: int, top_left: np.ndarray) -> np.ndarray:
    """Forward model on the clean truth plane: flat * clean(T + p + D(p)) + stray + dark."""
    dy, dx = displacement_field(truth.params.tile_shape, truth.distortion)
    yy, xx = np.indices(truth.params.tile_shape, dtype=np.float64)
    scene = ndi.map_coordinates(
        truth.clean[s, ch].astype(np.float64), [yy + dy + top_left[0], xx + dx + top_left[1]], order=3, mode="nearest"
    )
    return truth.flat * scene + truth.stray + truth.dark


@pytest.mark.parametrize("ch", [0, 1])
def test_tiles_follow_the_forward_model_at_the_true_position(small, ch):
    root, truth = small
    true, recorded = truth.positions_array(), truth.positions_array(recorded=True)
    inner = (slice(8, -8), slice(8, -8))  # sampled points may leave the truth frame at its edge
    for r in range(truth.params.rows):
        for c in range(truth.params.cols):
            raw = _tile(root, 1, ch, r, c)
            chi2 = []
            for pos in (true[1, r, c], recorded[1, r, c]):
                model = _expected_raw(truth, 1, ch, pos)
                var = truth.gain * (model - truth.dark) + truth.read_noise**2 + 1 / 12
                chi2.append(float(np.mean(((raw - model) ** 2 / var)[inner])))
            assert 0.85 < chi2[0] < 1.2, chi2
            assert chi2[1] > 10 * chi2[0], chi2


def test_true_positions_are_exact_to_a_small_fraction_of_a_pixel(small):
    root, truth = small
    true = truth.positions_array()
    raw = _tile(root, 0, 0, 1, 0)
    inner = (slice(8, -8), slice(8, -8))

    def chi2(pos):
        model = _expected_raw(truth, 0, 0, pos)
        var = truth.gain * (model - truth.dark) + truth.read_noise**2 + 1 / 12
        return float(np.mean(((raw - model) ** 2 / var)[inner]))

    at_truth = chi2(true[0, 1, 0])
    for step in ([0.1, 0], [-0.1, 0], [0, 0.1], [0, -0.1]):
        assert chi2(true[0, 1, 0] + np.array(step)) > 1.1 * at_truth


def test_calibrated_tile_correlates_best_with_clean_plane_at_true_position(small):
    root, truth = small
    true, recorded = truth.positions_array(), truth.positions_array(recorded=True)
    yy, xx = np.indices(truth.params.tile_shape, dtype=np.float64)
    inner = (slice(8, -8), slice(8, -8))
    for r in range(truth.params.rows):
        for c in range(truth.params.cols):
            raw = _tile(root, 2, 1, r, c)
            calibrated = undistort((raw - truth.dark - truth.stray) / truth.flat, truth.distortion, order=3)
            corr = []
            for pos in (true[2, r, c], recorded[2, r, c]):
                crop = ndi.map_coordinates(
                    truth.clean[2, 1].astype(np.float64), [yy + pos[0], xx + pos[1]], order=3, mode="nearest"
                )
                corr.append(np.corrcoef(calibrated[inner].ravel(), crop[inner].ravel())[0, 1])
            assert corr[0] > 0.97 and corr[0] > corr[1], corr


def test_distortion_is_a_few_pixels_at_the_corners(small):
    _, truth = small
    assert 1.5 < max_displacement(truth.params.tile_shape, truth.distortion) < 4.0
    assert max_displacement(demo_params().tile_shape, demo_params().resolved_distortion()) < 4.0


def test_slice_offsets_follow_the_drift(small):
    _, truth = small
    p = truth.params
    off = truth.slice_offsets_px
    assert off.shape == (p.slices, 2)
    np.testing.assert_array_equal(off[0], [0.0, 0.0])
    steps = np.diff(off, axis=0)
    assert np.all(np.abs(steps - np.asarray(p.drift_px_per_slice)) < 5 * p.drift_walk_px)


def test_beads_are_cut_by_consecutive_slices(small):
    _, truth = small
    p = truth.params
    beads = truth.beads.set_index("bead_id")
    det = truth.bead_detections
    assert len(beads) >= 4 and det.groupby("slice").size().min() >= 4
    z = (det["slice"] + 0.5) * p.slice_thickness_um
    r_um = beads.loc[det["bead_id"], "radius_um"].to_numpy()
    dz = z.to_numpy() - beads.loc[det["bead_id"], "z_um"].to_numpy()
    np.testing.assert_allclose(det["radius_px"], np.sqrt(r_um**2 - dz**2) / p.pixel_size_um)
    assert (det["radius_px"] <= r_um / p.pixel_size_um).all()
    for bead_id, group in det.groupby("bead_id"):
        slices = np.sort(group["slice"].to_numpy())
        assert len(slices) >= 2 and np.all(np.diff(slices) == 1), (bead_id, slices)
    # detections are the world bead moved by the slice drift
    world = beads.loc[det["bead_id"], ["y_px", "x_px"]].to_numpy()
    np.testing.assert_allclose(det[["y_px", "x_px"]].to_numpy(), world + truth.slice_offsets_px[det["slice"]])


def test_beads_are_bright_discs_in_agarose_not_touching(small):
    _, truth = small
    h, w = truth.mosaic_shape
    yy, xx = np.ogrid[:h, :w]
    for k, group in truth.bead_detections.groupby("slice"):
        pts = group[["y_px", "x_px"]].to_numpy()
        rad = group["radius_px"].to_numpy()
        for i, (y, x) in enumerate(pts):
            disc = np.hypot(yy - y, xx - x) <= rad[i] + 2
            assert not truth.tissue[k][disc].any()
            for ch in range(truth.clean.shape[1]):
                core = np.hypot(yy - y, xx - x) <= rad[i] - 3
                np.testing.assert_allclose(truth.clean[k, ch][core].mean(), truth.params.bead_intensity, rtol=0.01)
            d = np.hypot(*(pts - pts[i]).T)
            d[i] = np.inf
            assert np.all(d > rad + rad[i])


def test_nuclei_lie_inside_the_tissue(small):
    _, truth = small
    labels = truth.nuclei
    assert labels.dtype == np.int32 and labels.shape == (truth.params.slices, *truth.mosaic_shape)
    assert not (labels > 0)[~truth.tissue].any()
    ids = [set(np.unique(labels[k])) - {0} for k in range(labels.shape[0])]
    assert all(len(s) > 100 for s in ids)
    assert not set.intersection(*ids)  # ids unique over the sample
    nuclear = truth.clean[:, 0]
    assert nuclear[labels > 0].mean() > 1200 > 3 * nuclear[truth.tissue & (labels == 0)].mean()
    frac = truth.tissue.mean(axis=(1, 2))
    assert np.all((frac > 0.45) & (frac < 0.65))


def test_load_truth_round_trips(small):
    root, truth = small
    back = load_truth(root)
    assert back.params == truth.params and back.distortion == truth.distortion
    assert back.mosaic_shape == truth.mosaic_shape
    assert back.tile_positions_px == truth.tile_positions_px
    np.testing.assert_array_equal(back.slice_offsets_px, truth.slice_offsets_px)
    np.testing.assert_array_equal(back.nuclei, truth.nuclei)
    np.testing.assert_array_equal(back.clean, truth.clean)
    np.testing.assert_array_equal(back.flat, truth.flat)
    assert back.clean.dtype == np.float32
    assert back.beads.equals(truth.beads) and back.bead_detections.equals(truth.bead_detections)


def test_empty_fraction_leaves_bare_agarose(tmp_path):
    params = SynthParams(slices=2, rows=2, cols=4, tile_shape=(128, 128), empty_fraction=0.5, seed=1)
    truth = synthesize(tmp_path / "e", params)
    x_empty = truth.mosaic_shape[1] * 0.5
    right = slice(int(x_empty) + 10, None)
    assert not truth.tissue[:, :, right].any()
    assert (truth.bead_detections["x_px"] + truth.bead_detections["radius_px"] < x_empty).all()
    bare = truth.clean[:, :, :, right]
    assert bare.max() < 60 and bare.min() > 40


def test_params_validate_and_round_trip():
    with pytest.raises(ValueError, match="overlap"):
        SynthParams(overlap=0.6)
    with pytest.raises(ValueError, match="slices"):
        SynthParams(slices=0)
    with pytest.raises(ValueError, match="bead_radius_um"):
        SynthParams(bead_radius_um=(50.0, 40.0))
    p = SynthParams(channels=["a", "b", "c"], tile_shape=[64, 96])
    assert p.channels == ("a", "b", "c") and p.tile_shape == (64, 96)
    assert SynthParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    demo = demo_params()
    assert (demo.slices, demo.rows, demo.cols, demo.tile_shape) == (6, 3, 3, (512, 512))
