"""One slice of 3 x 3 synthetic tiles read back from the raw layout, with their truth."""

from __future__ import annotations

import csv

import numpy as np
import tifffile

from imaxt_pipeline.synth import SynthParams, synthesize


def one_slice_grid(root, **overrides):
    """Synthesize ``SynthParams(slices=1, rows=3, cols=3, tile_shape=(256, 256), **overrides)`` under ``root``.

    Returns
    -------
    params, truth, tiles (C, 9, H, W) uint16, stage (9, 2) recorded positions in px, true (9, 2) positions in px
    """
    p = SynthParams(slices=1, rows=3, cols=3, **{"tile_shape": (256, 256), **overrides})
    truth = synthesize(root, p)
    tiles = np.zeros((len(p.channels), 9, *p.tile_shape), np.uint16)
    stage = np.zeros((9, 2))
    with open(root / "tiles.csv") as fh:
        for r in csv.DictReader(fh):
            t = int(r["row"]) * 3 + int(r["col"])
            tiles[int(r["channel"]), t] = tifffile.imread(root / r["file"])
            stage[t] = float(r["y_um"]) / p.pixel_size_um, float(r["x_um"]) / p.pixel_size_um
    true = np.array([truth.tile_positions_px[f"0/{t // 3}/{t % 3}"] for t in range(9)])
    return p, truth, tiles, stage, true
