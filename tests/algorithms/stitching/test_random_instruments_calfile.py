"""Translation-only tile error with a calibration file, on randomised instruments (issue 14).

Each drawn instrument (3 x 3 tiles of 256 px, one section) gets a calibration acquisition of the same optics
(:func:`imaxt_pipeline.synth.calibration_draw`: 5 x 5 tiles, 45 % overlap, a 0.1 px stage, dense tissue),
fitted as ``imaxt calibrate-distortion`` does (``estimate_calibration``, ``calibration_pairs``, ``match_tiles``,
``fit_calibration_distortion``); the sample is then stitched as the ``stitch`` step does with a file's
distortion (``estimate_distortion=False``). The errors count every tile but a flagged one within its reported
3 sigma, after removing only the translation. ``benchmarks/stitching_calfile.py`` runs the sweep's samples.

The drawn optics have a smooth random displacement field (6 x 6 knots over the tile, rms ``field_px``) outside
the polynomial the calibration fits. Without it (``field_px = 0``) the target holds on seeds 0-5 (measured:
median 0.016-0.068 px, max <= 0.13 px); with it, seed 4 (a 0.09 px rms field) misses it (median 0.16 px):
the 45 % overlaps see the field, the least-squares polynomial absorbs it into a cubic, quintic and
magnification that trade against each other (the calibration's tile positions stay right), and that trade
does not hold at a normal sample's 5-20 % seams (``benchmarks/stitching_calfile.py`` prints it). That miss is
an open limitation of the calibration fit (issue 14), not asserted here as behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import (
    DistortionFit,
    calibration_pairs,
    checked_darks,
    estimate_calibration,
    fit_calibration_distortion,
)
from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.algorithms.stitching import PairMatch, adjacent_pairs, rematch_plan, solve_positions
from imaxt_pipeline.parallel.stitching import match_tiles
from imaxt_pipeline.synth import InstrumentDraw, calibration_draw, draw_instrument, render_random_sample

pytestmark = pytest.mark.slow  # two renders, ~50 pair matches and three solves per seed

STAGE_SIGMA = 0.1  # px: calibration_draw's stage, as the lab states it to the fit


def _draw(seed: int, *, field: bool) -> InstrumentDraw:
    draw = draw_instrument(seed, grid=(3, 3), tile=256, sections=1)
    return draw if field else dataclasses.replace(draw, field_px=0.0)


def _calibration(draw: InstrumentDraw) -> tuple[DistortionFit, Any]:
    """``imaxt calibrate-distortion``'s fit (workflows/calibration_acquisition.py) of the draw's calibration."""
    c = calibration_draw(draw)
    s = render_random_sample(c)
    tiles, stage = s.tiles[0], s.stage_px
    cal = estimate_calibration(tiles, max_trim_px=int(0.25 * c.overlap * c.tile))
    ms = [
        match_tiles(lambda i: tiles[:, i], a, b, tuple(stage[b] - stage[a]), cal, max_shift=15, block_size=16)
        for a, b in calibration_pairs(c.rows, c.cols)
    ]
    return fit_calibration_distortion(ms, stage, tile_shape=(c.tile, c.tile), stage_sigma_px=STAGE_SIGMA), s


def _translation_errors(draw: InstrumentDraw, models: list[DistortionModel | None]) -> list[np.ndarray]:
    """Tile errors (px, translation removed) of the draw stitched with each model fixed (estimated for None)."""
    s = render_random_sample(draw)
    tiles, stage = s.tiles[0], s.stage_px
    cal = estimate_calibration(tiles, max_trim_px=int(0.25 * 0.1 * draw.tile))
    cal = dataclasses.replace(cal, dark=checked_darks(tiles, cal.dark)[0])

    def match(a: int, b: int, radius: int) -> PairMatch:
        return match_tiles(lambda i: tiles[:, i], a, b, tuple(stage[b] - stage[a]), cal, max_shift=radius)

    ms = [match(a, b, 15) for a, b in adjacent_pairs(draw.rows, draw.cols)]
    radius, redo = rematch_plan(ms, 15)
    for i in redo:
        ms[i] = match(ms[i].reference, ms[i].moving, radius)
    out = []
    for model in models:  # the stitch step's solve (StitchParams: a file's linear map kept, else from the stage)
        sol = solve_positions(
            ms,
            stage,
            tile_shape=(draw.tile, draw.tile),
            estimate_distortion=model is None,
            distortion=model,
            fit_magnification=False,
        )
        keep = ~sol.flagged if (~sol.flagged).sum() >= 3 else np.ones(len(stage), bool)
        d = sol.positions - s.true_px[0]
        e = np.hypot(*(d - d[keep].mean(axis=0)).T)
        counts = ~sol.flagged | (e > 3 * sol.position_sigma)  # a flagged tile within its 3 sigma passes
        assert counts.sum() >= 3, (draw.describe(), e, sol.position_sigma)
        out.append(e[counts])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_calibration_file_gives_a_tenth_of_a_pixel_on_drawn_instruments(seed: int) -> None:
    """The first seeds, optics within the calibration's model: translation-only median <= 0.1 px, max <= 0.5 px."""
    draw = _draw(seed, field=False)
    fit, _ = _calibration(draw)
    with_file, without = _translation_errors(draw, [fit.model, None])
    assert np.median(with_file) <= 0.1 and with_file.max() <= 0.5, (draw.describe(), fit.describe(), with_file)
    # the magnification (no overlap sees it) is the stage's: within 6 sigma (a 16 px block's cubic bias aside)
    err = np.subtract([fit.model.mag_y, fit.model.mag_x], draw.mag)
    assert np.all(np.abs(err) <= 6 * np.array([fit.sigma["mag_y"], fit.sigma["mag_x"]]) + 0.5e-4), (err, fit.sigma)
    # without the file the linear optics are left to the sample's own 1-10 px stage: translation-only is worse
    # (seed 3: 0.080 against 0.032 px with the file, 4 tiles counted beside its empty strip; seed 2: 7 px)
    assert np.median(without) > 2 * np.median(with_file), (draw.describe(), without, with_file)
