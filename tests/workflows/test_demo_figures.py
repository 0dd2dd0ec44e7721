"""The demo's accuracy figures: translation-only and translation + scale errors, and the stage's prediction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import zarr

from imaxt_pipeline.workflows._figures import demo_figures


def _sample(tmp_path, scale, noise, seed=0):
    """An output store and truth folder: 2 slices of 3 x 3 tiles solved at ``1 + scale`` with ``noise`` px."""
    rng = np.random.default_rng(seed)
    true, solved, drift, offsets = {}, {}, [], []
    for s in range(2):
        shift = rng.uniform(-5, 5, 2)
        drift.append(rng.uniform(-3, 3, 2).tolist())
        for r in range(3):
            for c in range(3):
                p = np.array([r * 460.0, c * 460.0]) + rng.normal(0, 4, 2)
                true[f"{s}/{r}/{c}"] = p.tolist()
                solved[f"{s}/{r}/{c}"] = (p * (1 + scale) + shift + rng.normal(0, noise, 2)).tolist()
        mine = [k for k in true if k.startswith(f"{s}/")]
        frame = np.mean([np.subtract(solved[k], true[k]) for k in mine], axis=0)
        offsets.append((np.array(drift[-1]) + frame).tolist())  # register sees the drift and the slice's frame
    out = tmp_path / "out.zarr"
    root = zarr.open_group(str(out), mode="w")
    mag = {"predicted_linear_error_px": 0.68, "applied": [False, False], "shear_applied": [False, False]}
    root.attrs["imaxt"] = {
        "stitch": {"tile_positions_px": solved, "magnification": mag},
        "register": {"slice_offsets_px": offsets},
    }
    (out / "tables").mkdir()
    pd.DataFrame({"label": [1, 2, 3]}).to_parquet(out / "tables" / "cells.parquet")
    pd.DataFrame({"label": [1, 2]}).to_parquet(out / "tables" / "nuclei.parquet")
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "truth.json").write_text(
        json.dumps({"tile_positions_px": true, "slice_offsets_px": drift, "n_nuclei": [1, 1]})
    )
    return str(out), truth


def test_a_scale_the_overlaps_cannot_see_is_told_apart_from_placement_error(tmp_path):
    out, truth = _sample(tmp_path, scale=2e-3, noise=0.01)
    fig = demo_figures(out, truth)
    # 0.2 % over +-460 px levers: ~0.9 px translation-only, the noise once the scale is removed
    assert 0.5 < fig.tile_median_px < 1.5 and fig.tile_max_px > 1.0
    assert fig.tile_scale_median_px < 0.03 and fig.tile_scale_max_px < 0.06
    assert fig.registration_rms_px < 1e-9  # offsets = drift + each slice's frame, by construction
    assert (fig.n_cells, fig.n_nuclei, fig.n_nuclei_truth) == (3, 2, 2)
    assert fig.predicted_px == 0.68 and not fig.linear_applied
    text = fig.describe()
    assert "predict 0.68 px" in text and "nominal kept" in text and "per-axis scale removed" in text


def test_placement_errors_stay_once_the_scale_is_removed(tmp_path):
    fig = demo_figures(*_sample(tmp_path, scale=0.0, noise=0.3))
    # no scale: both figures measure the same per-tile error (~0.3 px per axis), the scale fit taking a little
    assert 0.2 < fig.tile_scale_median_px <= fig.tile_median_px * 1.05
    assert fig.tile_scale_median_px > 0.6 * fig.tile_median_px
