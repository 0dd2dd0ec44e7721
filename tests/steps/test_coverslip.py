"""Samples without beads and single-section coverslip grids: warnings not errors, bounded stitching memory."""

from __future__ import annotations

import json
import sys
import threading
import time
from types import SimpleNamespace

import cloudpickle
import numpy as np
import pytest

from imaxt_pipeline.acquisition import Acquisition
from imaxt_pipeline.errors import DataWarning
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.steps import StepContext, step_module
from imaxt_pipeline.steps.stitch import MAX_BATCH_PAIRS
from imaxt_pipeline.synth import SynthParams, synthesize
from imaxt_pipeline.testing import uploaded_sample, write_raw_sample


def _acq(slices, channels=("DAPI",), **extra):
    return Acquisition(
        sample="cover",
        modality="AXIO",
        pixel_size_um=1.0,
        slice_thickness_um=15.0,
        tile_shape=(64, 64),
        overlap=0.1,
        channels=list(channels),
        rows=1,
        cols=1,
        slices=slices,
        **extra,
    )


def _run(ctx, name, **kw):
    mod = step_module(name)
    return mod.run(ctx, mod.Params(**kw))


def test_a_sample_without_beads_is_registered_with_zero_offsets_and_a_warning(tmp_path, dask_client):
    acq = _acq(3, beads=False)
    out = OutputStore(str(tmp_path / "out.zarr"))
    mosaic = out.create_image(
        "mosaic", channel_names=acq.channels, shape_czyx=(1, 3, 48, 56), scale_zyx_um=(15, 1, 1), dtype="float32"
    )
    for s in range(3):
        mosaic.write_plane(s, np.full((1, 48, 56), s + 1.0, np.float32))
    ctx = StepContext(raw=SimpleNamespace(acquisition=acq), output=out, client=dask_client, slices=[0, 1, 2])
    with pytest.warns(DataWarning, match=r"^beads: sample 'cover' has no beads") as record:
        beads = _run(ctx, "beads")
    assert len(record) == 1 and beads.metrics["skipped"] == "no beads" and len(out.read_table("beads")) == 0
    with pytest.warns(DataWarning, match=r"^register: no bead track constrains slices \[1, 2\]") as record:
        _run(ctx, "register")
    assert len(record) == 1 and "no beads" in str(record[0].message) and "\n" not in str(record[0].message)
    meta = out.imaxt_attrs()["register"]
    np.testing.assert_array_equal(meta["slice_offsets_px"], np.zeros((3, 2)))
    assert meta["unconstrained"] == [1, 2]
    out.location.fs.rm(out.location.path("tables/beads.parquet"))  # beads step switched off: register still copes
    with pytest.warns(DataWarning, match=r"slices \[1, 2\]"):
        _run(ctx, "register")
    cube = _run(ctx, "cube", levels=1, chunk=64)
    assert cube.metrics["slices_written"] == [0, 1, 2]
    for s in range(3):
        assert np.all(out.open_image("cube").read_plane(s)[:, 32:80, 32:88] == s + 1.0)


def test_one_section_skips_registration_with_a_warning(tmp_path):
    acq = _acq(1)
    out = OutputStore(str(tmp_path / "out.zarr"))
    ctx = StepContext(raw=SimpleNamespace(acquisition=acq), output=out, client=None, slices=[0])
    with pytest.warns(DataWarning, match=r"^register: the sample has one section; nothing to register"):
        result = _run(ctx, "register")  # no bead table needed
    assert result.metrics["skipped"] == "one section"
    assert out.imaxt_attrs()["register"]["slice_offsets_px"] == [[0.0, 0.0]]


@pytest.mark.slow  # the whole pipeline on a DAPI-only coverslip
def test_single_channel_coverslip_runs_every_step(tmp_path, dask_client):
    raw = tmp_path / "raw"
    params = SynthParams(slices=1, rows=2, cols=2, tile_shape=(128, 128), channels=("DAPI",), n_beads=0, seed=3)
    synthesize(raw, params)
    acq = json.loads((raw / "acquisition.json").read_text())
    (raw / "acquisition.json").write_text(json.dumps({**acq, "beads": False}))
    sample = uploaded_sample(tmp_path, raw)
    with pytest.warns(DataWarning) as record:
        sample.run(client=dask_client, **{"steps.mosaic.levels": 2, "steps.cube.levels": 2})
    messages = sorted(str(w.message).split(":")[0] for w in record)
    assert messages == ["beads", "register"], [str(w.message) for w in record]  # one line each, no error
    out = OutputStore(sample.out, mode="r")
    meta = out.imaxt_attrs()
    assert meta["complete"] and meta["register"]["slice_offsets_px"] == [[0.0, 0.0]]
    assert out.open_image("cube").shape[:2] == (1, 1)
    cells, nuclei = out.read_table("cells"), out.read_table("nuclei")
    assert len(nuclei) > 20 and cells.attrs["cells_from"].startswith("nuclei (grown")
    assert (cells["area_px"] > cells["nucleus_area_px"]).mean() > 0.9
    assert out.root["crops"].shape[:2] == (len(nuclei), 1)
    assert [e["status"] for e in meta["provenance"]] == ["finished"] * 9


# The probes below run on the workers: send them by value (this module is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _install_probe(dask_worker):
    """On a worker: record the tiles each task reads and sample this process's RSS every 10 ms."""
    import psutil
    from distributed.worker import thread_state

    from imaxt_pipeline.io.rawzarr import RawStore

    state = {"reads": {}, "peak": 0, "base": 0, "run": True}
    dask_worker._coverslip_probe = state
    original = RawStore.read_tile

    def read_tile(self, slice_, z, tile):
        key = str(getattr(thread_state, "key", "?"))
        state["reads"].setdefault(key, set()).add(tile)
        return original(self, slice_, z, tile)

    read_tile.original = original
    RawStore.read_tile = read_tile
    proc = psutil.Process()
    state["base"] = state["peak"] = proc.memory_info().rss

    def sample():
        while state["run"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()


def _remove_probe(dask_worker):
    from imaxt_pipeline.io.rawzarr import RawStore

    state = dask_worker.__dict__.pop("_coverslip_probe")
    state["run"] = False
    RawStore.read_tile = RawStore.read_tile.original
    tiles = max((len(v) for k, v in state["reads"].items() if "fuse_block" in k), default=0)
    pairs = max((len(v) for k, v in state["reads"].items() if "_match_batch" in k), default=0)
    return {"fuse": tiles, "match": pairs, "tasks": len(state["reads"]), "grown": state["peak"] - state["base"]}


@pytest.mark.slow  # ~1000 tiles uploaded, stitched and fused
def test_coverslip_grids_stitch_and_fuse_with_bounded_memory(tmp_path, dask_client):
    """12 x 12 and 24 x 24 grids of 64-px tiles: every task reads a bounded set of tiles; peak RSS hardly grows."""
    probes = {}
    for n in (12, 24):
        raw = write_raw_sample(tmp_path / f"raw{n}", slices=1, rows=n, cols=n, tile=64, channels=("DAPI",), seed=n)
        sample = uploaded_sample(tmp_path / f"g{n}", raw)
        dask_client.run(_install_probe)
        try:
            sample.run(
                steps=("stitch", "mosaic"),
                client=dask_client,
                **{"steps.mosaic.chunk": 128, "steps.mosaic.levels": 2, "steps.mosaic.qc": False},
            )
        finally:
            probes[n] = list(dask_client.run(_remove_probe).values())
    reads = {n: {k: max(p[k] for p in per_worker) for k in ("match", "fuse")} for n, per_worker in probes.items()}
    for n, per_worker in probes.items():
        assert sum(p["tasks"] for p in per_worker) >= 16, per_worker  # the work is spread over many tasks
        # a batch of consecutive pairs reads about one tile per pair (capped), a 256-px fusion block <= 7 x 7 tiles
        # (6 x 6 on a regular grid; these tiles are independent noise, so the stitcher places them within its
        # stage scatter and a block may touch one more row or column)
        assert 2 <= reads[n]["match"] <= MAX_BATCH_PAIRS + 2 and 0 < reads[n]["fuse"] <= 49, reads
    small = max(p["grown"] for p in probes[12])
    large = max(p["grown"] for p in probes[24])
    assert large <= 1.5 * small + 64 * 2**20, (small, large)  # 4x the tiles, not 4x the memory
