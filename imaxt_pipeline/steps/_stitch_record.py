"""Records of the stitch step: how far a solve moves earlier slices, provenance, point tables.

The section-move measure behind the rewrite plan, the provenance of the solve's estimates, and the
stored correspondences (``tables/stitch_points``) both ways. Used only by :mod:`.stitch`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..acquisition import Acquisition
from ..algorithms.optics import DistortionModel, MosaicGeometry
from ..algorithms.stitching import PairMatch, section_move
from ..io import results


def _section_move(
    acq: Acquisition,
    geom: MosaicGeometry,
    sol: Any,
    meta: dict[str, Any],
    written_model: dict[str, float] | None,
    fallback: DistortionModel,
    k: int,
    s: int,
) -> float:
    """How far this solve moves earlier slice ``s`` (solve block ``k``) from what was written for it
    (``acq`` its acquisition, ``geom`` the mosaic canvas).

    Compared over its overlap-placed tiles, under the distortion it was written with (stores from
    before that record: the calibration's as this run found it).
    """
    n_t = acq.n_tiles
    stored = meta.get("tile_positions_px", {})
    keys = [results.position_key(s, *acq.tile_grid(t)) for t in range(n_t)]
    keep = [t for t in range(n_t) if keys[t] in stored and sol.constrained[k * n_t + t]]
    if not keep:
        return 0.0
    new = geom.to_mosaic(sol.positions[k * n_t : (k + 1) * n_t])[keep]
    old = np.asarray([stored[keys[t]] for t in keep], np.float64)
    before = DistortionModel.from_dict(written_model) if written_model else fallback
    return section_move(old, new, before, sol.distortion, acq.tile_shape)


def _provenance(sol: Any, estimated: bool, distortion_source: str | None) -> dict[str, Any]:
    """Which of the solve's estimates came from the data, from what, and with what 1-sigma."""
    mag = sol.magnification
    applied = bool(mag is not None and any(mag.applied))
    sheared = bool(mag is not None and any(mag.shear_applied))
    rec = mag.as_dict() if mag is not None else {}
    fixed = "calibration file" if distortion_source == "file" else "nominal"
    var = np.asarray(getattr(sol, "seam_variation", np.zeros(2)), np.float64)
    return {
        "tile_positions": {"source": "overlaps", "sigma": "position_sigma_px"},
        "distortion": {
            "source": "overlaps" if estimated else fixed,
            "sigma": {k: float(v) for k, v in sol.distortion_sigma.items() if k.startswith("k_")},
        },
        "magnification": {
            "source": "stage statistics" if applied else f"{fixed} (stage statistics not significant)",
            "sigma": None if mag is None else {"y": rec["mag_sigma_y"], "x": rec["mag_sigma_x"]},
        },
        "shear": {
            "source": "stage statistics" if sheared else f"{fixed} (stage statistics not significant)",
            "sigma": None if mag is None else {"yx": rec["shear_sigma_yx"], "xy": rec["shear_sigma_xy"]},
            "predicted_translation_error_px": rec.get("predicted_shear_error_px"),
        },
        # the optics outside the model biases every seam of a direction alike; no loop sees it, so its size
        # is taken from the residual's variation along the seams and carried in each tile's sigma
        "seam_bias": {
            "source": "residual variation along the seams (the bias itself is unseen)",
            "sigma_px": {"horizontal_y": float(var[0]), "vertical_x": float(var[1])},
        },
    }


def _points_table(matches: list[PairMatch], slices: list[int], n_t: int) -> pd.DataFrame:
    rows = []
    for m in matches:
        k = m.reference // n_t
        if k >= len(slices) or not m.ok:
            continue
        for (ya, xa), (yb, xb), w in zip(m.points_ref, m.points_mov, m.point_weights, strict=False):
            rows.append((slices[k], m.reference % n_t, m.moving % n_t, ya, xa, yb, xb, w))
    return pd.DataFrame(rows, columns=["slice", "reference", "moving", "y_ref", "x_ref", "y_mov", "x_mov", "weight"])


def _matches_from_points(df: pd.DataFrame, *, offset: int) -> list[PairMatch]:
    out = []
    for _, g in df.groupby(["reference", "moving"]):
        a, b = int(g["reference"].iloc[0]), int(g["moving"].iloc[0])
        pr = g[["y_ref", "x_ref"]].to_numpy(float)
        pm = g[["y_mov", "x_mov"]].to_numpy(float)
        shift = tuple((pr - pm).mean(axis=0))
        out.append(PairMatch(a + offset, b + offset, shift, shift, 1.0, True, pr, pm, g["weight"].to_numpy(float)))
    return out
