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
- ``imaxt.calibrate.distortion`` (when estimated) and ``calibration/flat``
  (when refined, source ``estimated+overlaps``);
- ``tables/stitch_pairs`` (one row per pair, with residuals) and
  ``tables/stitch_points`` (the correspondences).

Tiles are read with :meth:`RawStore.read_tile`; everything shared with other
steps goes through :mod:`imaxt_pipeline.io.results`.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache, partial
from typing import Any

import numpy as np
import pandas as pd

from ..acquisition import Acquisition
from ..algorithms.calibration import SEAM_SAMPLE_COLUMNS, refine_flat_from_samples
from ..algorithms.optics import Calibration, DistortionModel, MosaicGeometry
from ..algorithms.stitching import (
    PairMatch,
    adjacent_pairs,
    describe_flags,
    rematch_plan,
    rewrite_plan,
    section_move,
    solve_positions,
)
from ..io import results
from ..parallel.stitching import match_tiles
from ._base import StepContext, StepResult
from .params import StitchParams as Params

__all__ = ["MAX_BATCH_BYTES", "Params", "batch_pairs", "run"]

#: Raw tile bytes one pair-matching task may cache (it holds at most this, plus the pair it matches).
MAX_BATCH_BYTES = 32 * 2**20
#: Pairs per task at most, and batches per slice at least (so that the cluster stays busy).
MAX_BATCH_PAIRS, MIN_BATCHES = 64, 16
#: Pairs per task whatever the tile size: consecutive pairs share tiles ((t, t+1), (t, t+cols), (t+1, t+2),
#: ...), so a task of K pairs reads about K + 1 tiles, not 2K (a tile read is a third of a pair's time at
#: 2048 px), and an LRU cache of three tiles holds all it needs.
MIN_BATCH_PAIRS = 8
#: Seam samples the flat's fit takes at most (every slice's; a degree-4 surface needs far fewer).
MAX_FLAT_SAMPLES = 400_000


def batch_pairs(n_pairs: int, tile_bytes: int) -> int:
    """Pairs per matching task: 1 for few pairs, up to ``MIN_BATCH_PAIRS`` for large tiles and
    ``MAX_BATCH_PAIRS`` for small ones.

    >>> batch_pairs(12, 2 * 256 * 256), batch_pairs(1200, 2 * 64 * 64), batch_pairs(1200, 4 * 2 * 2048 * 2048)
    (1, 64, 8)
    """
    by_memory = max(MIN_BATCH_PAIRS, MAX_BATCH_BYTES // max(8 * tile_bytes, 1))
    return int(max(1, min(MAX_BATCH_PAIRS, by_memory, -(-n_pairs // MIN_BATCHES))))


def _match_batch(
    read_tile: Any,
    batch: np.ndarray,
    expected: np.ndarray,
    calibration: Calibration,
    *,
    cache: int,
    index_offset: int,
    **match_kwargs: Any,
) -> list[PairMatch]:
    """Match consecutive pairs ``batch`` (K, 2), stage-predicted shifts ``expected`` (K, 2), reading each tile
    once (an LRU cache of ``cache`` tiles)."""
    cached = lru_cache(maxsize=cache)(read_tile)
    # An estimated flat is refined from the seams: the task that holds the pair's strips samples them.
    estimated = calibration.flat is not None and calibration.source.get("flat") == "estimated"
    match_kwargs.setdefault("flat_samples", estimated)
    memo: dict[Any, np.ndarray] = {}  # each tile's channel levels, the confidence map: once per task
    return [
        match_tiles(
            cached,  # read-only there (strips are calibrated into new arrays): no copy of the tile per pair
            a,
            b,
            (ey, ex),
            calibration,
            index_offset=index_offset,
            memo=memo,
            **match_kwargs,
        )
        for (a, b), (ey, ex) in zip(np.asarray(batch).tolist(), np.asarray(expected).tolist(), strict=True)
    ]


def _lazy_matches(
    read_tile: Any, pairs: list[tuple[int, int]], stage: np.ndarray, cal: Any, *, cols: int, tile_bytes: int, **kw: Any
) -> list[Any]:
    """Delayed batches (lists of :class:`PairMatch`, in ``pairs`` order) of one slice."""
    from dask import delayed

    size = batch_pairs(len(pairs), tile_bytes)
    cache = int(max(3, min(2 * cols + 2, MAX_BATCH_BYTES // max(tile_bytes, 1))))
    idx = np.asarray(pairs, np.int64).reshape(-1, 2)
    expected = stage[idx[:, 1]] - stage[idx[:, 0]]
    # Arrays, not lists of tuples: dask walks every list argument looking for tasks (seconds for 50 x 50 tiles).
    task = delayed(_match_batch, pure=False)
    return [
        task(read_tile, idx[k : k + size], expected[k : k + size], cal, cache=cache, **kw)
        for k in range(0, len(idx), size)
    ]


def run(ctx: StepContext, params: Params) -> StepResult:
    acq = ctx.raw.acquisition
    n_t = acq.n_tiles
    cal = results.read_calibration(ctx.output, len(acq.channels))
    z = min(params.z, acq.optical_sections - 1)
    pairs = adjacent_pairs(acq.rows, acq.cols)
    slices = list(ctx.slices)
    # flat fields (64 MiB for 2 channels of 2048 px): sent to the workers once, not inside each graph
    cal_task = ctx.client.scatter(cal, broadcast=True)
    matches = _match_slices(ctx, [pairs] * len(slices), slices, z, cal_task, params, params.max_shift_px)
    matches = _rematch(ctx, matches, slices, z, cal_task, params)
    stage = [ctx.raw.stage_px(s, z) for s in slices]
    estimate = params.estimate_distortion and cal.source.get("distortion") != "file"
    old = results.read_stitch_points(ctx.output, exclude=slices) if estimate else pd.DataFrame()
    old_slices = sorted(old["slice"].unique().tolist()) if len(old) else []
    for k, s in enumerate(old_slices, start=len(slices)):
        matches += _matches_from_points(old[old["slice"] == s], offset=k * n_t)
        stage.append(ctx.raw.stage_px(s, z))
    stage_all = np.concatenate(stage) if stage else np.zeros((0, 2))
    sol = solve_positions(
        matches,
        stage_all,
        tile_shape=acq.tile_shape,
        estimate_distortion=estimate,
        distortion=cal.distortion,
        fit_magnification=params.fit_magnification,
        prior_sigma_px=params.prior_sigma_px,
        reject_px=params.reject_px,
    )
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
            "estimates": _provenance(sol, estimate, cal.source.get("distortion")),
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
    refine = params.refine_flat and cal.flat is not None and cal.source.get("flat") == "estimated"
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
            cal, seams = _refine_flat(ctx, cal, sol, matches, slices, params.flat_pairs)
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
    }
    return StepResult(outputs=outputs, metrics=metrics, rewritten_slices=rewrite)


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


def _match_slices(
    ctx: StepContext,
    pairs_of: list[list[tuple[int, int]]],
    slices: list[int],
    z: int,
    cal_task: Any,
    params: Params,
    max_shift: int,
) -> list[PairMatch]:
    """Match ``pairs_of[k]`` (tile indices within slice ``slices[k]``) on the cluster, in that order.

    The one place both the first pass and :func:`_rematch` build their tasks: indices come back
    global (``k * n_tiles + t``).
    """
    acq = ctx.raw.acquisition
    tile_bytes = 2 * len(acq.channels) * acq.tile_shape[0] * acq.tile_shape[1]
    lazy = []
    for k, (s, pairs) in enumerate(zip(slices, pairs_of, strict=True)):
        if pairs:
            lazy += _lazy_matches(
                partial(ctx.raw.read_tile, s, z),
                pairs,
                np.asarray(ctx.raw.stage_px(s, z), np.float64),
                cal_task,
                cols=acq.cols,
                tile_bytes=tile_bytes,
                index_offset=k * acq.n_tiles,
                max_shift=max_shift,
                block_size=params.block_px,
                min_ncc=params.min_ncc,
            )
    batches = ctx.client.gather(ctx.client.compute(lazy)) if lazy else []
    return [m for batch in batches for m in batch]


def _rematch(
    ctx: StepContext, matches: list[PairMatch], slices: list[int], z: int, cal_task: Any, params: Params
) -> list[PairMatch]:
    """Redo failed / edge-of-window pairs once, with the radius the matched pairs' stage error asks for."""
    radius, redo = rematch_plan(matches, params.max_shift_px)
    if not redo:
        return matches
    n_t = ctx.raw.acquisition.n_tiles
    pairs_of: list[list[tuple[int, int]]] = [[] for _ in slices]
    for i in redo:
        k = matches[i].reference // n_t
        pairs_of[k].append((matches[i].reference - k * n_t, matches[i].moving - k * n_t))
    again = _match_slices(ctx, pairs_of, slices, z, cal_task, params, radius)
    new = {(m.reference, m.moving): m for m in again}
    ctx.log.info(
        "stitch: %d pairs matched again with a %d px search (stage error larger than expected)", len(new), radius
    )
    return [new.get((m.reference, m.moving), m) for m in matches]


def _refine_flat(
    ctx: StepContext, cal: Calibration, sol: Any, matches: list[PairMatch], slices: list[int], n_pairs: int
) -> tuple[Calibration, str]:
    """The calibration with its flat refined from every slice's seams, and the seam table written.

    The estimated flat cannot tell the scene's large-scale variation from vignetting; the overlaps can.
    The pair tasks took each matched pair's seam samples (block means of both tiles, in raw counts); the
    ``n_pairs`` best used pairs of each slice of this run are stored (``tables/stitch_flat_samples``)
    beside those of earlier slices, and the flat is fitted to all of them under the current calibration
    (:func:`..algorithms.calibration.refine_flat_from_samples`): one flat for the sample, improving as
    slices land, as the distortion does, and no tile is read here.
    """
    n_t = ctx.raw.acquisition.n_tiles
    used = sol.pairs["used"].to_numpy(bool)
    frames = []
    for k, s in enumerate(slices):
        mine = [
            m
            for m, ok in zip(matches, used, strict=False)
            if ok and m.reference // n_t == k and m.flat_samples is not None and len(m.flat_samples)
        ]
        for m in sorted(mine, key=lambda m: (-len(m.point_weights), -m.ncc))[:n_pairs]:
            df = pd.DataFrame(m.flat_samples, columns=list(SEAM_SAMPLE_COLUMNS)).astype({"channel": np.int64})
            frames.append(df.assign(slice=s, reference=m.reference % n_t, moving=m.moving % n_t))
    columns = ["slice", "reference", "moving", *SEAM_SAMPLE_COLUMNS]
    new = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    table = results.replace_slices(
        ctx.output, results.STITCH_FLAT_SAMPLES, new, slices, sort_by=("slice", "reference", "moving", "channel")
    )
    written = ctx.output.write_table(results.STITCH_FLAT_SAMPLES, table)
    if cal.flat is None or not len(table):  # the caller refines estimated flats only
        return cal, written
    samples = table[list(SEAM_SAMPLE_COLUMNS)].to_numpy(np.float64)
    # A fixed stride keeps the fit bounded on long samples (and is the same whichever run stored the rows).
    samples = samples[:: -(-len(samples) // MAX_FLAT_SAMPLES)]
    try:
        gain = refine_flat_from_samples(samples, cal, ctx.raw.acquisition.tile_shape)
    except ValueError as exc:
        ctx.log.warning("stitch: flat not refined from the seams: %s", exc)
        return cal, written
    flat = cal.flat * gain[None]
    flat /= flat.mean(axis=(1, 2), keepdims=True)
    n_slices = int(table["slice"].nunique())
    ctx.log.info(
        "stitch: flat refined from %d seam samples of %d slices (gain %.4f-%.4f)",
        len(samples),
        n_slices,
        gain.min(),
        gain.max(),
    )
    return replace(cal, flat=flat.astype(np.float32), source={**cal.source, "flat": "estimated+overlaps"}), written


def _provenance(sol: Any, estimated: bool, distortion_source: str | None) -> dict[str, Any]:
    """Which of the solve's estimates came from the data, from what, and with what 1-sigma."""
    mag = sol.magnification
    applied = bool(mag is not None and any(mag.applied))
    sheared = bool(mag is not None and any(mag.shear_applied))
    rec = mag.as_dict() if mag is not None else {}
    fixed = "calibration file" if distortion_source == "file" else "nominal"
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
