"""A tiny raw-layout writer for reader/uploader tests (independent of the simulator)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import tifffile


def write_raw_sample(
    root: Path,
    *,
    slices: int = 2,
    rows: int = 2,
    cols: int = 2,
    tile: int = 32,
    channels: tuple[str, ...] = ("a", "b"),
    seed: int = 0,
) -> Path:
    """Write random uint16 tiles in the generic raw layout; return the sample folder."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "tiles").mkdir(parents=True, exist_ok=True)
    acq = {
        "sample": "tiny",
        "modality": "STPT",
        "pixel_size_um": 1.0,
        "slice_thickness_um": 15.0,
        "tile_shape": [tile, tile],
        "overlap": 0.1,
        "channels": list(channels),
        "rows": rows,
        "cols": cols,
        "slices": slices,
    }
    (root / "acquisition.json").write_text(json.dumps(acq))
    step = tile * 0.9
    with open(root / "tiles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice", "channel", "row", "col", "x_um", "y_um", "file"])
        for s in range(slices):
            for c in range(len(channels)):
                for r in range(rows):
                    for col in range(cols):
                        name = f"tiles/s{s:03d}_c{c}_r{r}_c{col}.tif"
                        tifffile.imwrite(root / name, rng.integers(0, 4000, (tile, tile), dtype=np.uint16))
                        w.writerow([s, c, r, col, f"{col * step:.2f}", f"{r * step:.2f}", name])
    return root


def rewrite_csv(root: Path, transform) -> None:
    """Apply ``transform(rows) -> rows`` to tiles.csv (header excluded)."""
    path = Path(root) / "tiles.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *transform(rows[1:])])
