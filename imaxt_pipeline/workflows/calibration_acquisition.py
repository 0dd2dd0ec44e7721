"""Distortion calibration from a high-overlap calibration acquisition (``imaxt calibrate-distortion``).

Reads a raw sample (``spec/raw-layout.md``), estimates dark/flat/trim from
its tiles, matches every neighbouring pair and fits the distortion with the
stated stage accuracy as the ruler of the magnification
(:func:`..algorithms.calibration.fit_calibration_distortion`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..algorithms.calibration import DistortionFit, calibration_pairs, estimate_calibration, fit_calibration_distortion
from ..algorithms.optics import Calibration
from ..errors import InputError
from ..io.raw import read_raw_sample, read_tile
from ..io.urls import Location
from ..parallel.stitching import match_tiles

__all__ = ["calibrate_from_acquisition"]


def calibrate_from_acquisition(
    raw_url: str,
    *,
    stage_sigma_px: float,
    storage_options: dict | None = None,
    diagonal: bool = False,
    max_shift: int = 15,
    block_size: int = 16,
    max_tiles: int = 64,
    max_trim_fraction: float = 0.25,
) -> tuple[Calibration, DistortionFit]:
    """Dark, flat, trim and distortion of a raw calibration acquisition (all slices, z = 0).

    Returns
    -------
    (Calibration, DistortionFit)
        The calibration carries the fitted distortion.

    Raises
    ------
    InputError
        Bad raw layout, or too few matched pairs for a distortion fit.
    """
    raw = read_raw_sample(raw_url, storage_options=storage_options)
    acq = raw.acquisition
    loc = Location(raw.root, storage_options)
    n_t = acq.n_tiles

    @lru_cache(maxsize=acq.cols + 3)  # pairs run in row-major order: a window of about one row of tiles
    def tile(i: int) -> np.ndarray:
        s, t = divmod(i, n_t)
        return np.stack([read_tile(loc, raw.record_for(s, 0, c, t), acq) for c in range(len(acq.channels))])

    n_all = acq.slices * n_t
    pick = np.unique(np.linspace(0, n_all - 1, min(max_tiles, n_all)).round().astype(int))
    cal = estimate_calibration(
        np.stack([tile(int(i)) for i in pick], axis=1),
        max_trim_px=int(max_trim_fraction * acq.overlap * min(acq.tile_shape)),
    )
    tile.cache_clear()
    pairs = calibration_pairs(acq.rows, acq.cols, diagonal=diagonal)
    stage = raw.stage_um[:, 0].reshape(-1, 2) / acq.pixel_size_um  # (slices * tiles, 2), z = 0
    matches = [
        match_tiles(
            tile,
            a + s * n_t,
            b + s * n_t,
            tuple(stage[b + s * n_t] - stage[a + s * n_t]),
            cal,
            max_shift=max_shift,
            block_size=block_size,
        )
        for s in range(acq.slices)
        for a, b in pairs
    ]
    try:
        fit = fit_calibration_distortion(
            matches, stage, tile_shape=(int(acq.tile_shape[0]), int(acq.tile_shape[1])), stage_sigma_px=stage_sigma_px
        )
    except ValueError as exc:
        raise InputError(raw.root, f"no distortion fit: {exc}") from None
    return cal.with_distortion(fit.model, "calibration-acquisition"), fit
