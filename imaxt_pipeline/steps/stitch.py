"""Step `stitch`: tile positions of each slice (and the shared distortion).

Per slice, every pair of neighbouring tiles is registered on the Dask
cluster (one task per pair, calibrated tiles); then one weighted least-squares
solve on the client gives the tile positions of all slices of this run and,
unless a calibration file fixed it, the distortion model shared by every
tile. Correspondences of earlier slices (``tables/stitch_points``) also
constrain the distortion, so it improves as slices land. An estimated flat
field is then refined from the seams of the best-matched pairs at the solved
positions (tile statistics cannot tell the scene's large-scale variation from
vignetting; overlaps can) and stored for the later steps.

Writes (results contract, ``spec/raw-layout.md``):

- ``imaxt.stitch.tile_positions_px``: ``{"s/r/c": [y, x]}`` top-left of each
  calibrated (undistorted) tile in the slice's mosaic frame;
- ``imaxt.stitch.residuals``: per-slice pair residual statistics (px);
- ``imaxt.stitch.unconstrained``: ``{"s/r/c": true}`` for tiles no informative
  pair ties to a neighbour (empty agarose): left at their stage position;
- ``imaxt.calibrate.distortion`` (when estimated) and ``calibration/flat``
  (when refined, source ``estimated+overlaps``);
- ``tables/stitch_pairs`` (one row per pair, with residuals) and
  ``tables/stitch_points`` (the correspondences).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache, partial

import numpy as np
import pandas as pd
from pydantic import Field

from ..algorithms.calibration import refine_flat
from ..algorithms.stitching import PairMatch, adjacent_pairs
from ..algorithms.stitching import solve_positions
from ..parallel.stitching import match_pairs
from ._base import StepContext, StepParams, StepResult
from .calibrate import load_calibration, save_calibration


class Params(StepParams):
    z: int = Field(default=0, ge=0, description="optical section used for matching")
    max_shift_px: int = Field(default=15, ge=1, description="search radius around the stage prediction")
    block_px: int | None = Field(default=None, ge=8, description="seam length per correspondence (default tile/16)")
    min_ncc: float = Field(default=0.5, description="pairs below carry no information")
    estimate_distortion: bool = Field(default=True, description="fit distortion unless a file gave it")
    fit_magnification: bool = Field(default=False, description="also fit mag_x/mag_y (needs many tiles)")
    prior_sigma_px: float = Field(default=5.0, gt=0, description="stage position error (1 sigma)")
    reject_px: float = Field(default=1.0, gt=0, description="residual floor for outlier rejection")
    refine_flat: bool = Field(default=True, description="refine an estimated flat field from the solved overlaps")
    flat_pairs: int = Field(default=32, ge=1, description="most informative pairs used to refine the flat")


def read_tile(raw, slice_: int, z: int, tile: int) -> np.ndarray:
    """Raw tile (C, H, W) of one plane (module level, so partials pickle)."""
    return np.asarray(raw.tiles[slice_, z, :, tile])


def run(ctx: StepContext, params: Params) -> StepResult:
    from .mosaic import geometry

    acq = ctx.raw.acquisition
    n_t = acq.n_tiles
    cal = load_calibration(ctx.output, len(acq.channels))
    z = min(params.z, acq.optical_sections - 1)
    pairs = adjacent_pairs(acq.rows, acq.cols)
    slices = list(ctx.slices)
    lazy = []
    for k, s in enumerate(slices):
        lazy += match_pairs(partial(read_tile, ctx.raw, s, z), pairs, ctx.raw.stage_px(s, z), cal,
                            index_offset=k * n_t, max_shift=params.max_shift_px, block_size=params.block_px,
                            min_ncc=params.min_ncc)
    matches: list[PairMatch] = list(ctx.client.gather(ctx.client.compute(lazy))) if lazy else []
    stage = [ctx.raw.stage_px(s, z) for s in slices]
    estimate = params.estimate_distortion and cal.source.get("distortion") != "file"
    old = _stored_points(ctx, exclude=slices) if estimate else pd.DataFrame()
    old_slices = sorted(old["slice"].unique().tolist()) if len(old) else []
    for k, s in enumerate(old_slices, start=len(slices)):
        matches += _matches_from_points(old[old["slice"] == s], offset=k * n_t)
        stage.append(ctx.raw.stage_px(s, z))
    stage_all = np.concatenate(stage) if stage else np.zeros((0, 2))
    sol = solve_positions(matches, stage_all, tile_shape=tuple(acq.tile_shape), estimate_distortion=estimate,
                          distortion=cal.distortion, fit_magnification=params.fit_magnification,
                          prior_sigma_px=params.prior_sigma_px, reject_px=params.reject_px)
    geom = geometry(ctx)
    meta = ctx.output.imaxt_attrs().get("stitch", {})
    positions = dict(meta.get("tile_positions_px", {}))
    residuals = dict(meta.get("residuals", {}))
    unconstrained = {k: v for k, v in meta.get("unconstrained", {}).items() if int(k.split("/")[0]) not in slices}
    pair_tab = sol.pairs.copy()
    pair_tab["slice"] = [slices[r // n_t] if r // n_t < len(slices) else old_slices[r // n_t - len(slices)]
                         for r in pair_tab["reference"]]
    for k, s in enumerate(slices):
        pos = geom.to_mosaic(sol.positions[k * n_t:(k + 1) * n_t])
        for t in range(n_t):
            r, c = acq.tile_grid(t)
            positions[f"{s}/{r}/{c}"] = [float(pos[t, 0]), float(pos[t, 1])]
            if not sol.constrained[k * n_t + t]:
                unconstrained[f"{s}/{r}/{c}"] = True
        tab = pair_tab[pair_tab["slice"] == s]
        used = tab[tab["used"]]
        res = used["residual"].to_numpy(float)
        residuals[str(s)] = {"n_pairs": int(len(tab)), "n_informative": int(tab["ok"].sum()),
                             "n_used": int(len(used)),
                             "median_px": float(np.median(res)) if res.size else None,
                             "p95_px": float(np.percentile(res, 95)) if res.size else None,
                             "max_px": float(res.max()) if res.size else None}
    ctx.output.update_imaxt_attrs("stitch", {**meta, "tile_positions_px": positions, "residuals": residuals,
                                             "unconstrained": unconstrained, "distortion": sol.distortion.as_dict(),
                                             "frame": {"origin_px": list(geom.origin_px), "margin": geom.margin,
                                                       "shape": list(geom.shape)}})
    outputs = ["attrs:imaxt.stitch"]
    current = pair_tab[pair_tab["slice"].isin(slices)].copy()
    for col in ("reference", "moving"):
        current[col] = current[col] % n_t
    outputs.append(_merge_table(ctx, "stitch_pairs", current, slices))
    outputs.append(_merge_table(ctx, "stitch_points", _points_table(matches, slices, n_t), slices))
    refine = params.refine_flat and cal.flat is not None and cal.source.get("flat") == "estimated"
    if estimate or refine:
        extra = {k: v for k, v in ctx.output.imaxt_attrs().get("calibrate", {}).items()
                 if k in ("slices_used", "distortion_points")}
        if estimate:
            cal = cal.with_distortion(sol.distortion, "estimated-from-overlaps")
            extra["distortion_points"] = int(sum(len(m.point_weights) for m in matches if m.ok))
            outputs.append("attrs:imaxt.calibrate.distortion")
        if refine:
            cal = _refine_flat(ctx, cal, sol, matches, slices, z, params.flat_pairs)
        outputs += save_calibration(ctx.output, cal, **extra)
    stats = sol.residual_stats()
    ctx.log.info("stitch: slices %s, %s, distortion %s", slices, stats, sol.distortion)
    return StepResult(outputs=outputs, metrics={**stats, "distortion": sol.distortion.as_dict()})


def _refine_flat(ctx: StepContext, cal, sol, matches: list[PairMatch], slices: list[int], z: int, n_pairs: int):
    """The calibration with its flat refined from the seams of this run's best-matched pairs.

    The estimated flat cannot tell the scene's large-scale variation from vignetting; the
    overlaps at the solved positions can (:func:`..algorithms.flat_refine.refine_flat`).
    """
    n_t = ctx.raw.acquisition.n_tiles
    used = [m for m, ok in zip(matches, sol.pairs["used"]) if ok and m.reference < len(slices) * n_t]
    used = sorted(used, key=lambda m: (-len(m.point_weights), -m.ncc))[:n_pairs]
    if not used:
        return cal

    @lru_cache(maxsize=64)
    def corrected(i: int) -> np.ndarray:
        return cal.apply(read_tile(ctx.raw, slices[i // n_t], z, i % n_t))

    shape = tuple(ctx.raw.acquisition.tile_shape)
    gain = refine_flat(corrected, sol.positions, [(m.reference, m.moving) for m in used], distortion=sol.distortion,
                       confidence=cal.confidence(shape))
    flat = cal.flat * gain[None]
    flat /= flat.mean(axis=(1, 2), keepdims=True)
    ctx.log.info("stitch: flat refined from %d seams (gain %.4f-%.4f)", len(used), gain.min(), gain.max())
    return replace(cal, flat=flat.astype(np.float32), source={**cal.source, "flat": "estimated+overlaps"})


def _points_table(matches: list[PairMatch], slices: list[int], n_t: int) -> pd.DataFrame:
    rows = []
    for m in matches:
        k = m.reference // n_t
        if k >= len(slices) or not m.ok:
            continue
        for (ya, xa), (yb, xb), w in zip(m.points_ref, m.points_mov, m.point_weights):
            rows.append((slices[k], m.reference % n_t, m.moving % n_t, ya, xa, yb, xb, w))
    return pd.DataFrame(rows, columns=["slice", "reference", "moving", "y_ref", "x_ref", "y_mov", "x_mov", "weight"])


def _matches_from_points(df: pd.DataFrame, *, offset: int) -> list[PairMatch]:
    out = []
    for (a, b), g in df.groupby(["reference", "moving"]):
        pr = g[["y_ref", "x_ref"]].to_numpy(float)
        pm = g[["y_mov", "x_mov"]].to_numpy(float)
        shift = tuple((pr - pm).mean(axis=0))
        out.append(PairMatch(int(a) + offset, int(b) + offset, shift, shift, 1.0, True, pr, pm,
                             g["weight"].to_numpy(float)))
    return out


def _stored_points(ctx: StepContext, *, exclude: list[int]) -> pd.DataFrame:
    if not ctx.output.has_table("stitch_points"):
        return pd.DataFrame()
    df = ctx.output.read_table("stitch_points")
    return df[~df["slice"].isin(exclude)]


def _merge_table(ctx: StepContext, name: str, new: pd.DataFrame, slices: list[int]) -> str:
    if ctx.output.has_table(name):
        old = ctx.output.read_table(name)
        new = pd.concat([old[~old["slice"].isin(slices)], new], ignore_index=True)
    return ctx.output.write_table(name, new.sort_values(["slice", "reference", "moving"], kind="stable"))
