"""The skeleton run end to end on a real multi-process LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from imaxt_pipeline.config import load_config
from imaxt_pipeline.errors import ConfigError, StoreError
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.pipeline import run_pipeline
from imaxt_pipeline.testing import only_steps, processed_sample, write_raw_sample

ONLY_MOSAIC = only_steps("mosaic")


@pytest.fixture(scope="module")
def processed(tmp_path_factory, dask_client):
    root = tmp_path_factory.mktemp("pipe")
    sample = write_raw_sample(root / "raw", slices=2, rows=2, cols=2, tile=40)  # step 36 px: integer
    done = processed_sample(root, sample, client=dask_client, **{"steps.mosaic.levels": 2}, **ONLY_MOSAIC)
    return sample, done.out, done.summaries[0]


@pytest.mark.slow
def test_mosaic_places_tiles_at_stage_positions(processed):
    sample, out, _ = processed
    mosaic = zarr.open_group(out, mode="r")["mosaic/0"]
    margin = 16
    t00 = tifffile.imread(sample / "tiles" / "s001_c1_r0_c0.tif").astype(np.float32)
    t01 = tifffile.imread(sample / "tiles" / "s001_c1_r0_c1.tif").astype(np.float32)
    plane = mosaic[1, 1]
    # Only tile (0, 0) covers its first 36 columns of rows 0..35; the overlap is the mean.
    np.testing.assert_allclose(plane[margin : margin + 36, margin : margin + 36], t00[:36, :36], rtol=1e-6)
    np.testing.assert_allclose(
        plane[margin : margin + 36, margin + 36 : margin + 40], (t00[:36, 36:] + t01[:36, :4]) / 2, rtol=1e-6
    )
    assert plane[:margin].max() == 0


@pytest.mark.slow
def test_output_is_valid_ngff_and_readable_by_ome_zarr(processed):
    _, out, _ = processed
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    group = zarr.open_group(f"{out}/mosaic", mode="r")
    model = Image.from_zarr(group)
    axes = [a.name for a in model.ome_attributes.multiscales[0].axes]
    assert axes == ["c", "z", "y", "x"]
    nodes = list(Reader(parse_url(f"{out}/mosaic"))())
    data = nodes[0].data
    assert len(data) == 2 and data[0].shape[:2] == (2, 2)
    assert data[1].shape[-1] == -(-data[0].shape[-1] // 2)
    scale = group.attrs["ome"]["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, 15.0, 2.0, 2.0]


@pytest.mark.slow
def test_provenance_entries_are_complete(processed):
    _, out, summary = processed
    meta = zarr.open_group(out, mode="r").attrs["imaxt"]
    names = [p["name"] for p in meta["provenance"]]
    assert names == ["mosaic"]
    entry = meta["provenance"][0]
    for key in ("software", "parameters", "inputs", "start", "end", "host"):
        assert entry[key], key
    assert entry["software"]["dask"] and entry["parameters"]["levels"] == 2
    assert len(entry["inputs"]["raw_sha256"]) == 64
    assert entry["start"] <= entry["end"] and entry["start"].endswith("+00:00")
    assert meta["complete"] is True and meta["slices_done"] == [0, 1]
    assert summary.slices == [0, 1]


def test_output_records_the_results_format_version(processed):
    from imaxt_pipeline.io.output import FORMAT_VERSION

    _, out, _ = processed
    assert zarr.open_group(out, mode="r").attrs["imaxt"]["format_version"] == FORMAT_VERSION == "1.0"


def test_config_import_loads_no_step_module():
    """The configuration validates every step's parameters without importing a step (or numpy)."""
    import ast
    import subprocess
    import sys

    from imaxt_pipeline.steps import STEP_ORDER

    code = (
        "import sys, imaxt_pipeline.config as c; c.load_config(None, input_url='a', output_url='b'); "
        "print(sorted(m for m in sys.modules if m.startswith('imaxt_pipeline.steps.') or m in ('numpy', 'zarr')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    modules = ast.literal_eval(loaded.strip())
    assert "imaxt_pipeline.steps.params" in modules
    # No step module and no heavy dependency: shared light helpers of the steps package (private) are fine.
    assert not [m for m in modules if m.rsplit(".", 1)[-1] in STEP_ORDER or m in ("numpy", "zarr")], modules


def test_missing_input_store_is_a_clear_error(tmp_path):
    config = load_config(None, input_url=str(tmp_path / "nope.zarr"), output_url=str(tmp_path / "o.zarr"))
    with pytest.raises(StoreError, match="nope.zarr: no raw Zarr store here"):
        run_pipeline(config)
    assert not (tmp_path / "o.zarr").exists()


def test_config_rejects_unknown_keys_and_reads_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("input_url: a\noutput_url: b\nsteps:\n  mosaic:\n    levels: 4\n")
    assert load_config(path).steps.mosaic.levels == 4
    assert load_config(path, **{"steps.mosaic.levels": 2}).steps.mosaic.levels == 2
    path.write_text("input_url: a\noutput_url: b\nsteps:\n  mosaik: {}\n")
    with pytest.raises(ConfigError, match="steps.mosaik: Extra inputs are not permitted"):
        load_config(path)


@pytest.mark.slow
def test_slices_rewritten_by_a_step_are_redone_downstream(tmp_path, dask_client, monkeypatch):
    """A refined registration moves earlier cube planes: segmentation etc. must redo those slices."""
    import types

    from imaxt_pipeline import pipeline
    from imaxt_pipeline.steps import StepResult

    sample = write_raw_sample(tmp_path / "raw", slices=3, rows=1, cols=1, tile=16)
    store = str(tmp_path / "raw.zarr")
    upload(str(sample), store, progress=False)
    seen: dict[str, list[int]] = {}

    def fake(name, rewritten=()):
        def run(ctx, params):
            seen[name] = list(ctx.slices)
            return StepResult(rewritten_slices=list(rewritten))

        return types.SimpleNamespace(run=run)

    modules = {"cube": fake("cube", rewritten=[0, 2]), "segment": fake("segment"), "mosaic": fake("mosaic")}
    monkeypatch.setattr(pipeline, "step_module", lambda name: modules[name])
    enabled = only_steps(*modules)
    config = load_config(None, input_url=store, output_url=str(tmp_path / "o.zarr"), slices=[2], **enabled)
    run_pipeline(config, client=dask_client)
    assert seen == {"mosaic": [2], "cube": [2], "segment": [0, 2]}
    meta = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["imaxt"]
    assert [p["slices"] for p in meta["provenance"]] == [[2], [2], [0, 2]]
    assert meta["slices_done"] == [2]


def test_provenance_of_an_interrupted_attempt_is_marked_when_the_next_run_starts(tmp_path, monkeypatch):
    """A step killed mid-way leaves its entry ``running``; the next run marks it ``interrupted``."""
    import types

    from imaxt_pipeline import pipeline
    from imaxt_pipeline.steps import StepResult

    sample = write_raw_sample(tmp_path / "raw", slices=1, rows=1, cols=1, tile=16)
    store = str(tmp_path / "raw.zarr")
    upload(str(sample), store, progress=False)

    def killed(ctx, params):
        raise KeyboardInterrupt  # what a killed process leaves behind: no end, no status change

    steps = {"calibrate": types.SimpleNamespace(run=lambda ctx, params: StepResult()), "mosaic": None}
    steps["mosaic"] = types.SimpleNamespace(run=killed)
    monkeypatch.setattr(pipeline, "step_module", lambda name: steps[name])
    config = load_config(None, input_url=store, output_url=str(tmp_path / "o.zarr"), **only_steps(*steps))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, client=object())
    meta = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["imaxt"]
    assert [(p["name"], p["status"], p["end"] is None) for p in meta["provenance"]] == [
        ("calibrate", "finished", False),
        ("mosaic", "running", True),
    ]
    assert meta["complete"] is False

    steps["mosaic"] = types.SimpleNamespace(run=lambda ctx, params: StepResult())
    run_pipeline(config, client=object())
    meta = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["imaxt"]
    assert [(p["name"], p["status"]) for p in meta["provenance"]] == [
        ("calibrate", "finished"),
        ("mosaic", "interrupted"),
        ("calibrate", "finished"),
        ("mosaic", "finished"),
    ]
    assert meta["complete"] is True


def test_a_failed_step_is_recorded_as_failed(tmp_path, monkeypatch):
    import types

    from imaxt_pipeline import pipeline

    sample = write_raw_sample(tmp_path / "raw", slices=1, rows=1, cols=1, tile=16)
    store = str(tmp_path / "raw.zarr")
    upload(str(sample), store, progress=False)

    def broken(ctx, params):
        raise StoreError("tiles tile (slice 0, ...): checksum mismatch")

    monkeypatch.setattr(pipeline, "step_module", lambda name: types.SimpleNamespace(run=broken))
    config = load_config(None, input_url=store, output_url=str(tmp_path / "o.zarr"), **only_steps("mosaic"))
    with pytest.raises(StoreError):
        run_pipeline(config, client=object())
    (entry,) = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["imaxt"]["provenance"]
    assert entry["status"] == "failed" and entry["end"] and "checksum mismatch" in entry["error"]


def test_the_step_scope_wraps_each_step_and_sees_its_failure(tmp_path, monkeypatch, dask_client):
    """``pipeline.STEP_SCOPE`` (the GPU job's hook) is entered around each step, in order, and exited on failure."""
    import contextlib
    import types

    from imaxt_pipeline import pipeline
    from imaxt_pipeline.steps import StepResult

    sample = write_raw_sample(tmp_path / "raw", slices=1, rows=1, cols=1, tile=16)
    store = str(tmp_path / "raw.zarr")
    upload(str(sample), store, progress=False)
    events: list[tuple[str, str]] = []

    def step(name, fail=False):
        def run(ctx, params):
            events.append(("run", name))
            if fail:
                raise RuntimeError(f"{name} broke")
            return StepResult()

        return types.SimpleNamespace(run=run)

    @contextlib.contextmanager
    def scope(name, params, ctx):
        events.append(("enter", name))
        try:
            yield
        finally:
            events.append(("exit", name))

    modules = {"mosaic": step("mosaic"), "segment": step("segment", fail=True)}
    monkeypatch.setattr(pipeline, "step_module", lambda name: modules[name])
    config = load_config(None, input_url=store, output_url=str(tmp_path / "o.zarr"), **only_steps(*modules))
    token = pipeline.STEP_SCOPE.set(scope)
    try:
        with pytest.raises(RuntimeError, match="segment broke"):
            run_pipeline(config, client=dask_client)
    finally:
        pipeline.STEP_SCOPE.reset(token)
    assert events == [
        ("enter", "mosaic"), ("run", "mosaic"), ("exit", "mosaic"),
        ("enter", "segment"), ("run", "segment"), ("exit", "segment"),
    ]  # fmt: skip
