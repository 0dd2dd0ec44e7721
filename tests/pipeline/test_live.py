"""Live processing end to end: every step, one slice at a time, as slices land."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.steps.params import CubeParams
from imaxt_pipeline.synth import SynthParams
from imaxt_pipeline.testing import only_steps, uploaded_sample

pytestmark = pytest.mark.slow  # every step through run_pipeline, twice


# Slice 1 processed alone: register has no bead track across slices yet and says so (by design).
@pytest.mark.filterwarnings("ignore:register. no bead track constrains slices:imaxt_pipeline.errors.DataWarning")
def test_slices_processed_one_by_one_give_a_complete_consistent_output(tmp_path, dask_client):
    sample = uploaded_sample(
        tmp_path, SynthParams(slices=2, rows=2, cols=2, tile_shape=(256, 256), tissue_fraction=0.35, seed=7)
    )
    out = sample.out
    cubes = []
    for s in (0, 1):
        sample.run(slices=[s], client=dask_client)
        meta = zarr.open_group(out, mode="r").attrs["imaxt"]
        assert meta["slices_done"] == list(range(s + 1)) and meta["complete"] is (s == 1)
        cubes.append(meta["cube"])

    # The new slice refines registration over every slice so far; an earlier cube slice is rewritten
    # only when its offset (or the canvas, padded to the offsets' range) changed, or when the optics
    # slice 1 refined moved slice 0's tiles (stitch rewrote it, and every later step redid it).
    last = {e["name"]: e for e in meta["provenance"] if 1 in e["slices"]}
    assert last["register"]["metrics"]["slices"] == 2 and last["register"]["metrics"]["unconstrained"] == []
    restitched = last["stitch"]["metrics"]["rewritten_slices"] == [0]
    assert all(last[step]["slices"] == ([0, 1] if restitched else [1]) for step in ("mosaic", "beads", "segment"))
    offsets = np.asarray(meta["register"]["slice_offsets_px"])
    moved = np.max(np.abs(offsets[0] - np.asarray(cubes[0]["written"]["0"]))) > CubeParams().rewrite_tol_px
    regrown = cubes[1]["pad_before"] != cubes[0]["pad_before"]
    assert (0 in last["cube"]["metrics"]["slices_written"]) is (moved or regrown or restitched)
    assert 1 in last["cube"]["metrics"]["slices_written"]
    np.testing.assert_allclose([cubes[1]["written"][k] for k in ("0", "1")], offsets, atol=1e-3)

    output = OutputStore(out, mode="r")
    cells, crops = output.read_table("cells"), output.read_table("crops")
    assert sorted(cells["slice"].unique()) == [0, 1]
    assert len(crops) == len(cells) and crops["row"].tolist() == list(range(len(crops)))
    first_crops = zarr.open_group(out, mode="r")["crops"][:]
    assert first_crops.shape[0] == len(crops) and first_crops.any()
    offsets = np.asarray(meta["register"]["slice_offsets_px"])
    assert offsets.shape == (2, 2) and np.all(np.isfinite(offsets))
    labels = output.open_image("cube/labels/nuclei")
    assert labels.read_plane(0).max() > 0 and labels.read_plane(1).max() > 0

    # Crops of a newly landed slice are appended to the existing array and index.
    import shutil

    shutil.rmtree(tmp_path / "out.zarr" / "crops")
    (tmp_path / "out.zarr" / "tables" / "crops.parquet").unlink()
    only_crops = only_steps("crops")
    for s in (0, 1):
        sample.run(slices=[s], client=dask_client, **only_crops)
    again = output.read_table("crops")
    assert again["row"].tolist() == list(range(len(cells)))
    assert again[["plane", "label"]].values.tolist() == crops[["plane", "label"]].values.tolist()
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["crops"][:], first_crops)
