"""Register/cube wiring: offsets from a bead table, QC, lazy alignment, and the pipeline end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imaxt_pipeline.steps import register
from imaxt_pipeline.testing import processed_sample


def _bead_table(rng, n_slices=8, n_beads=40):
    drift = np.cumsum(rng.normal(0, 3, (n_slices, 2)), axis=0)
    drift -= drift[0]
    rows = []
    for _ in range(n_beads):
        pos, r = rng.uniform(100, 3000, 2), rng.uniform(20, 40)
        s0 = rng.integers(-2, n_slices)
        for s in range(max(s0, 0), min(s0 + 5, n_slices)):
            y, x = pos + drift[s] + rng.normal(0, 0.1, 2)
            rows.append(dict(slice=s, y_px=y, x_px=x, radius_px=r, y_err=0.1, x_err=0.1, good=True))
    rows.append(dict(slice=3, y_px=50.0, x_px=50.0, radius_px=500.0, y_err=0.1, x_err=0.1, good=True))
    return pd.DataFrame(rows), drift


def test_register_table_and_fill_offsets():
    rng = np.random.default_rng(1)
    df, drift = _bead_table(rng)
    out, sol = register.register_table(df, register.Params())
    assert out["radius_outlier"].iloc[-1] and out["bead_id"].iloc[-1] == -1
    assert (out["bead_id"] >= 0).mean() > 0.9
    assert np.abs(sol.offsets - drift).max() < 0.3
    full, err, missing = register.fill_offsets(
        np.array([0, 1, 3]), np.array([[0, 0], [1, 2], [3, 6.0]]), np.full((3, 2), 0.1), 5
    )
    np.testing.assert_allclose(full[2], [2, 4])
    np.testing.assert_allclose(full[4], [3, 6])
    assert missing.tolist() == [2, 4] and np.isnan(err[2]).all()


def _register_ctx(tmp_path, df, slices):
    from imaxt_pipeline.io.output import OutputStore
    from imaxt_pipeline.steps._base import StepContext

    store = OutputStore(str(tmp_path / "out.zarr"))
    store.write_table("beads", df)
    return StepContext(raw=None, output=store, client=None, slices=slices)


def test_register_without_beads_gives_zero_offsets_and_warns(tmp_path):
    from imaxt_pipeline.algorithms.registration import BEAD_COLUMNS
    from imaxt_pipeline.errors import DataWarning

    cols = {c: pd.Series(dtype=bool if c == "fit_ok" else float) for c in BEAD_COLUMNS}
    empty = pd.DataFrame(
        {"slice": pd.Series(dtype=int), **cols, "good": pd.Series(dtype=bool), "bead_id": pd.Series(dtype=int)}
    )
    ctx = _register_ctx(tmp_path, empty, [0, 1, 2])
    with pytest.warns(DataWarning, match=r"slices \[1, 2\]"):
        result = register.run(ctx, register.Params())
    meta = ctx.output.imaxt_attrs()["register"]
    np.testing.assert_array_equal(meta["slice_offsets_px"], np.zeros((3, 2)))
    assert meta["unconstrained"] == [1, 2] and result.metrics["tracks"] == 0
    assert ctx.output.location.exists("qc/register.png")


def test_register_flags_a_slice_without_beads(tmp_path):
    from imaxt_pipeline.errors import DataWarning

    rng = np.random.default_rng(4)
    df, drift = _bead_table(rng, n_slices=6)
    df = df[df["slice"] != 3].reset_index(drop=True)  # slice 3 lost its beads (e.g. a blank section)
    df["slice"] = df["slice"].astype(int)
    ctx = _register_ctx(tmp_path, df, list(range(6)))
    for mode, expected in (("interpolate", 0.5 * (drift[2] + drift[4])), ("zero", np.zeros(2))):
        with pytest.warns(DataWarning, match=r"slices \[3\]"):
            register.run(ctx, register.Params(unconstrained=mode, max_gap=1))
        meta = ctx.output.imaxt_attrs()["register"]
        off = np.array(meta["slice_offsets_px"])
        assert meta["unconstrained"] == [3] and meta["slice_offsets_err_px"][3][0] is None  # NaN -> null
        np.testing.assert_allclose(off[3], expected, atol=0.3)
        keep = [0, 1, 2, 4, 5]
        assert np.abs(off[keep] - drift[keep]).max() < 0.3  # the gap is bridged by tracks skipping slice 3


def _write_bead_sample(root, *, slices=6, tile=200, rows=2, cols=2, overlap=0.1, seed=0):
    """Raw layout of a bead field cut in 15 um slices with a known drift per slice (1 um px).

    Tiles sit exactly at their recorded stage positions, so the mosaic frame is
    the truth frame plus a constant margin; returns (sample dir, drift (S, 2)).
    """
    import csv
    import json

    import tifffile

    from imaxt_pipeline.algorithms.registration import disc_model

    rng = np.random.default_rng(seed)
    step = int(round(tile * (1 - overlap)))
    shape = (step * (rows - 1) + tile, step * (cols - 1) + tile)
    drift = np.cumsum(rng.normal(0, 2.5, (slices, 2)), axis=0)
    drift -= drift[0]
    beads = []
    while len(beads) < 14:
        r = rng.uniform(30, 45)
        c = rng.uniform(25, np.array(shape) - 25)
        if all(np.hypot(*(c - b[:2])) > r + b[2] + 2 for b in beads):
            beads.append(np.array([c[0], c[1], r, rng.uniform(-20, slices * 15 + 20)]))
    yy, xx = np.indices(shape, dtype=float)
    (root / "tiles").mkdir(parents=True)
    acq = {
        "sample": "beads",
        "modality": "STPT",
        "pixel_size_um": 1.0,
        "slice_thickness_um": 15.0,
        "tile_shape": [tile, tile],
        "overlap": overlap,
        "channels": ["tissue", "beads"],
        "rows": rows,
        "cols": cols,
        "slices": slices,
    }
    (root / "acquisition.json").write_text(json.dumps(acq))
    with open(root / "tiles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice", "channel", "row", "col", "x_um", "y_um", "file"])
        for s in range(slices):
            img = np.full(shape, 30.0)
            for y, x, r, zc in beads:
                dz = s * 15.0 - zc
                if abs(dz) < r:
                    img += disc_model([y + drift[s, 0], x + drift[s, 1], np.sqrt(r * r - dz * dz), 1.5, 60, 0], yy, xx)
            for c, plane in enumerate((np.full(shape, 30.0), img)):
                noisy = rng.poisson(plane).astype(np.uint16)
                for r_ in range(rows):
                    for c_ in range(cols):
                        name = f"tiles/s{s}_c{c}_{r_}_{c_}.tif"
                        tifffile.imwrite(root / name, noisy[r_ * step : r_ * step + tile, c_ * step : c_ * step + tile])
                        w.writerow([s, c, r_, c_, c_ * step, r_ * step, name])
    return root, drift


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, dask_client):
    root = tmp_path_factory.mktemp("beadpipe")
    sample, drift = _write_bead_sample(root / "raw")
    done = processed_sample(
        root,
        sample,
        steps=("mosaic", "beads", "register", "cube"),
        client=dask_client,
        **{"steps.mosaic.levels": 2, "steps.cube.levels": 2},
    )
    return done.out, drift


@pytest.mark.slow
def test_pipeline_writes_offsets_table_cube_and_qc(pipeline_run):
    from imaxt_pipeline.io.output import OutputStore

    out, drift = pipeline_run
    store = OutputStore(out, mode="r")
    meta = store.imaxt_attrs()
    offsets = np.array(meta["register"]["slice_offsets_px"], float)
    assert offsets.shape == drift.shape
    np.testing.assert_allclose(offsets[0], 0.0)
    assert np.abs(offsets - drift).max() < 0.5  # slice 0 is the reference in both frames
    table = store.read_table("beads")
    assert {"slice", "y_px", "x_px", "radius_px", "bead_id", "y_err", "x_err"} <= set(table.columns)
    tracked = table[table["bead_id"] >= 0]
    assert tracked.groupby("bead_id")["slice"].nunique().min() >= 2
    assert store.location.exists("qc/register.png")
    cube = store.open_image("cube")
    mosaic = store.open_image("mosaic")
    c, z, h, w = cube.shape
    assert (c, z) == mosaic.shape[:2] and h >= mosaic.shape[2] and w >= mosaic.shape[3]
    scale = store.root["cube"].attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"][1] == pytest.approx(15.0)
    # Aligned: bead centres of a track agree across slices in the cube frame.
    pad = np.array(meta["cube"]["pad_before"])
    assert tracked["inlier"].mean() > 0.8
    for _, grp in tracked[tracked["inlier"]].groupby("bead_id"):
        yx = grp[["y_px", "x_px"]].to_numpy() - offsets[grp["slice"].to_numpy()] + pad
        assert np.ptp(yx, axis=0).max() < 1.0
    # Flux is preserved by the shift (nothing cut off by the canvas).
    k = 3
    np.testing.assert_allclose(cube.read_plane(k)[1].sum(), mosaic.read_plane(k)[1].sum(), rtol=1e-3)


def _frame_shifts(stitched, truth_positions, n_slices):
    """Per slice: mean (stitched - true) tile position, i.e. the translation of that slice's mosaic frame.

    Stitching fixes the tiles of a slice relative to each other; the slice as a
    whole stays anchored to the recorded stage positions (error ~3 px per
    tile), so each slice's mosaic frame is offset from the truth frame by its
    own ~1-2 px. The register step measures bead motion in the mosaic frames,
    i.e. drift plus this frame offset (which is exactly what the cube must undo).
    """
    out = np.zeros((n_slices, 2))
    for k in range(n_slices):
        out[k] = np.mean(
            [np.subtract(v, truth_positions[key]) for key, v in stitched.items() if key.split("/")[0] == str(k)], axis=0
        )
    return out


def _in_mosaic(yx, k, meta, truth):
    """Truth positions of slice ``k`` moved like the tiles that hold them (mean stitched - true tile shift).

    Removes the stitch step's own errors (a few tenths of a px per tile) so that
    the centre error measures the beads step.
    """
    stitched = meta["stitch"]["tile_positions_px"]
    th, tw = meta["acquisition"]["tile_shape"]
    out = np.array(yx, float)
    for i, p in enumerate(yx):
        moves = [
            np.subtract(v, truth.tile_positions_px[key])
            for key, v in stitched.items()
            if key.split("/")[0] == str(k)
            and 0 <= p[0] - truth.tile_positions_px[key][0] < th
            and 0 <= p[1] - truth.tile_positions_px[key][1] < tw
        ]
        out[i] += np.mean(moves, axis=0) if moves else 0.0
    return out


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory, dask_client):
    from imaxt_pipeline.synth import SynthParams

    root = tmp_path_factory.mktemp("synthbeads")
    done = processed_sample(
        root,
        SynthParams(slices=6, rows=2, cols=2, tile_shape=(256, 256), tissue_fraction=0.35, seed=3),
        steps=("calibrate", "stitch", "mosaic", "beads", "register", "cube"),
        client=dask_client,
    )
    return done.out, done.truth


@pytest.mark.slow
def test_synth_end_to_end_beads_and_offsets(synth_run):
    """calibrate -> stitch -> mosaic -> beads -> register -> cube on a seeded synthetic sample with nuclei."""
    from scipy.spatial import cKDTree

    from imaxt_pipeline.io.output import OutputStore

    out, truth = synth_run
    store = OutputStore(out, mode="r")
    meta = store.imaxt_attrs()
    assert meta["beads"]["channel"] == 1  # the nuclear channel 0 also shows the beads, but its nuclei lose
    n = len(truth.slice_offsets_px)
    frames = _frame_shifts(meta["stitch"]["tile_positions_px"], truth.tile_positions_px, n)
    from imaxt_pipeline.steps.params import BeadsParams
    from imaxt_pipeline.testing._sweep_beads import clipped_beads

    table = store.read_table("beads")
    good = table[table["good"]]
    det = truth.bead_detections
    planes = np.asarray(store.open_image("mosaic").array(0)[meta["beads"]["channel"]])
    searched = BeadsParams().min_cut_fraction * BeadsParams().bead_diameter_um / 2  # 1 um px: smallest cut sought
    found_big = n_big = hits = relevant = n_cut = 0
    errs = []
    for k in range(n):
        t, f = det[det["slice"] == k], good[good["slice"] == k]
        yx = _in_mosaic(t[["y_px", "x_px"]].to_numpy(), k, meta, truth)
        # recall over the discs the mosaic holds whole: a disc its data edge cuts is never a good fit
        cut = clipped_beads(
            pd.DataFrame({"slice": k, "y_px": yx[:, 0], "x_px": yx[:, 1], "radius_px": t["radius_px"].to_numpy()}),
            planes,
            margin_px=5.0,  # the rule's reach: the blurred rim's outer edge (2 widths) plus the 2 px next to no data
        )
        big = (t["radius_px"].to_numpy() >= searched) & ~cut
        n_cut += int(cut.sum())
        dist, idx = cKDTree(yx).query(f[["y_px", "x_px"]].to_numpy().reshape(-1, 2), distance_upper_bound=3.0)
        hit = np.isfinite(dist)
        found_big += np.isin(np.flatnonzero(big), idx[hit]).sum()
        n_big += big.sum()
        rel = ~hit | big[np.minimum(idx, len(t) - 1)]  # a find of a small or cut cap is no false positive
        hits, relevant = hits + hit[rel].sum(), relevant + rel.sum()
        errs.extend(dist[hit])
    assert n_big >= 10 and n_cut >= 10  # a small mosaic: its edge cuts many discs
    assert found_big / n_big >= 0.9 and hits / relevant >= 0.95
    assert np.median(errs) <= 0.3
    offsets = np.array(meta["register"]["slice_offsets_px"])
    expected = truth.slice_offsets_px + frames - frames[0]
    assert (np.hypot(*(offsets - expected).T) <= 0.5).sum() >= 5
    assert meta["register"]["unconstrained"] == []
    assert store.open_image("cube").shape[1] == n


def test_register_reports_an_untied_slice_0_and_weakly_tied_slices(tmp_path):
    """Slice 0's beads are tied to nothing (no track: beads moved off by a big drift), slice 3 by one bead only:
    slices 1-3 are solved against each other, slice 0 is unconstrained (a DataWarning), slice 3 weakly tied."""
    from imaxt_pipeline.errors import DataWarning

    rng = np.random.default_rng(7)
    df, drift = _bead_table(rng, n_slices=4, n_beads=30)
    df = df[df["radius_px"] < 100].reset_index(drop=True)  # drop the planted radius outlier
    df.loc[df["slice"] == 0, ["y_px", "x_px"]] += 500.0  # no track reaches slice 0
    first = df[df["slice"] == 3].index
    keep3 = df.loc[first]
    # slice 3 keeps one bead that slice 2 also shows (a lone tie), the others gone
    shared = df[df["slice"] == 2][["y_px", "x_px"]].to_numpy() - drift[2]
    own = keep3[["y_px", "x_px"]].to_numpy() - drift[3]
    lone = keep3.index[np.argmin(np.min(np.hypot(*(own[:, None] - shared[None]).transpose(2, 0, 1)), axis=1))]
    df = df.drop(index=[i for i in first if i != lone]).reset_index(drop=True)
    ctx = _register_ctx(tmp_path, df, list(range(4)))
    with pytest.warns(DataWarning, match=r"slices \[0\]"):
        result = register.run(ctx, register.Params())
    meta = ctx.output.imaxt_attrs()["register"]
    off = np.array(meta["slice_offsets_px"])
    assert meta["unconstrained"] == [0] and meta["slice_offsets_err_px"][0][0] is None
    assert meta["weakly_tied"] == {"3": 1} and result.metrics["weakly_tied"] == [3]
    # slices 1-3 relative to slice 1 (the new reference), slice 0 takes its neighbour's offset
    np.testing.assert_allclose(off[1:] - off[1], drift[1:] - drift[1], atol=0.3)
    np.testing.assert_allclose(off[0], off[1])


def test_beads_cut_by_the_data_edge_are_clipped_or_weighed_and_tie_nothing():
    """A fit the data's edge cuts (``rim_valid`` < 1) leans inwards: 3 px off here, the whole beads' robust clip
    (or ``edge_sigma_px``) keeps it from moving the slice, and a slice tied by cut beads only is solved (with an
    honest error when weighed) but 0 whole beads tie it: the step reports it weakly tied."""
    rng = np.random.default_rng(11)
    df, drift = _bead_table(rng, n_slices=3, n_beads=30)
    df = df[df["radius_px"] < 100].reset_index(drop=True)
    df["rim_valid"] = 1.0
    # slice 1: one more bead, cut, fitted 3 px off (its track also runs through slices 0 and 2)
    extra = [
        dict(
            slice=s,
            y_px=3500.0 + drift[s][0] + 3.0 * (s == 1),
            x_px=3500.0 + drift[s][1],
            radius_px=30.0,
            y_err=0.05,
            x_err=0.05,
            good=True,
            rim_valid=0.6,
        )
        for s in range(3)
    ]
    biased = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    weighed = register.Params(edge_sigma_px=2.0)
    _, sol = register.register_table(biased, weighed)
    assert np.abs(sol.offsets - drift).max() < 0.1
    _, plain = register.register_table(biased, register.Params())  # at its own sigma: clipped by the whole beads
    assert np.abs(plain.offsets - drift).max() < 0.1
    _, trusted = register.register_table(biased, register.Params(clip=1e9))  # neither weighed nor clipped
    assert np.abs(trusted.offsets[1] - drift[1]).max() > np.abs(sol.offsets[1] - drift[1]).max()
    # slice 2 keeps only cut fits: solved from them, with an honest error, and 0 whole beads tie it
    cut2 = df["slice"] == 2
    df.loc[cut2, "rim_valid"] = 0.7
    table, sol = register.register_table(df, weighed)
    assert sol.constrained.all() and np.abs(sol.offsets[2] - drift[2]).max() < 0.5
    assert sol.errors[2].min() > 5 * sol.errors[1].max()
    assert register.tie_counts(table, sol.slices)[2] == 0 and register.tie_counts(table, sol.slices)[1] > 10
