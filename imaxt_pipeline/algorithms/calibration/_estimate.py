"""The calibration record of a sample estimated from its own tiles: dark, flat, stray light and trim per channel.

:func:`calibration_estimate` runs :func:`._flatfield.estimate_tile_model` on
the statistics of every channel's tiles (:mod:`._summary`) and gathers the results in the
:class:`..optics.Calibration` record that every step applies, with the estimates' own
uncertainty from a bootstrap over the tiles (:class:`CalibrationEstimate`);
:func:`estimate_calibration` does the same from raw tiles in memory; the distortion is fitted later, from the
seams (:mod:`..stitching`) or a calibration acquisition
(:mod:`._distortion_fit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from ..optics import Calibration, Trim
from ._dark_check import DarkCheck, checked_darks
from ._flatfield import TileModel, estimate_tile_model
from ._summary import TileStats, summarise

__all__ = ["CalibrationEstimate", "Starmap", "calibration_estimate", "estimate_calibration"]

#: ``starmap(fn, argument_tuples) -> [fn(*a) for a in argument_tuples]``, in order, e.g. on a cluster.
Starmap = Callable[[Callable[..., TileModel], Sequence[tuple[Any, ...]]], list[TileModel]]


def _in_process(fn: Callable[..., TileModel], items: Sequence[tuple[Any, ...]]) -> list[TileModel]:
    return [fn(*a) for a in items]


def estimate_calibration(
    tiles: npt.ArrayLike,
    *,
    dark: float | Sequence[float] | None = None,
    flat: bool = True,
    trim: bool = True,
    trim_threshold: float = 1.0,
    max_trim_px: int | None = None,
    degree: int = 2,
    shared_flat: bool = True,
) -> Calibration:
    """Dark, flat, stray light and trim of every channel from the raw tiles ``(C, T, H, W)``.

    The tiles are summarised (:func:`._summary.summarise`) and :func:`calibration_estimate` runs on the
    summaries, as the ``calibrate`` step does with summaries made on the workers.

    Parameters
    ----------
    tiles : ndarray (C, T, H, W)
        Raw tiles (any number of slices stacked along T).
    dark, flat, trim, trim_threshold, max_trim_px, degree, shared_flat
        See :func:`calibration_estimate`.

    Returns
    -------
    Calibration
    """
    arr = np.asarray(tiles)
    if arr.ndim != 4:
        raise ValueError(f"tiles must be (C, T, H, W), got shape {arr.shape}")
    stats = [summarise(arr[c]) for c in range(arr.shape[0])]
    return calibration_estimate(
        stats,
        dark=dark,
        flat=flat,
        trim=trim,
        trim_threshold=trim_threshold,
        max_trim_px=max_trim_px,
        degree=degree,
        shared_flat=shared_flat,
    ).calibration


@dataclass(frozen=True)
class CalibrationEstimate:
    """A :class:`..optics.Calibration` estimated from the data, with the estimates' own uncertainty.

    Attributes
    ----------
    calibration : Calibration
    dark_sigma : ndarray (C,)
        1-sigma of each channel's dark (bootstrap over the tiles; 0 when given, NaN when the data
        could not separate it from the flat: the dark check's bounds are its uncertainty then).
    flat_sigma : ndarray (C, H // block, W // block) float32, optional
        1-sigma relative error of the flat at the block centres (None when no flat was estimated).
    stray_amplitude, stray_sigma : ndarray (C,)
        Largest stray light per channel (counts) and its 1-sigma.
    bootstrap : int
        Replicates drawn (0: no uncertainties).
    checks : list of DarkCheck
        The dark check of every channel's estimate (``check_darks``; empty otherwise).
    dark_sigma_from : list of str
        Per channel: what ``dark_sigma`` comes from.
    stray_unmeasured : list of tuple of str
        Per channel: sides with too little agarose next to them to measure stray light (``stray_sigma`` NaN).
    """

    calibration: Calibration
    dark_sigma: npt.NDArray[np.float64]
    flat_sigma: npt.NDArray[np.float32] | None
    stray_amplitude: npt.NDArray[np.float64]
    stray_sigma: npt.NDArray[np.float64]
    bootstrap: int = 0
    checks: list[DarkCheck] = field(default_factory=list)
    dark_sigma_from: list[str] = field(default_factory=list)
    stray_unmeasured: list[tuple[str, ...]] = field(default_factory=list)

    def uncertainty(self) -> dict[str, Any]:
        """JSON-ready per-channel summary (NaN becomes None): what ``attrs["imaxt"]["calibrate"]`` records."""

        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        fs = self.flat_sigma
        return {
            "method": f"bootstrap over the sampled tiles ({self.bootstrap} draws), 1 sigma",
            "dark_adu": [num(x) for x in self.dark_sigma],
            "dark_from": list(self.dark_sigma_from),
            "flat_rel_rms": None if fs is None else [num(float(np.sqrt(np.mean(f.astype(float) ** 2)))) for f in fs],
            "flat_rel_max": None if fs is None else [num(float(f.max())) for f in fs],
            "stray_adu": [num(x) for x in self.stray_amplitude],
            "stray_sigma_adu": [num(x) for x in self.stray_sigma],
            "stray_unmeasured_sides": [list(x) for x in self.stray_unmeasured],
        }


def calibration_estimate(
    stats: Sequence[TileStats],
    *,
    dark: float | Sequence[float] | None = None,
    flat: bool = True,
    trim: bool = True,
    trim_threshold: float = 1.0,
    max_trim_px: int | None = None,
    degree: int = 2,
    shared_flat: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
    check_darks: bool = False,
    starmap: Starmap = _in_process,
) -> CalibrationEstimate:
    """Dark, flat, stray light and trim of every channel from the tiles' statistics, with uncertainties.

    Parameters
    ----------
    stats : sequence of TileStats
        One per channel (:func:`._summary.summarise_tile` of every sampled tile, gathered).
    dark : float or sequence of float, optional
        Known dark offsets; estimated per channel when None.
    flat, trim : bool
        Estimate the flat field and stray light / the border trim.
    trim_threshold, max_trim_px, degree
        See :func:`._flatfield.estimate_tile_model`; cap the trim at a
        fraction of the tile overlap (a quarter, say) so matching keeps it.
    shared_flat : bool
        Use one flat field for all channels (the vignetting of the shared
        optics), taken from the channel that pins it best (most agarose
        and tissue blocks, least scatter: ``TileModel.support``); the other
        channels' dark offsets are refitted with it.
    bootstrap, seed : int
        Bootstrap replicates over the tiles for the uncertainties (0: none) and their seed.
    check_darks : bool
        Check estimated darks against the data's bounds (:func:`._dark_check.checked_darks`; the
        statistics need noise blocks), clip an inconsistent one into them, and widen the dark's
        uncertainty to the bounds' (the bootstrap sees the fit's scatter from tile to tile, not its
        biases: the bounds say how far the data let the dark move), the flat's by what that dark
        range does to the flat.
    starmap : callable
        Runs the channels' independent fits (with their bootstraps, the costly part): in process by
        default, on a cluster's workers when given (:func:`...parallel.calibration.cluster_starmap`);
        the result is the same either way.

    Returns
    -------
    CalibrationEstimate
        Its calibration has identity distortion (fitted by :func:`..stitching.solve_positions`
        or :func:`._distortion_fit.fit_calibration_distortion`).
        ``source["dark"]`` tells whether the offset was separated from the
        flat (``"estimated"``) or is only a low-percentile upper bound.
    """
    c = len(stats)
    if c == 0:
        raise ValueError("no channels to calibrate")
    given = None if dark is None else np.broadcast_to(np.asarray(dark, float), (c,))

    fit = partial(
        estimate_tile_model,
        degree=degree,
        trim_threshold=trim_threshold,
        max_trim_px=max_trim_px,
        bootstrap=bootstrap,
    )

    def items(channels: Sequence[int], known_flat: npt.NDArray[np.float32] | None) -> list[tuple[Any, ...]]:
        return [(stats[i], None if given is None else float(given[i]), known_flat, seed + i) for i in channels]

    shared = shared_flat and c > 1
    # With a shared flat only the reference channel's first fit keeps its bootstrap (the others are refitted),
    # so the first fits run without one and the reference's bootstrap runs beside the refits: one round of
    # fits fewer for the workers, the same results (a bootstrap never changes the fitted values).
    first = partial(_fit_channel, partial(fit, bootstrap=0) if shared else fit)
    models = starmap(first, items(range(c), None))
    flat_sigma = [m.flat_sigma for m in models]
    if shared:
        # Vignetting is a property of the shared optics: take the flat of the channel that pins it
        # best (a speckled nuclear stain has few clean tissue blocks) and refit the others' dark.
        score = [m.support for m in models]
        ref = int(np.argmax(score))
        others = [i for i in range(c) if i != ref]
        again = ([ref] if bootstrap > 0 else []) + others
        jobs = items(again[: len(again) - len(others)], None) + items(others, models[ref].flat)
        refit = dict(zip(again, starmap(partial(_fit_channel, fit), jobs), strict=True))
        models = [refit.get(i, m) for i, m in enumerate(models)]
        flat_sigma = [models[ref].flat_sigma] * c
    darks = np.array([m.dark for m in models])
    if given is None:
        kinds = {m.dark_source for m in models}
        dark_src = "estimated" if kinds <= {"two-level fit", "flat + dim-class fit"} else "low-percentile (upper bound)"
    else:
        dark_src = "given"
    tr = (
        Trim(**{k: max(getattr(m.trim, k) for m in models) for k in ("top", "bottom", "left", "right")})
        if trim
        else Trim()
    )
    flats = np.stack([m.flat for m in models]) if flat else None
    strays = np.stack([m.stray for m in models]) if flat else None
    if strays is not None and not np.any(strays):
        strays = None
    cal = Calibration(
        dark=darks,
        flat=flats,
        trim=tr,
        stray=strays,
        source={
            "dark": dark_src,
            "flat": _flat_source(models) if flat else "none",
            "trim": "estimated" if trim else "none",
            "distortion": "none",
        },
    )
    dark_sigma = np.array([m.dark_sigma for m in models])
    # no sigma where the fit could not separate dark from flat (the flat was left uniform: not pinned)
    have = flat and bootstrap > 0 and all(f is not None for f in flat_sigma)
    flat_sigma_map = np.stack([f for f in flat_sigma if f is not None]) if have else None
    dark_from = ["given" if given is not None else "bootstrap" for _ in range(c)]
    checks: list[DarkCheck] = []
    if check_darks and given is None:
        used, checks = checked_darks(stats, darks)
        check_sigma = np.array([ck.sigma for ck in checks])
        boot = np.where(np.isfinite(dark_sigma), dark_sigma, 0.0)
        dark_sigma = np.where(np.isfinite(check_sigma), np.hypot(boot, check_sigma), dark_sigma)
        dark_from = [
            ("bootstrap + dark check bounds" if np.isfinite(b) else "dark check bounds") if np.isfinite(k) else f
            for b, k, f in zip([m.dark_sigma for m in models], check_sigma, dark_from, strict=True)
        ]
        if not all(ck.consistent for ck in checks):
            cal = replace(cal, dark=used, source={**cal.source, "dark": dark_src + ", clipped to data bounds"})
    return CalibrationEstimate(
        calibration=cal,
        dark_sigma=dark_sigma,
        flat_sigma=flat_sigma_map,
        stray_amplitude=np.array([m.stray_amplitude if flat else 0.0 for m in models]),
        stray_sigma=np.array([m.stray_sigma if flat else float("nan") for m in models]),
        bootstrap=int(bootstrap),
        checks=checks,
        dark_sigma_from=dark_from,
        stray_unmeasured=[m.stray_unmeasured if flat else () for m in models],
    )


def _fit_channel(
    fit: Callable[..., TileModel],
    stats: TileStats,
    dark: float | None,
    known_flat: npt.NDArray[np.float32] | None,
    seed: int,
) -> TileModel:
    """One channel's fit (module level, so that a cluster's workers can run it)."""
    return fit(stats, dark=dark, flat=known_flat, seed=seed)


def _flat_source(models: Sequence[TileModel]) -> str:
    """``"estimated"``, or ``"estimated: uniform (why)"`` where a fitted flat was refused for a uniform one (the
    stitch step refines either from the seams: both start with ``"estimated"``)."""
    refused = sorted({f"ch{c}: {m.flat_refused}" for c, m in enumerate(models) if m.flat_refused})
    return "estimated" if not refused else "estimated: uniform (" + "; ".join(refused) + ")"
