"""Detect and fit the fiducial beads of each slice into the ``beads`` table.

Works per slice on the ``mosaic`` image: the bead channel of one optical
section is cut into overlapping blocks, each block is searched (classical
detector or U-Net) and its candidates are fitted by Poisson maximum
likelihood on a Dask worker. Rows of the processed slices replace any
earlier rows of those slices in ``tables/beads.parquet``; ``bead_id`` is
filled in by the ``register`` step.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from ._base import StepContext, StepParams, StepResult

TABLE = "beads"


class Params(StepParams):
    detector: Literal["classical", "unet"] = Field(default="classical", description="candidate detector")
    model: str | None = Field(default=None, description="U-Net checkpoint path/URL (default: packaged)")
    channel: int | None = Field(default=None, ge=0, description="bead channel; None picks it automatically")
    z: int = Field(default=0, ge=0, description="optical section searched in each slice")
    block: int = Field(default=1024, ge=128, description="core block edge in px")
    min_radius_px: float = Field(default=4.0, gt=0)
    max_radius_px: float = Field(default=80.0, gt=0)
    sigma: float = Field(default=2.0, ge=0, description="classical detector smoothing (px)")
    nsigma: float = Field(default=5.0, gt=0, description="classical detector threshold (background sigmas)")
    min_snr: float = Field(default=3.0, description="reject fits with a lower amplitude/noise")
    max_chi2_ratio: float = Field(default=3.0, gt=1, description="reject fits with chi2 above this x median")


def pick_channel(ctx: StepContext, image) -> int:
    """Bead channel: the largest bright-tail contrast, 99.9th percentile over median, at a coarse level."""
    from ..algorithms.beads import pick_bead_channel

    acq = ctx.raw.acquisition
    level = image.levels - 1
    planes = [s * acq.optical_sections for s in ctx.slices[:3]]
    contrast = []
    for c in range(len(acq.channels)):
        vals = np.concatenate([image.read_plane(p, level=level)[c].ravel() for p in planes])
        vals = vals[vals != 0]
        if vals.size == 0:
            contrast.append(0.0)
            continue
        med = float(np.median(vals))
        contrast.append((float(np.percentile(vals, 99.9)) - med) / max(abs(med), 1e-6))
    return pick_bead_channel(np.asarray(contrast))


def flag_fits(df: pd.DataFrame, *, min_snr: float, max_chi2_ratio: float) -> np.ndarray:
    """Good fits of one slice: converged, bright enough, chi2 not far above the slice median."""
    ok = df["fit_ok"].to_numpy(bool) & np.isfinite(df["y_err"].to_numpy(float))
    if not ok.any():
        return ok
    chi2 = df["chi2"].to_numpy(float)
    med = float(np.median(chi2[ok]))
    return ok & (df["snr"].to_numpy(float) >= min_snr) & (chi2 <= max_chi2_ratio * max(med, 1e-12))


def run(ctx: StepContext, params: Params) -> StepResult:
    from ..parallel.beads import find_beads

    acq = ctx.raw.acquisition
    if params.z >= acq.optical_sections:
        raise ValueError(f"beads.z={params.z} but the sample has {acq.optical_sections} optical sections")
    image = ctx.output.open_image("mosaic")
    channel = params.channel if params.channel is not None else pick_channel(ctx, image)
    if channel >= len(acq.channels):
        raise ValueError(f"beads.channel={channel} but the sample has {len(acq.channels)} channels")
    stack = image.to_dask(0)
    lazy = [find_beads(stack[channel, s * acq.optical_sections + params.z], block=params.block,
                       detector=params.detector, model_source=params.model, min_radius=params.min_radius_px,
                       max_radius=params.max_radius_px, sigma=params.sigma, nsigma=params.nsigma)
            for s in ctx.slices]
    tables = ctx.client.gather(ctx.client.compute(lazy))
    parts = []
    for s, df in zip(ctx.slices, tables):
        df = df.copy()
        df.insert(0, "slice", s)
        df["good"] = flag_fits(df, min_snr=params.min_snr, max_chi2_ratio=params.max_chi2_ratio)
        df["bead_id"] = -1
        parts.append(df)
    new = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if ctx.output.has_table(TABLE):
        old = ctx.output.read_table(TABLE)
        old = old[~old["slice"].isin(ctx.slices)]
        new = pd.concat([old, new], ignore_index=True) if len(old) else new
    new = new.sort_values(["slice", "y_px", "x_px"], kind="stable").reset_index(drop=True)
    ctx.output.update_imaxt_attrs("beads.channel", int(channel))
    ctx.output.update_imaxt_attrs("beads.detector", params.detector)
    path = ctx.output.write_table(TABLE, new)
    this = new[new["slice"].isin(ctx.slices)]
    good = this[this["good"]]
    metrics = {"channel": int(channel), "candidates": int(len(this)), "good": int(len(good)),
               "median_centre_err_px": float(np.median(np.hypot(good["y_err"], good["x_err"]))) if len(good)
               else None}
    ctx.log.info("beads: %d candidates, %d good fits in slices %s", len(this), len(good), ctx.slices)
    return StepResult(inputs=["mosaic"], outputs=[path], metrics=metrics)
