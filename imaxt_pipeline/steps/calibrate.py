"""Step `calibrate`: dark offset, flat field and border trim of every channel.

Estimated from the tiles themselves (a sample of tiles from the slices
processed so far, so the estimate is refined as slices land), or loaded from
a calibration file. Each sampled tile is read and reduced on a worker
(:mod:`..parallel.calibration`: block means, border bands, the low tail of the
smoothed pixels, photon-transfer blocks), so the client holds statistics, not
tiles. Results go to the output store for every later step
(:func:`imaxt_pipeline.io.results.write_calibration`):

- ``attrs["imaxt"]["calibrate"]``: dark per channel, trim, distortion
  coefficients (from the file, else identity until `stitch` fits them), and
  where each came from; ``dark_check``: for a dark estimated from the data, per
  channel its bounds from the data (photon-transfer lower bound, darkest-pixel
  upper bound), their uncertainty and whether the estimate was consistent (an
  inconsistent one is clipped into the bounds, logged, and its source says so);
- ``uncertainty``: the estimates' own 1-sigma per channel, from a bootstrap over
  the sampled tiles: ``dark_adu`` (``dark_from`` says "bootstrap", or "dark check
  bounds" where only the check's interval pins it), ``flat_rel_rms`` /
  ``flat_rel_max`` (relative error of the flat over the tile), ``stray_adu`` ±
  ``stray_sigma_adu`` (largest stray light); None for a term not from the data;
  ``from_data`` says which terms were estimated;
- ``calibration/flat``: float32 array (C, H, W), the flat field, and
  ``calibration/stray`` (C, H, W), the additive stray light, when estimated.

Calibration files (``imaxt calibrate-distortion`` writes them) are described
in :mod:`..io.calibration_file`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..algorithms.calibration import TileStats, calibration_estimate, default_block
from ..algorithms.optics import Calibration, DistortionModel
from ..io import results
from ..io.calibration_file import read_calibration_file
from ..parallel.calibration import cluster_starmap, tile_statistics
from ._base import StepContext, StepResult
from .params import CalibrateParams as Params

__all__ = ["BOOTSTRAP", "NOISE_TILES", "Params", "run", "sample_keys", "sample_statistics"]

#: Bootstrap draws over the sampled tiles for the estimates' uncertainty (each refits the tiles' summed
#: block statistics: milliseconds, no tile is read again).
BOOTSTRAP = 16
#: Tiles (about) whose photon-transfer noise blocks the dark check uses.
NOISE_TILES = 8


def sample_keys(ctx: StepContext, slices: list[int], max_tiles: int, seed: int) -> list[tuple[int, int, int]]:
    """``(slice, z = 0, tile)`` of up to ``max_tiles`` raw tiles drawn evenly from ``slices``."""
    acq = ctx.raw.acquisition
    pool = [(s, t) for s in slices for t in range(acq.n_tiles)]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(pool), size=min(max_tiles, len(pool)), replace=False))
    return [(pool[i][0], 0, pool[i][1]) for i in pick]


def sample_statistics(ctx: StepContext, slices: list[int], max_tiles: int, seed: int) -> list[TileStats]:
    """Per channel, the statistics of the sampled tiles, each read and reduced on a worker.

    The photon-transfer noise blocks (the dark check; the costliest statistics) come from about 8 of
    them: 16k blocks per 2048 px tile, over 100k blocks for the check's few bins.
    """
    keys = sample_keys(ctx, slices, max_tiles, seed)
    every = max(1, len(keys) // NOISE_TILES)
    block = default_block(ctx.raw.acquisition.tile_shape)
    noise = [i % every == 0 for i in range(len(keys))]
    return tile_statistics(ctx.client, ctx.raw.read_tile, keys, block=block, noise=noise)


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
    checks: list[dict[str, Any]] = []
    need_data = (
        "flat" not in from_file
        and params.flat == "estimate"
        or dark is None
        or (params.trim and "trim" not in from_file)
    )
    if need_data:
        stats = sample_statistics(ctx, slices, params.max_tiles, params.seed)
        estimate = calibration_estimate(
            stats,
            dark=dark,
            flat=params.flat == "estimate" and "flat" not in from_file,
            trim=params.trim and "trim" not in from_file,
            trim_threshold=params.trim_threshold,
            max_trim_px=int(params.max_trim_fraction * acq.overlap * min(acq.tile_shape)),
            bootstrap=BOOTSTRAP,
            seed=params.seed,
            check_darks=dark is None,
            starmap=cluster_starmap(ctx.client),
        )
        cal = estimate.calibration
        uncertainty = estimate.uncertainty()
        # the checks of the estimated darks (an inconsistent one was clipped into the data's bounds)
        for c, ck in enumerate(estimate.checks):
            (ctx.log.info if ck.consistent else ctx.log.warning)("calibrate: %s", ck.describe(c))
            checks.append({**ck.as_dict(), "used": float(cal.dark[c])})
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
    if need_data:
        # only the terms that came from the data carry an uncertainty (a file's or a given value: none here)
        for key, terms in (("dark", ("dark_adu", "dark_from")), ("flat", ("flat_rel_rms", "flat_rel_max"))):
            if src[key] in ("file", "given"):
                uncertainty.update(dict.fromkeys(terms))
        if src.get("stray") == "file" or "flat" in from_file or cal.stray is None:
            uncertainty.update(dict.fromkeys(("stray_adu", "stray_sigma_adu")))
        uncertainty["from_data"] = {k: src.get(k) not in ("file", "given", "none", None) for k in ("dark", "flat")}
        uncertainty["from_data"]["stray"] = uncertainty["stray_adu"] is not None
        extra["uncertainty"] = uncertainty
        ctx.log.info("calibrate: %s", _describe(uncertainty))
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
            **({"uncertainty": extra["uncertainty"]} if "uncertainty" in extra else {}),
        },
    )


def _describe(unc: dict[str, Any]) -> str:
    """One line of the estimates' 1-sigma uncertainties per channel."""

    def fmt(values: list[float | None] | None, scale: float = 1.0, digits: int = 1) -> str:
        if values is None:
            return "n/a"
        return "[" + ", ".join("n/a" if v is None else f"{v * scale:.{digits}f}" for v in values) + "]"

    stray = "n/a"
    if unc.get("stray_adu") is not None:
        stray = fmt(unc["stray_adu"]) + " ± " + fmt(unc["stray_sigma_adu"]) + " ADU"
    return (
        f"uncertainty (1 sigma, {unc['method'].split('(')[1].split(')')[0]}): dark ± {fmt(unc['dark_adu'])} ADU, "
        f"flat rms {fmt(unc['flat_rel_rms'], 100, 2)} % (max {fmt(unc['flat_rel_max'], 100, 2)} %), stray {stray}"
    )
