"""Flat-field refinement of the stitch step from the seams of the best-matched pairs.

Used only by :mod:`.stitch` (steps never import each other).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from ..algorithms.calibration import SEAM_SAMPLE_COLUMNS, flat_change, refine_flat_from_samples
from ..algorithms.optics import Calibration
from ..algorithms.stitching import PairMatch
from ..io import results
from ._base import StepContext

#: Seam samples the flat's fit takes at most (every slice's; a degree-4 surface needs far fewer).
MAX_FLAT_SAMPLES = 400_000


def _refine_flat(
    ctx: StepContext,
    cal: Calibration,
    sol: Any,
    matches: list[PairMatch],
    slices: list[int],
    n_pairs: int,
    done: tuple[Calibration, Any] | None = None,
) -> tuple[Calibration, str]:
    """The calibration with its flat refined from every slice's seams, and the seam table written.

    The estimated flat cannot tell the scene's large-scale variation from vignetting; the overlaps can.
    The pair tasks took each matched pair's seam samples (block means of both tiles, in raw counts); the
    ``n_pairs`` best used pairs of each slice of this run are stored (``tables/stitch_flat_samples``)
    beside those of earlier slices, and the flat is fitted to all of them under the current calibration
    (:func:`..algorithms.calibration.refine_flat_from_samples`): one flat for the sample, improving as
    slices land, as the distortion does, and no tile is read here. ``done`` is a refinement already made
    from this solve (the re-match check's: the refined calibration and its table), taken as it is.
    """
    table = _flat_table(ctx, sol, matches, slices, n_pairs) if done is None else done[1]
    written = ctx.output.write_table(results.STITCH_FLAT_SAMPLES, table)
    if done is None:
        return _refined(ctx, cal, table)[0], written
    # the flat depends on the flat and dark only: the distortion this run estimated since is kept
    return replace(cal, flat=done[0].flat, source={**cal.source, "flat": done[0].source["flat"]}), written


def _flat_table(ctx: StepContext, sol: Any, matches: list[PairMatch], slices: list[int], n_pairs: int) -> Any:
    """The seam samples of the ``n_pairs`` best used pairs of each slice of this run, beside the stored ones."""
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
    return results.replace_slices(
        ctx.output, results.STITCH_FLAT_SAMPLES, new, slices, sort_by=("slice", "reference", "moving", "channel")
    )


def _refined(ctx: StepContext, cal: Calibration, table: Any) -> tuple[Calibration, float]:
    """``cal`` with its flat refined from the seam ``table``, and how far that moved it (:func:`flat_change`)."""
    if cal.flat is None or not len(table):  # the caller refines estimated flats only
        return cal, 0.0
    samples = table[list(SEAM_SAMPLE_COLUMNS)].to_numpy(np.float64)
    # A fixed stride keeps the fit bounded on long samples (and is the same whichever run stored the rows).
    samples = samples[:: -(-len(samples) // MAX_FLAT_SAMPLES)]
    try:
        gain = refine_flat_from_samples(samples, cal, ctx.raw.acquisition.tile_shape)
    except ValueError as exc:
        ctx.log.warning("stitch: flat not refined from the seams: %s", exc)
        return cal, 0.0
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
    words = cal.source["flat"]  # keeps a refusal's words; refined again (a re-match round): said once
    refined = {**cal.source, "flat": words if words.endswith("+overlaps") else words + "+overlaps"}
    return replace(cal, flat=flat.astype(np.float32), source=refined), flat_change(gain)
