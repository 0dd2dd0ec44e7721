"""Step `stitch`: tile positions of each slice (and the shared distortion).

Per slice, every pair of neighbouring tiles is registered on the Dask
cluster (calibrated tiles; small tiles are matched in batches of consecutive
pairs, one task per batch, each tile read once per batch from a cache of at
most two grid rows and ``MAX_BATCH_BYTES``, so that a 50 x 50 coverslip grid
neither floods the scheduler nor holds more than a few tiles in any task;
large tiles get one task per pair); then one weighted least-squares
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
  pair ties to a neighbour (empty agarose): placed by their stage position plus
  their section's median offset;
- ``imaxt.stitch.position_sigma_px``: ``{"s/r/c": sigma}``, 1-sigma of each tile's
  position relative to its section (for a tile placed by the stage, the stage
  scatter measured on the solved tiles);
- ``imaxt.stitch.flags``: ``{"s/r/c": "tile (r,c): overlaps with ... empty — placed
  by stage, ±3.0 px"}``, one plain-words line per flagged tile (also logged);
- ``imaxt.stitch.seam_calibration``: one line, whether the calibration file's seam bias was taken out
  of the matches (:mod:`._stitch_seam`; then ``estimates.seam_bias`` says "calibration file");
- ``imaxt.calibrate.distortion`` (when estimated) and ``calibration/flat``
  (when refined, source ``estimated+overlaps``);
- ``tables/stitch_pairs`` (one row per pair, with residuals) and
  ``tables/stitch_points`` (the correspondences).

Tiles are read with :meth:`RawStore.read_tile`; everything shared with other
steps goes through :mod:`imaxt_pipeline.io.results`.

This module holds the step's run (solve and records); its helpers are private
modules used only here: the pair matching on the cluster (:mod:`._stitch_match`),
the flat refinement from the seams (:mod:`._stitch_flat`), and the section moves
behind the rewrite plan, provenance and point tables (:mod:`._stitch_record`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..algorithms.optics import Calibration
from ..algorithms.stitching import adjacent_pairs, describe_flags, rewrite_plan, solve_positions
from ..io import results
from ._base import StepContext, StepResult

# The helpers live in private modules by concern; the names tests and callers use stay importable from here.
from ._stitch_flat import MAX_FLAT_SAMPLES as MAX_FLAT_SAMPLES
from ._stitch_flat import _flat_table, _refine_flat, _refined
from ._stitch_match import MAX_BATCH_BYTES as MAX_BATCH_BYTES
from ._stitch_match import MAX_BATCH_PAIRS as MAX_BATCH_PAIRS
from ._stitch_match import MIN_BATCH_PAIRS as MIN_BATCH_PAIRS
from ._stitch_match import MIN_BATCHES as MIN_BATCHES
from ._stitch_match import _lazy_matches as _lazy_matches
from ._stitch_match import _match_batch as _match_batch
from ._stitch_match import _match_slices, _rematch
from ._stitch_match import batch_pairs as batch_pairs
from ._stitch_record import _matches_from_points, _points_table, _provenance, _section_move
from ._stitch_seam import apply_seam_calibration, calibration_file_url, load_seam_calibration, seam_estimate
from .params import StitchParams as Params

__all__ = ["MAX_BATCH_BYTES", "Params", "batch_pairs", "run"]


def run(ctx: StepContext, params: Params) -> StepResult:
    acq = ctx.raw.acquisition
    n_t = acq.n_tiles
    cal = results.read_calibration(ctx.output, len(acq.channels))
    z = min(params.z, acq.optical_sections - 1)
    pairs = adjacent_pairs(acq.rows, acq.cols)
    slices = list(ctx.slices)
    estimate = params.estimate_distortion and cal.source.get("distortion") != "file"
    old = results.read_stitch_points(ctx.output, exclude=slices) if estimate else pd.DataFrame()
    old_slices = sorted(old["slice"].unique().tolist()) if len(old) else []
    old_matches = []
    stage = [ctx.raw.stage_px(s, z) for s in slices]
    for k, s in enumerate(old_slices, start=len(slices)):
        old_matches += _matches_from_points(old[old["slice"] == s], offset=k * n_t)
        stage.append(ctx.raw.stage_px(s, z))
    stage_all = np.concatenate(stage) if stage else np.zeros((0, 2))
    url = calibration_file_url(ctx.output.imaxt_attrs().get("provenance", []))
    shape = (int(acq.tile_shape[0]), int(acq.tile_shape[1]))
    seam_cal = load_seam_calibration(url, ctx.storage_options, n_channels=len(acq.channels), tile_shape=shape)
    refine = params.refine_flat and cal.flat_estimated
    changes: list[float] = []
    last: tuple[Calibration, Any] | None = None  # the final solve's refinement, when the loop made one
    while True:
        # flat fields (64 MiB for 2 channels of 2048 px): sent to the workers once, not inside each graph
        cal_task = ctx.client.scatter(cal, broadcast=True)
        matches = _match_slices(ctx, [pairs] * len(slices), slices, z, cal_task, params, params.max_shift_px)
        matches = _rematch(ctx, matches, slices, z, cal_task, params) + old_matches
        seam = apply_seam_calibration(matches, seam_cal, shape, file_distortion=not estimate)
        sol = solve_positions(
            seam.matches,
            stage_all,
            tile_shape=acq.tile_shape,
            estimate_distortion=estimate,
            distortion=cal.distortion,
            fit_magnification=params.fit_magnification,
            prior_sigma_px=params.prior_sigma_px,
            reject_px=params.reject_px,
            seam_sigma=seam.seam_sigma,
        )
        if not refine or len(changes) >= params.flat_rematch_rounds:
            break
        # Matches taken under a flat far off what their own seams say are biased where the scene is sparse (a
        # blob under a gain slope shifts to its brighter side, the other way in the other tile): re-take them
        # under the refined flat, a bounded number of times.
        table = _flat_table(ctx, sol, matches, slices, params.flat_pairs)
        refined, change = _refined(ctx, cal, table)
        if change <= params.flat_rematch_tol:
            last = (refined, table)
            break
        changes.append(change)
        ctx.log.info(
            "stitch: the flat refined from the seams moves the one matched with by %.1f %% rms (tolerance %.1f %%): "
            "re-matching slices %s with it (round %d of at most %d)",
            100 * change,
            100 * params.flat_rematch_tol,
            slices,
            len(changes),
            params.flat_rematch_rounds,
        )
        cal = refined
    ctx.log.info("stitch: seam calibration: %s", seam.line)
    magnification = sol.magnification.as_dict() if sol.magnification is not None else None
    geom = results.mosaic_canvas(ctx.raw)
    meta = results.stitch_record(ctx.output)
    models = dict(meta.get("slice_distortion", {}))
    moves = {
        s: _section_move(acq, geom, sol, meta, models.get(str(s)), cal.distortion, len(slices) + j, s)
        for j, s in enumerate(old_slices)
    }
    rewrite, pending = rewrite_plan(moves, tolerance=params.rewrite_tol_px, limit=params.rewrite_max_slices)
    # slices written now (this run's, and earlier ones re-placed): their flags, sigmas and residuals are this solve's
    index = {s: k for k, s in enumerate(slices)} | {s: len(slices) + old_slices.index(s) for s in rewrite}
    positions = dict(meta.get("tile_positions_px", {}))
    residuals = dict(meta.get("residuals", {}))
    unconstrained = {k: v for k, v in meta.get("unconstrained", {}).items() if int(k.split("/")[0]) not in index}
    sigmas = {k: v for k, v in meta.get("position_sigma_px", {}).items() if int(k.split("/")[0]) not in index}
    flags = {k: v for k, v in meta.get("flags", {}).items() if int(k.split("/")[0]) not in index}
    flagged = sol.flagged
    words = describe_flags(sol.flags, lambda t: "({},{})".format(*acq.tile_grid(t % n_t)))
    flag_text = {f.tile: w for f, w in zip(sol.flags, words, strict=True)}
    pair_tab = sol.pairs.copy()
    pair_tab["information"] = [float(m.information) for m in matches]
    pair_tab["slice"] = [
        slices[r // n_t] if r // n_t < len(slices) else old_slices[r // n_t - len(slices)]
        for r in pair_tab["reference"]
    ]
    for s, k in index.items():
        models[str(s)] = sol.distortion.as_dict()
        pos = geom.to_mosaic(sol.positions[k * n_t : (k + 1) * n_t])
        for t in range(n_t):
            r, c = acq.tile_grid(t)
            positions[results.position_key(s, r, c)] = [float(pos[t, 0]), float(pos[t, 1])]
            if not sol.constrained[k * n_t + t]:
                unconstrained[results.position_key(s, r, c)] = True
            sigmas[results.position_key(s, r, c)] = float(sol.position_sigma[k * n_t + t])
            if flagged[k * n_t + t]:
                flags[results.position_key(s, r, c)] = f"slice {s} " + flag_text[k * n_t + t]
        tab = pair_tab[pair_tab["slice"] == s]
        used = tab[tab["used"]]
        res = used["residual"].to_numpy(float)
        # an earlier slice is re-solved from its stored points (informative pairs only): keep its pair counts
        counts = {"n_pairs": int(len(tab)), "n_informative": int(tab["ok"].sum())}
        residuals[str(s)] = {
            **(counts if s in slices else {k: residuals.get(str(s), {}).get(k) for k in counts}),
            "n_used": int(len(used)),
            "median_px": float(np.median(res)) if res.size else None,
            "p95_px": float(np.percentile(res, 95)) if res.size else None,
            "max_px": float(res.max()) if res.size else None,
        }
    if rewrite or pending:
        ctx.log.info(
            "stitch: the refined optics move earlier slices' pixels by %s px (translation apart; tolerance %.2f): "
            "rewriting slices %s, pending %s",
            {s: round(v, 3) for s, v in moves.items() if v > params.rewrite_tol_px},
            params.rewrite_tol_px,
            rewrite,
            pending,
        )
    results.write_stitch_record(
        ctx.output,
        {
            **meta,
            "tile_positions_px": positions,
            "residuals": residuals,
            "unconstrained": unconstrained,
            "position_sigma_px": sigmas,
            "flags": flags,
            "distortion": sol.distortion.as_dict(),
            "magnification": magnification,
            "estimates": _provenance(sol, estimate, cal.source.get("distortion"))
            | ({"seam_bias": seam_estimate(seam)} if seam.seam_sigma is not None else {}),
            "seam_calibration": seam.line,
            "flat_rematch": {
                "changes": [round(c, 5) for c in changes],
                "tolerance": params.flat_rematch_tol,
                "rounds": len(changes),
            },
            "slice_distortion": models,
            "rewrite": {
                "moves_px": {str(s): round(v, 4) for s, v in moves.items()},
                "rewritten": rewrite,
                "pending": pending,
                "tolerance_px": params.rewrite_tol_px,
            },
            "frame": {"origin_px": list(geom.origin_px), "margin": geom.margin, "shape": list(geom.shape)},
        },
    )
    outputs = ["attrs:imaxt.stitch"]
    current = pair_tab[pair_tab["slice"].isin(slices)].copy()
    for col in ("reference", "moving"):
        current[col] = current[col] % n_t
    for name, table in ((results.STITCH_PAIRS, current), (results.STITCH_POINTS, _points_table(matches, slices, n_t))):
        merged = results.replace_slices(ctx.output, name, table, slices, sort_by=("slice", "reference", "moving"))
        outputs.append(ctx.output.write_table(name, merged))
    refine = params.refine_flat and cal.flat_estimated
    if estimate or refine:
        extra = {
            k: v
            for k, v in results.calibration_record(ctx.output).items()
            if k in ("slices_used", "distortion_points", "dark_check")
        }
        if estimate:
            cal = cal.with_distortion(sol.distortion, "estimated-from-overlaps")
            extra["distortion_points"] = int(sum(len(m.point_weights) for m in matches if m.ok))
            outputs.append("attrs:imaxt.calibrate.distortion")
        if refine:
            cal, seams = _refine_flat(ctx, cal, sol, matches, slices, params.flat_pairs, done=last)
            outputs.append(seams)
        outputs += results.write_calibration(ctx.output, cal, **extra)
    stats = sol.residual_stats()
    current_flags = [flags[k] for k in sorted(flags) if int(k.split("/")[0]) in index]
    for line in current_flags:
        ctx.log.warning("stitch: %s", line)
    ctx.log.info(
        "stitch: slices %s, %s, distortion %s, %d tiles flagged", slices, stats, sol.distortion, len(current_flags)
    )
    if sol.magnification is not None:
        m = sol.magnification
        ctx.log.info(
            "stitch: magnification from the stage (y, x) %s ± %s, %s; translation error it implies %.2f px",
            [f"{v:+.2e}" for v in m.mag],
            [f"{v:.1e}" for v in m.mag_sigma],
            "applied" if any(m.applied) else "not significant, nominal kept (the dominant uncertainty)",
            m.predicted_px,
        )
        ctx.log.info(
            "stitch: camera shear against the stage (yx, xy) %s ± %s (rotation %.3f deg), %s; "
            "translation error its sigma implies %.2f px (whole linear map %.2f px)",
            [f"{v:+.2e}" for v in m.shear],
            [f"{v:.1e}" for v in m.shear_sigma],
            m.rotation_deg,
            "applied" if any(m.shear_applied) else "not significant, nominal kept",
            m.shear_predicted_px,
            m.linear_predicted_px,
        )
    metrics = {
        **stats,
        "distortion": sol.distortion.as_dict(),
        "magnification": magnification,
        "flagged": current_flags,
        "rewritten_slices": rewrite,
        "pending_rewrite": pending,
        "flat_rematch_rounds": len(changes),
    }
    return StepResult(outputs=outputs, metrics=metrics, rewritten_slices=rewrite)
