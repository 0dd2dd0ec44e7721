"""Detect and fit the fiducial beads of each slice into the ``beads`` table.

Works per slice on the ``mosaic`` image. The bead channel is the one whose
bright compact objects are largest (beads of ~90 µm are bright in every
channel; a nuclear stain's brightest objects are thousands of ~10 µm nuclei),
measured on the coarsest pyramid level that still resolves nuclei (pixels of
at most 2.5 µm); ``channel`` forces it. The classical threshold of each slice
sits half-way between the background and the bead plateau (measured on the
coarsest pyramid level), well above tissue and nuclei in the bead channel.
Both are one task per plane (and channel) on the workers, which read the
level themselves; the client only combines the numbers. Beads are
searched by size and shape in µm (``bead_diameter_um``, the acquisition's
pixel size): the plane is cut into overlapping blocks, each block is
block-averaged so the smallest cut searched is ~3 px in radius, its regions
are screened (radius of a cut sphere, round, convex, standing out from their
surroundings, flat inside) and only the survivors are fitted at full
resolution by Poisson maximum likelihood on a ring around the rim, on a
Dask worker that reads its own window of the plane. Rows of the processed slices replace any
earlier rows of those slices in ``tables/beads.parquet``; ``bead_id`` is
filled in by the ``register`` step. ``rim_valid`` is the fraction of a fit's rim on data: below 1 the
mosaic's edge or pixels no tile covers cut the disc, its centre leans inwards, and ``register`` weighs it so.

A single-channel sample's bead channel is its only channel. A sample whose
acquisition says ``beads: false`` (a coverslip, a slide) is not searched: the
step warns on one line (:class:`~imaxt_pipeline.errors.DataWarning`) and writes
an empty bead table, which ``register`` reads as "no beads".
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataWarning
from ..io import results
from ..io.ome import OmeImage
from ._base import StepContext, StepResult
from ._channels import check_channel, has_beads
from .params import BeadsParams as Params

__all__ = ["Params", "bead_spec", "empty_table", "pick_channel", "run", "score_level", "slice_thresholds"]

#: Coarsest pixel (µm) the channel scores are measured at: nuclei (radius >= ~4 µm) still span a few px,
#: so a nuclear channel's brightest objects stay nuclei; on coarser pixels they blur below the bead plateau.
SCORE_PIXEL_UM = 2.5


def empty_table() -> pd.DataFrame:
    """A bead table without rows, with the columns of the results contract."""
    from ..algorithms.registration import BEAD_COLUMNS

    cols = {c: pd.Series(dtype=bool if c == "fit_ok" else float) for c in BEAD_COLUMNS}
    return pd.DataFrame(
        {
            "slice": pd.Series(dtype=np.int64),
            **cols,
            "good": pd.Series(dtype=bool),
            "bead_id": pd.Series(dtype=np.int64),
        }
    )


def score_level(image: OmeImage, pixel_size_um: float) -> int:
    """The coarsest pyramid level whose pixels are at most :data:`SCORE_PIXEL_UM` (level 0 if none is)."""
    full, level = image.shape[-1], 0
    for lv in range(1, image.levels):
        if pixel_size_um * full / max(image.level_shape(lv)[-1], 1) > SCORE_PIXEL_UM:
            break
        level = lv
    return level


def pick_channel(ctx: StepContext, image: OmeImage, params: Params) -> int:
    """Bead channel: the one whose bright compact objects are largest (see ``bead_channel_scores``).

    A channel chosen by an earlier run (``imaxt.beads.channel``) is kept so
    that live processing uses one channel for every slice. The scores of up
    to three slices are computed on the workers, one task per slice and
    channel, at :func:`score_level`.
    """
    from ..algorithms.registration import pick_bead_channel
    from ..parallel.registration import channel_scores

    earlier = ctx.output.imaxt_attrs().get("beads", {})
    based_on = earlier.get("channel_slices", [])
    if earlier.get("channel") is not None and based_on and not set(based_on) & set(ctx.slices):
        return int(earlier["channel"])
    acq = ctx.raw.acquisition
    if len(acq.channels) == 1:
        return 0
    used = ctx.slices[:3]
    planes = [s * acq.optical_sections + params.z for s in used]
    level = score_level(image, acq.pixel_size_um)
    lazy = channel_scores(image, planes, level=level, sigma=1.0, rel=max(params.rel_threshold, 0.5))
    per_plane = ctx.client.gather(ctx.client.compute(lazy))
    scores = np.sum(np.asarray(per_plane, dtype=np.float64).reshape(len(planes), -1), axis=0)
    ctx.log.info("beads: channel scores %s (level %d)", np.round(scores / max(len(used), 1), 2).tolist(), level)
    ctx.output.update_imaxt_attrs("beads.channel_slices", [int(s) for s in used])
    ctx.output.update_imaxt_attrs("beads.channel_scores", (scores / max(len(used), 1)).round(3).tolist())
    return pick_bead_channel(scores)


def slice_thresholds(
    ctx: StepContext, image: OmeImage, planes: list[int], channel: int, params: Params, peak: float | None
) -> tuple[list[float], float]:
    """Classical threshold of each plane from its coarsest level, with one bead plateau for all of them.

    The plateau is the brightest smoothed coarse pixel over the planes (and
    earlier runs' ``peak``): beads have the same brightness in every slice,
    so a slice without beads does not lower the bar down to its tissue. Each
    plane's statistics are one task on the workers.
    """
    from ..parallel.registration import threshold_levels

    lazy = threshold_levels(image, planes, channel, level=image.levels - 1, sigma=1.0, nsigma=params.nsigma)
    levels = ctx.client.gather(ctx.client.compute(lazy))
    top = max([lv.top for lv in levels] + ([peak] if peak else []))
    return [lv.threshold(params.rel_threshold, peak=top) for lv in levels], top


def bead_spec(params: Params, pixel_size_um: float) -> Any:
    """The beads searched (a ``BeadSpec``): the config's sizes in µm at this pixel size."""
    from ..algorithms.registration import BeadSpec

    return BeadSpec(
        pixel_size_um=pixel_size_um,
        diameter_um=params.bead_diameter_um,
        size_tolerance=params.bead_size_tolerance,
        min_cut_fraction=params.min_cut_fraction,
    )


def run(ctx: StepContext, params: Params) -> StepResult:
    from ..algorithms.registration import good_beads
    from ..parallel.registration import find_plane_beads

    acq = ctx.raw.acquisition
    if not has_beads(acq):
        return _no_beads(ctx)
    if params.z >= acq.optical_sections:
        raise ValueError(f"beads.z={params.z} but the sample has {acq.optical_sections} optical sections")
    if params.channel is not None:
        check_channel("steps.beads.channel", params.channel, acq.channels)
    image = ctx.output.open_image(results.MOSAIC)
    channel = params.channel if params.channel is not None else pick_channel(ctx, image, params)
    planes = [s * acq.optical_sections + params.z for s in ctx.slices]
    earlier_peak = ctx.output.imaxt_attrs().get("beads", {}).get("peak")
    thresholds, peak = slice_thresholds(ctx, image, planes, channel, params, earlier_peak)
    spec = bead_spec(params, acq.pixel_size_um)
    lazy = [
        find_plane_beads(
            image,
            channel,
            p,
            spec,
            block=params.block,
            detector=params.detector,
            model_source=params.model,
            nsigma=params.nsigma,
            rel=params.rel_threshold,
            threshold=thr if params.detector == "classical" else None,
        )
        for p, thr in zip(planes, thresholds, strict=False)
    ]
    tables = ctx.client.gather(ctx.client.compute(lazy))
    parts = []
    for s, df in zip(ctx.slices, tables, strict=False):
        df = df.copy()
        df.insert(0, "slice", s)
        df["good"] = good_beads(
            df,
            spec,
            min_snr=params.min_snr,
            max_chi2_ratio=params.max_chi2_ratio,
            min_amplitude_ratio=params.min_amplitude_ratio,
        )
        df["bead_id"] = -1
        parts.append(df)
    new = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    new = results.replace_slices(ctx.output, results.BEADS, new, ctx.slices, sort_by=("slice", "y_px", "x_px"))
    ctx.output.update_imaxt_attrs("beads.channel", int(channel))
    ctx.output.update_imaxt_attrs("beads.detector", params.detector)
    ctx.output.update_imaxt_attrs("beads.peak", float(peak))
    ctx.output.update_imaxt_attrs("beads.size_tolerance", float(params.bead_size_tolerance))  # register's radius test
    path = ctx.output.write_table(results.BEADS, new)
    this = new[new["slice"].isin(ctx.slices)]
    good = this[this["good"]]
    # good fits whose disc the data's edge cuts (mosaic edge, no tile there) lean inwards: register weighs them so
    cut = good["rim_valid"].to_numpy(float) < 1.0
    metrics: dict[str, Any] = {
        "channel": int(channel),
        "candidates": int(len(this)),
        "good": int(len(good)),
        "cut_by_data_edge": int(cut.sum()),
        "median_centre_err_px": float(np.median(np.hypot(good["y_err"], good["x_err"]))) if len(good) else None,
    }
    ctx.log.info(
        "beads: %d candidates, %d good fits in slices %s (%d of them cut by the data's edge)",
        len(this),
        len(good),
        ctx.slices,
        int(cut.sum()),
    )
    if not len(good):
        ctx.log.warning("beads: no bead found in slices %s (channel %d)", ctx.slices, channel)
    return StepResult(inputs=[results.MOSAIC], outputs=[path], metrics=metrics)


def _no_beads(ctx: StepContext) -> StepResult:
    """The acquisition has no beads: warn once, write an empty table (``register`` then sets zero offsets)."""
    message = f"beads: sample {ctx.raw.acquisition.sample!r} has no beads (acquisition beads: false); not searched"
    warnings.warn(message, DataWarning, stacklevel=3)
    ctx.log.warning(message)
    ctx.output.update_imaxt_attrs("beads.present", False)
    path = ctx.output.write_table(results.BEADS, empty_table())
    return StepResult(outputs=[path], metrics={"skipped": "no beads", "candidates": 0, "good": 0})
