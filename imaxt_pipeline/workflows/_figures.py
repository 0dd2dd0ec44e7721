"""Accuracy figures of a processed synthetic sample against its truth (what the demo prints).

The three figures a structural change must leave unchanged: tile placement error, slice
registration residual, and cell counts. They read only the results contract (root attrs and
tables) and the simulator's truth, so they also score outputs written by older versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DemoFigures:
    """Accuracy of one processed synthetic sample."""

    tile_median_px: float
    tile_max_px: float
    registration_rms_px: float
    registration_max_px: float
    n_cells: int
    n_nuclei: int
    n_nuclei_truth: int
    #: the same after removing each slice's per-axis scale too (what no overlap can measure)
    tile_scale_median_px: float = float("nan")
    tile_scale_max_px: float = float("nan")
    #: the translation-only error the stitch's linear-map sigma from the stage statistics predicts
    predicted_px: float = float("nan")
    linear_applied: bool = False

    def describe(self) -> str:
        linear = "applied" if self.linear_applied else "nominal kept: not significant"
        return (
            f"  tile error vs truth (translation removed per slice): median {self.tile_median_px:.3f} px, "
            f"max {self.tile_max_px:.3f} px (the stage statistics predict {self.predicted_px:.2f} px: "
            f"magnification and shear {linear})\n"
            f"  tile error vs truth (translation and per-axis scale removed): median "
            f"{self.tile_scale_median_px:.3f} px, max {self.tile_scale_max_px:.3f} px\n"
            f"  registration residual vs truth: rms {self.registration_rms_px:.3f} px, "
            f"max {self.registration_max_px:.3f} px\n"
            f"  cells {self.n_cells}, nuclei {self.n_nuclei} (truth nuclei {self.n_nuclei_truth})"
        )


@dataclass(frozen=True)
class FederationFigures:
    """One slide of the demo registered onto its STPT cube, against the simulator's truth.

    ``section`` is the section found (``None`` when registration failed: ``error`` says why),
    ``true_section`` the one the slide was cut from; residuals are of held-out beads, in STPT px
    (``stpt_um`` per px) and µm.
    """

    modality: str
    true_section: int
    section: int | None
    matched_beads: int = 0
    median_px: float = float("nan")
    max_px: float = float("nan")
    stpt_um: float = 1.0
    seconds: float = 0.0
    error: str | None = None

    def describe(self) -> str:
        head = f"  {self.modality}: "
        if self.error is not None:
            return f"{head}not registered ({self.error})"
        verdict = "right" if self.section == self.true_section else "WRONG"
        return (
            f"{head}section {self.section} (truth {self.true_section}, {verdict}), {self.matched_beads} beads matched, "
            f"held-out residual median {self.median_px:.2f} px ({self.median_px * self.stpt_um:.2f} um), "
            f"max {self.max_px:.2f} px ({self.max_px * self.stpt_um:.2f} um), {self.seconds:.1f} s"
        )


def demo_figures(output: str, truth_dir: str | Path, *, storage_options: dict[str, Any] | None = None) -> DemoFigures:
    """Score the output store ``output`` against the truth folder written by ``imaxt synth``.

    The registration residual of slice ``s`` is ``o_s - d_s - f_s``: ``o_s`` the registered
    offset, ``d_s`` the true drift of its content and ``f_s`` the mean shift of its stitched
    tiles from their true positions (each slice's mosaic frame is anchored independently).
    It is reported after removing the common mean, as an RMS over slices and axes and a max.
    """
    import json

    import pandas as pd
    import zarr

    truth: dict[str, Any] = json.loads((Path(truth_dir) / "truth.json").read_text())
    root = zarr.open_group(output, mode="r", storage_options=storage_options).attrs.asdict()
    attrs: dict[str, Any] = dict(root["imaxt"])  # type: ignore[arg-type]  # JSON union: a mapping here
    solved = attrs["stitch"]["tile_positions_px"]
    true = truth["tile_positions_px"]
    errors: list[float] = []
    scale_errors: list[float] = []
    frame: dict[int, np.ndarray[Any, Any]] = {}
    for s in sorted({int(k.split("/")[0]) for k in solved}):
        keys = [k for k in solved if int(k.split("/")[0]) == s]
        at = np.array([true[k] for k in keys], np.float64)
        diff = np.array([solved[k] for k in keys]) - at
        frame[s] = diff.mean(axis=0)
        errors += np.hypot(*(diff - frame[s]).T).tolist()
        scale_errors += np.hypot(*_scale_removed(diff, at).T).tolist()
    mag = attrs["stitch"].get("magnification") or {}
    offsets = np.asarray(attrs["register"]["slice_offsets_px"], np.float64)
    drift = np.asarray(truth["slice_offsets_px"], np.float64)
    resid = np.array([offsets[s] - drift[s] - frame[s] for s in sorted(frame)])
    resid -= resid.mean(axis=0)
    tables = output.rstrip("/") + "/tables"
    n_cells = len(pd.read_parquet(f"{tables}/cells.parquet", storage_options=storage_options))
    n_nuclei = len(pd.read_parquet(f"{tables}/nuclei.parquet", storage_options=storage_options))
    return DemoFigures(
        tile_median_px=float(np.median(errors)),
        tile_max_px=float(np.max(errors)),
        registration_rms_px=float(np.sqrt(np.mean(resid**2))),
        registration_max_px=float(np.abs(resid).max()),
        n_cells=n_cells,
        n_nuclei=n_nuclei,
        n_nuclei_truth=int(sum(truth["n_nuclei"])),
        tile_scale_median_px=float(np.median(scale_errors)),
        tile_scale_max_px=float(np.max(scale_errors)),
        predicted_px=float(mag.get("predicted_linear_error_px", float("nan"))),
        linear_applied=any(mag.get("applied", ())) or any(mag.get("shear_applied", ())),
    )


def _scale_removed(diff: np.ndarray[Any, Any], at: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``diff`` (tiles, 2) less its least-squares translation and per-axis scale about the tiles ``at``."""
    out = np.array(diff, np.float64)
    for ax in range(2):
        lever = at[:, ax] - at[:, ax].mean()
        design = np.stack([np.ones(len(at)), lever], axis=1) if np.ptp(lever) > 0 else np.ones((len(at), 1))
        out[:, ax] -= design @ np.linalg.lstsq(design, out[:, ax], rcond=None)[0]
    return out
