"""Step `calibrate`: dark offset, flat field and border trim of every channel.

Estimated from the tiles themselves (a sample of tiles from the slices
processed so far, so the estimate is refined as slices land), or loaded from
a calibration file. Results go to the output store for every later step
(:func:`imaxt_pipeline.io.results.write_calibration`):

- ``attrs["imaxt"]["calibrate"]``: dark per channel, trim, distortion
  coefficients (from the file, else identity until `stitch` fits them), and
  where each came from; ``dark_check``: for a dark estimated from the data, per
  channel its bounds from the data (photon-transfer lower bound, darkest-pixel
  upper bound), their uncertainty and whether the estimate was consistent (an
  inconsistent one is clipped into the bounds, logged, and its source says so);
- ``calibration/flat``: float32 array (C, H, W), the flat field, and
  ``calibration/stray`` (C, H, W), the additive stray light, when estimated.

Calibration files (``imaxt calibrate-distortion`` writes them) are described
in :mod:`..io.calibration_file`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..algorithms.calibration import checked_darks, estimate_calibration
from ..algorithms.optics import Calibration, DistortionModel
from ..io import results
from ..io.calibration_file import read_calibration_file
from ._base import StepContext, StepResult
from .params import CalibrateParams as Params

__all__ = ["Params", "run", "sample_tiles"]


def sample_tiles(ctx: StepContext, slices: list[int], max_tiles: int, seed: int) -> np.ndarray:
    """Up to ``max_tiles`` raw tiles (C, T, H, W) drawn evenly from ``slices`` (z = 0)."""
    acq = ctx.raw.acquisition
    pool = [(s, t) for s in slices for t in range(acq.n_tiles)]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(pool), size=min(max_tiles, len(pool)), replace=False))
    tiles = [ctx.raw.read_tile(pool[i][0], 0, pool[i][1]) for i in pick]
    return np.stack(tiles, axis=1)


def run(ctx: StepContext, params: Params) -> StepResult:
    acq = ctx.raw.acquisition
    n_ch = len(acq.channels)
    previous = results.calibration_record(ctx.output)
    slices = sorted(set(ctx.slices) | set(previous.get("slices_used", [])))
    from_file: dict[str, Any] = {}  # the file's validated terms (io.calibration_file)
    inputs = []
    if params.calibration_file:
        from_file = read_calibration_file(
            params.calibration_file, ctx.storage_options, n_channels=n_ch, tile_shape=acq.tile_shape
        )
        inputs.append(params.calibration_file)
    dark = from_file.get("dark", params.dark)
    need_data = (
        "flat" not in from_file
        and params.flat == "estimate"
        or dark is None
        or (params.trim and "trim" not in from_file)
    )
    if need_data:
        tiles = sample_tiles(ctx, slices, params.max_tiles, params.seed)
        cal = estimate_calibration(
            tiles,
            dark=dark,
            flat=params.flat == "estimate" and "flat" not in from_file,
            trim=params.trim and "trim" not in from_file,
            trim_threshold=params.trim_threshold,
            max_trim_px=int(params.max_trim_fraction * acq.overlap * min(acq.tile_shape)),
        )
    checks: list[dict[str, Any]] = []
    if need_data and dark is None:
        darks, found = checked_darks(tiles, cal.dark)
        for c, ck in enumerate(found):
            (ctx.log.info if ck.consistent else ctx.log.warning)("calibrate: %s", ck.describe(c))
            checks.append({**ck.as_dict(), "used": float(darks[c])})
        if not all(ck.consistent for ck in found):
            cal = replace(
                cal, dark=darks, source={**cal.source, "dark": cal.source["dark"] + ", clipped to data bounds"}
            )
    if not need_data:
        cal = Calibration(
            dark=np.broadcast_to(np.asarray(dark, float), (n_ch,)).copy(),
            source={"dark": "given", "flat": "none", "trim": "none", "distortion": "none"},
        )
    src = dict(cal.source)
    for key in ("flat", "trim", "distortion", "stray"):
        if key in from_file:
            src[key] = "file"
    if "dark" in from_file:
        src["dark"] = "file"
    prev_dist = previous.get("distortion")
    distortion = from_file.get("distortion")
    if distortion is None and prev_dist and previous.get("source", {}).get("distortion") not in (None, "none"):
        # Keep the distortion fitted by an earlier `stitch` run; it refines it again.
        distortion = DistortionModel(**prev_dist)
        src["distortion"] = previous["source"]["distortion"]
    cal = Calibration(
        dark=cal.dark,
        flat=from_file.get("flat", cal.flat),
        trim=from_file.get("trim", cal.trim),
        distortion=distortion or DistortionModel(),
        source=src,
        # stray light estimated here belongs with the estimated flat, not with a file's flat
        stray=from_file.get("stray", None if "flat" in from_file else cal.stray),
    )
    extra: dict[str, Any] = {k: previous[k] for k in ("distortion_points",) if k in previous}
    if checks:
        extra["dark_check"] = checks
    outputs = results.write_calibration(ctx.output, cal, slices_used=slices, **extra)
    ctx.log.info("calibrate: dark %s, trim %s, sources %s", np.round(cal.dark, 2).tolist(), cal.trim, src)
    return StepResult(
        inputs=inputs,
        outputs=outputs + ["attrs:imaxt.calibrate"],
        metrics={
            "dark": [float(d) for d in cal.dark],
            "trim": cal.trim.as_dict(),
            "source": src,
            "dark_consistent": [bool(c["consistent"]) for c in checks],
        },
    )
