"""Distortion calibration from a high-overlap calibration acquisition (``imaxt calibrate-distortion``).

Reads a raw sample (``spec/raw-layout.md``), estimates dark/flat/trim from
its tiles, matches every neighbouring pair and fits the distortion with the
stated stage accuracy as the ruler of the magnification
(:func:`..algorithms.calibration.fit_calibration_distortion`). A *seam acquisition* (the same optics at the
production overlap, a precise stage) then gives the bias every seam of a direction carries from the optics
outside the model (:func:`measure_seam_acquisition`, :func:`..algorithms.stitching.measure_seam_bias`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from ..acquisition import RawSample
from ..algorithms.calibration import DistortionFit, calibration_pairs, estimate_calibration, fit_calibration_distortion
from ..algorithms.optics import Calibration, DistortionModel
from ..algorithms.stitching import PairMatch, SeamCalibration, adjacent_pairs, measure_seam_bias
from ..errors import InputError
from ..io.raw import read_raw_sample, read_tile
from ..io.urls import Location
from ..parallel.stitching import match_tiles

__all__ = ["calibrate_from_acquisition", "measure_seam_acquisition"]


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
    cal, stage, matches = _matched(
        raw,
        storage_options,
        lambda rows, cols: calibration_pairs(rows, cols, diagonal=diagonal),
        max_shift=max_shift,
        block_size=block_size,
        max_tiles=max_tiles,
        max_trim_fraction=max_trim_fraction,
    )
    acq = raw.acquisition
    try:
        fit = fit_calibration_distortion(
            matches, stage, tile_shape=(int(acq.tile_shape[0]), int(acq.tile_shape[1])), stage_sigma_px=stage_sigma_px
        )
    except ValueError as exc:
        raise InputError(raw.root, f"no distortion fit: {exc}") from None
    return cal.with_distortion(fit.model, "calibration-acquisition"), fit


def measure_seam_acquisition(
    raw_url: str,
    distortion: DistortionModel,
    *,
    tile_shape: tuple[int, int],
    storage_options: dict | None = None,
    max_shift: int = 15,
    block_size: int | None = None,
    max_tiles: int = 64,
) -> SeamCalibration:
    """The seams' bias on a raw seam acquisition (all slices, z = 0) after ``distortion``, its stage the ruler.

    Its pairs are matched as the stitch step matches them (blocks of ``tile / 16`` unless ``block_size``).

    Raises
    ------
    InputError
        Bad raw layout, tiles of another shape than ``tile_shape`` (the distortion acquisition's), or too few
        matched pairs of either direction.
    """
    raw = read_raw_sample(raw_url, storage_options=storage_options)
    acq = raw.acquisition
    shape = (int(acq.tile_shape[0]), int(acq.tile_shape[1]))
    if shape != tuple(tile_shape):
        raise InputError(
            raw.root,
            f"seam acquisition tiles are {shape[0]} x {shape[1]} px, the distortion's {tile_shape[0]} x "
            f"{tile_shape[1]}: the same optics and camera are needed",
        )
    _, stage, matches = _matched(
        raw, storage_options, adjacent_pairs, max_shift=max_shift, block_size=block_size, max_tiles=max_tiles
    )
    try:
        return measure_seam_bias(matches, stage, distortion, tile_shape=shape)
    except ValueError as exc:
        raise InputError(raw.root, f"no seam bias: {exc}") from None


def _matched(
    raw: RawSample,
    storage_options: dict | None,
    pairs_of: Callable[[int, int], list[tuple[int, int]]],
    *,
    max_shift: int,
    block_size: int | None,
    max_tiles: int,
    max_trim_fraction: float = 0.0,
) -> tuple[Calibration, np.ndarray, list[PairMatch]]:
    """A raw acquisition's calibration (from up to ``max_tiles`` tiles of all slices, z = 0), stage (px) and the
    matches of ``pairs_of(rows, cols)`` in every slice."""
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
        for a, b in pairs_of(acq.rows, acq.cols)
    ]
    return cal, stage, matches
