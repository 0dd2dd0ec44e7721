"""Register slices with the beads: tracks, sparse least squares, offsets, QC.

Uses every slice present in the ``beads`` table, so the solution is refined
as slices arrive. Writes ``imaxt.register.slice_offsets_px`` (one ``[dy, dx]``
per slice from 0 to the last slice present; slices that no track connects
are interpolated from their neighbours and listed in
``register.unconstrained``), the bead table with ``bead_id`` filled in, and
``qc/register.png`` (offsets with 1-sigma bands and the bead radius
histogram).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field

from ._base import StepContext, StepParams, StepResult
from .beads import TABLE


class Params(StepParams):
    match_radius_px: float = Field(default=20.0, gt=0, description="gate for matching consecutive slices")
    max_gap: int = Field(default=1, ge=0, description="slices a track may skip")
    min_track: int = Field(default=2, ge=2, description="detections a bead needs to count")
    radius_nsigma: float = Field(default=5.0, gt=0, description="reject radii beyond this many robust sigmas")
    clip: float = Field(default=4.0, gt=0, description="outlier rejection threshold (normalised residual)")
    max_iter: int = Field(default=10, ge=1)
    qc: bool = True


def register_table(df: pd.DataFrame, params: Params):
    """Flag radius outliers, build tracks and solve; returns (table, SliceOffsets)."""
    from ..algorithms.bead_fit import radius_outliers
    from ..algorithms.slice_registration import solve_slice_offsets
    from ..algorithms.tracks import build_tracks

    df = df.copy()
    good = df["good"].to_numpy(bool)
    outlier = np.zeros(len(df), bool)
    outlier[good] = radius_outliers(df["radius_px"].to_numpy(float)[good], nsigma=params.radius_nsigma)
    df["radius_outlier"] = outlier
    use = np.flatnonzero(good & ~outlier)
    ids = np.full(len(df), -1, int)
    yx = df[["y_px", "x_px"]].to_numpy(float)
    ids[use] = build_tracks(df["slice"].to_numpy(int)[use], yx[use], radius=params.match_radius_px,
                            max_gap=params.max_gap, min_length=params.min_track)
    df["bead_id"] = ids
    sigma = df[["y_err", "x_err"]].to_numpy(float)
    sol = solve_slice_offsets(df["slice"].to_numpy(int), yx, ids, sigma=sigma, clip=params.clip,
                              max_iter=params.max_iter)
    df["inlier"] = sol.inlier
    df["resid_y"], df["resid_x"] = sol.residuals[:, 0], sol.residuals[:, 1]
    return df, sol


def fill_offsets(slices: np.ndarray, offsets: np.ndarray, errors: np.ndarray, n: int):
    """Offsets for slices 0..n-1: solved ones as they are, others interpolated (error NaN)."""
    full = np.full((n, 2), np.nan)
    err = np.full((n, 2), np.nan)
    full[slices], err[slices] = offsets, errors
    known = np.all(np.isfinite(full), axis=1)
    missing = np.flatnonzero(~known)
    if known.any() and len(missing):
        idx = np.flatnonzero(known)
        for ax in range(2):
            full[missing, ax] = np.interp(missing, idx, full[idx, ax])
    elif not known.any():
        full[:] = 0.0
    return full, err, missing


def qc_figure(offsets: np.ndarray, errors: np.ndarray, radii: np.ndarray):
    """Dx, Dy vs slice with 1-sigma bands, and the histogram of bead radii."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, 3)
    s = np.arange(len(offsets))
    for ax, k, name in ((axes[0], 1, "Dx"), (axes[1], 0, "Dy")):
        e = np.nan_to_num(errors[:, k], nan=0.0)
        ax.fill_between(s, offsets[:, k] - e, offsets[:, k] + e, color="C0", alpha=0.3, label="1σ")
        ax.plot(s, offsets[:, k], "o-", color="C0", ms=3)
        ax.set_xlabel("slice")
        ax.set_ylabel(f"{name} (px)")
        ax.legend(loc="best", fontsize=8)
    axes[2].hist(radii[np.isfinite(radii)], bins=30, color="C1")
    axes[2].set_xlabel("bead radius (px)")
    axes[2].set_ylabel("detections")
    fig.tight_layout()
    return fig


def run(ctx: StepContext, params: Params) -> StepResult:
    from ..errors import NotEnoughOverlapError

    if not ctx.output.has_table(TABLE):
        raise FileNotFoundError(f"{ctx.output.url}: tables/{TABLE}.parquet missing; run the beads step first")
    df = ctx.output.read_table(TABLE)
    present = np.unique(df["slice"].to_numpy(int)) if len(df) else np.zeros(0, int)
    n = int(present.max()) + 1 if len(present) else 0
    try:
        df, sol = register_table(df, params)
        offsets, errors, missing = fill_offsets(sol.slices, sol.offsets, sol.errors, n)
        chi2 = sol.chi2.tolist()
    except NotEnoughOverlapError as exc:
        ctx.log.warning("register: %s; offsets set to zero", exc)
        df["bead_id"] = -1
        offsets, errors, missing = np.zeros((n, 2)), np.full((n, 2), np.nan), np.arange(n)
        chi2 = [None, None]
    missing = [int(m) for m in missing if m != 0]
    outputs = [ctx.output.write_table(TABLE, df)]
    ctx.output.update_imaxt_attrs("register.slice_offsets_px", offsets.round(4).tolist())
    ctx.output.update_imaxt_attrs("register.slice_offsets_err_px", errors.round(4).tolist())
    ctx.output.update_imaxt_attrs("register.unconstrained", missing)
    ctx.output.update_imaxt_attrs("register.chi2", chi2)
    if params.qc and n:
        outputs.append(ctx.output.write_png("register", qc_figure(offsets, errors, df["radius_px"].to_numpy(float))))
    n_tracks = int(df["bead_id"].max()) + 1 if len(df) else 0
    metrics = {"slices": n, "tracks": n_tracks, "unconstrained": missing, "chi2": chi2,
               "median_err_px": float(np.nanmedian(errors[1:])) if n > 1 and np.isfinite(errors[1:]).any()
               else None}
    ctx.log.info("register: %d slices, %d tracks, chi2 %s", n, n_tracks, chi2)
    return StepResult(inputs=[f"tables/{TABLE}.parquet"], outputs=outputs, metrics=metrics)
