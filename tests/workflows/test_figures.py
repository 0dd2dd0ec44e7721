"""The demo's accuracy figures score a store against truth exactly as defined."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from imaxt_pipeline.workflows._figures import demo_figures


def _store(tmp_path, solved, offsets, n_cells):
    out = tmp_path / "out.zarr"
    group = zarr.open_group(str(out), mode="w")
    group.attrs["imaxt"] = {"stitch": {"tile_positions_px": solved}, "register": {"slice_offsets_px": offsets}}
    (out / "tables").mkdir()
    pd.DataFrame({"label": np.arange(n_cells)}).to_parquet(out / "tables" / "cells.parquet")
    pd.DataFrame({"label": np.arange(n_cells - 1)}).to_parquet(out / "tables" / "nuclei.parquet")
    return str(out)


def test_figures_remove_each_slice_translation_and_frame_shift(tmp_path):
    true = {"0/0/0": [0.0, 0.0], "0/0/1": [0.0, 100.0], "1/0/0": [0.0, 0.0], "1/0/1": [0.0, 100.0]}
    # slice 0: shifted by (5, 5) plus +-0.3 px in y on its two tiles; slice 1: shifted by (-2, 1), exact.
    solved = {"0/0/0": [5.3, 5.0], "0/0/1": [4.7, 105.0], "1/0/0": [-2.0, 1.0], "1/0/1": [-2.0, 101.0]}
    drift = [[0.0, 0.0], [1.0, 2.0]]
    # registered offset = drift + frame shift (+ a common constant and a 0.1 px error on slice 1, y)
    offsets = [[5.0 + 7, 5.0 + 7], [1.0 - 2.0 + 7 + 0.1, 2.0 + 1.0 + 7]]
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "truth.json").write_text(
        json.dumps({"tile_positions_px": true, "slice_offsets_px": drift, "n_nuclei": [3, 4]})
    )
    f = demo_figures(_store(tmp_path, solved, offsets, 10), truth)
    assert f.tile_median_px == pytest.approx(0.15)
    assert f.tile_max_px == pytest.approx(0.3)
    # residuals (after the mean) are +-0.05 in y and 0 in x: rms over 4 values = 0.05 / sqrt(2)
    assert f.registration_max_px == pytest.approx(0.05)
    assert f.registration_rms_px == pytest.approx(0.05 / np.sqrt(2))
    assert (f.n_cells, f.n_nuclei, f.n_nuclei_truth) == (10, 9, 7)
    assert "median 0.150 px" in f.describe()
