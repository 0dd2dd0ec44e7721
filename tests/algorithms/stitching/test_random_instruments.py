"""Stitching on a fixed subset of randomised-instrument samples (benchmarks/stitching_sweep.py runs the rest).

Every sample draws its own distortion (outside the solver's polynomial family), dark per channel, photon
budget, stray light edge, jitter, overlap and scene. Bounds are what the solver reaches with margin, after
removing each section's translation + per-axis scale over the tiles it did not flag; a flagged tile must
lie within its reported 3 sigma.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import checked_darks, estimate_calibration
from imaxt_pipeline.algorithms.stitching import (
    PairMatch,
    adjacent_pairs,
    describe_flags,
    rematch_plan,
    search_radius,
    solve_positions,
    stage_magnification,
    stage_sigma,
)
from imaxt_pipeline.parallel.stitching import match_tiles
from imaxt_pipeline.synth import draw_instrument, render_random_sample


def _errors(pos: np.ndarray, true: np.ndarray, keep: np.ndarray) -> np.ndarray:
    keep = keep if keep.sum() >= 3 else np.ones(len(true), bool)
    d = pos - true
    for ax in range(2):
        design = np.stack([np.ones(len(true)), true[:, ax] - true[keep, ax].mean()], axis=1)
        coef, *_ = np.linalg.lstsq(design[keep], d[keep, ax], rcond=None)
        d[:, ax] -= design @ coef
    return np.hypot(*(d - d[keep].mean(axis=0)).T)


def _stitch(seed: int, grid: tuple[int, int], sections: int, tile: int = 256) -> tuple[Any, Any, Any, list[PairMatch]]:
    draw = draw_instrument(seed, grid=grid, tile=tile, sections=sections)
    s = render_random_sample(draw)
    n_s, n_c, n_t, h, w = s.tiles.shape
    pool = s.tiles.transpose(1, 0, 2, 3, 4).reshape(n_c, n_s * n_t, h, w)
    cal = estimate_calibration(pool, max_trim_px=6)
    darks, _ = checked_darks(pool, cal.dark)
    cal = dataclasses.replace(cal, dark=darks)
    stage = s.stage_px

    def match(k: int, a: int, b: int, radius: int) -> PairMatch:
        return match_tiles(
            lambda i: s.tiles[k, :, i], a, b, tuple(stage[b] - stage[a]), cal, index_offset=k * n_t, max_shift=radius
        )

    ms = [match(k, a, b, 15) for k in range(n_s) for a, b in adjacent_pairs(*grid)]
    radius, redo = rematch_plan(ms, 15)
    for i in redo:
        m = ms[i]
        ms[i] = match(m.reference // n_t, m.reference % n_t, m.moving % n_t, radius)
    sol = solve_positions(ms, np.concatenate([stage] * n_s), tile_shape=(h, w), fit_magnification=False)
    return draw, s, sol, ms


# (seed, grid, sections, tile): small grids, 1-2 sections, jitter 1.4-9.3 px, 124-556 photons, tissue 13-31 %,
# an inconsistent dark estimate (106, clipped by the check); seed 102 (2 sections) is in the sweep. 210 and
# 216: 2 x 2 grids of 512 px with 5.8 / 6.6 px of corner distortion (a 5th-order term and a random field
# included), the first two seeds from 200 on with more than 5 px and no empty strip.
CASES = [(103, (3, 2), 1, 256), (106, (2, 2), 1, 256), (210, (2, 2), 1, 512), (216, (2, 2), 1, 512)]


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "grid", "sections", "tile"), CASES)
def test_drawn_instruments_stay_within_bounds(seed: int, grid: tuple[int, int], sections: int, tile: int) -> None:
    draw, s, sol, _ = _stitch(seed, grid, sections, tile)
    n_t = grid[0] * grid[1]
    flagged, sigma = sol.flagged, sol.position_sigma
    assert sigma.shape == (sections * n_t,) and np.all(sigma > 0)
    for k in range(sections):
        sl = slice(k * n_t, (k + 1) * n_t)
        e = _errors(sol.positions[sl], s.true_px[k], ~flagged[sl])
        ok = ~flagged[sl]
        # measured (seeds above): median <= 0.10, max <= 0.11 px (2 x 2 of 512 px: 0.027 / 0.036 px)
        assert np.median(e[ok]) <= 0.15, (draw.describe(), e)
        assert e[ok].max() <= 0.25, (draw.describe(), e)
        assert np.all(e[~ok] <= 3 * sigma[sl][~ok]), (draw.describe(), e, sigma[sl])
        # a tile that is not flagged claims 3 sigma <= 0.5 px, and holds it
        assert np.all(3 * sigma[sl][ok] <= 0.5)
    assert not flagged.all(), describe_flags(sol.flags, str)  # the seeds chosen have loops that check them
    # the magnification the overlaps cannot see: from the stage, within its sigma of the true one, and on
    # so few tiles (sigma ~1e-2) never significant, so the nominal one is kept and reported. The true one is
    # the linear part of the optics the fitted model leaves to the positions (the drawn mag, plus what the
    # random field and the 5th-order term project onto it): the true positions regressed on the solved ones.
    mag = sol.magnification
    assert mag is not None and mag.applied == (False, False)
    assert sol.distortion.mag_y == sol.distortion.mag_x == 0.0
    groups = np.repeat(np.arange(sections), n_t)
    truth = stage_magnification(sol.positions, s.true_px.reshape(-1, 2), groups, ~flagged, stage_sigma_px=1e-3)
    assert np.all(np.abs(np.subtract(mag.mag, truth.mag)) < 4 * np.array(mag.mag_sigma)), (mag, truth.mag)


@pytest.mark.slow
def test_a_field_that_biases_every_seam_is_flagged_and_covered() -> None:
    """Seed 326 (2 x 2 of 512 px, random field 0.3 px along the seams): the field shifts every seam of a
    direction alike, a shear no loop sees (0.14 px median after translation + scale). Every tile is flagged
    in words that say so, and lies within its 3 sigma; told there is no such bias, the solve claims 3 sigma
    under 0.5 px and misses the 0.1 px median (found by scanning seeds 300-329: 2 of 30 such, 307 and 326)."""
    _, s, sol, ms = _stitch(326, (2, 2), 1, 512)
    assert np.all(sol.seam_variation > 0.15)
    e = _errors(sol.positions, s.true_px[0], np.ones(4, bool))
    assert sol.flagged.all() and np.all(e <= 3 * sol.position_sigma), (e, sol.position_sigma)
    words = describe_flags(sol.flags, str)
    assert all("every seam biased alike by optics outside the model" in w for w in words), words
    blind = solve_positions(ms, s.stage_px, tile_shape=(512, 512), fit_magnification=False, seam_sigma=(0.0, 0.0))
    eb = _errors(blind.positions, s.true_px[0], np.ones(4, bool))
    assert not blind.flagged.any() and np.median(eb) > 0.1, eb


@pytest.mark.slow
def test_a_seam_no_single_shift_fits_is_still_matched() -> None:
    """Fresh draw 1001 of the sweep (2 x 2 tiles of 1536 px, 22 px of corner distortion, 6 % overlap, 8 px
    of jitter): along the seam of tiles 2 and 3 the distortion moves the overlap by px from end to end, so
    the whole-overlap fit hovers past its iterations next to the NCC peak (NCC 0.79). Restarting it from the
    stage lost the pair, left the grid a chain no loop checks and every tile at the stage's +-12 px; kept as
    the blocks' start, the loop closes and the tiles are placed to a fraction of a px."""
    draw = draw_instrument(1001, max_pixels=12e6)
    assert (draw.rows, draw.cols, draw.tile, draw.corner_distortion_px > 20) == (2, 2, 1536, True)
    s = render_random_sample(dataclasses.replace(draw, sections=1))
    _, n_c, n_t, h, w = s.tiles.shape
    pool = s.tiles[0]
    cal = estimate_calibration(pool, max_trim_px=int(0.25 * 0.1 * h))
    cal = dataclasses.replace(cal, dark=checked_darks(pool, cal.dark)[0])

    def match(a: int, b: int, radius: int) -> PairMatch:
        expected = tuple(s.stage_px[b] - s.stage_px[a])
        return match_tiles(lambda i: s.tiles[0, :, i], a, b, expected, cal, max_shift=radius)

    ms = [match(a, b, 15) for a, b in adjacent_pairs(2, 2)]
    radius, redo = rematch_plan(ms, 15)
    for i in redo:
        ms[i] = match(ms[i].reference, ms[i].moving, radius)
    assert all(m.ok for m in ms), [(m.ok, m.ncc) for m in ms]
    sol = solve_positions(ms, s.stage_px, tile_shape=(h, w), fit_magnification=False)
    assert np.all(sol.pairs["used"].to_numpy(bool)) and np.all(sol.pairs["residual"].to_numpy() < 0.3)
    assert not {f.kind for f in sol.flags} & {"stage", "unverified"}, describe_flags(sol.flags, str)
    e = _errors(sol.positions, s.true_px[0], np.ones(n_t, bool))
    # measured: sigma 0.67-0.77 px (little texture in the overlaps), errors 0.17-0.53 px
    assert np.all(sol.position_sigma < 1.5) and np.all(e <= 3 * sol.position_sigma), (e, sol.position_sigma)


def test_tile_without_information_is_placed_by_stage_and_named() -> None:
    """Every pair of tile 3 (2 x 2 grid) is empty: it is flagged with both neighbours named and a stage sigma."""
    rng = np.random.default_rng(0)
    stage = np.array([[0.0, 0.0], [0.0, 90.0], [90.0, 0.0], [90.0, 90.0]]) * 1.0
    true = stage + rng.normal(0, 2.0, stage.shape)
    pts = np.stack([np.linspace(10, 90, 8), np.full(8, 95.0)], axis=1)

    def pair(a: int, b: int, ok: bool) -> PairMatch:
        if not ok:
            exp = tuple(stage[b] - stage[a])
            return PairMatch(a, b, exp, exp, 0.1, False, information=0.0)
        shift = true[b] - true[a]
        pa = pts if abs(shift[1]) > abs(shift[0]) else pts[:, ::-1]
        return PairMatch(a, b, tuple(stage[b] - stage[a]), tuple(shift), 0.9, True, pa, pa - shift, np.full(8, 100.0))

    ms = [pair(0, 1, True), pair(0, 2, True), pair(1, 3, False), pair(2, 3, False)]
    sol = solve_positions(ms, stage, tile_shape=(100, 100), estimate_distortion=False, prior_sigma_px=3.0)
    kinds = {f.tile: f.kind for f in sol.flags}
    # tiles 0-2 hang on two pairs no loop checks: flagged unverified, with the stage's sigma, not the fit's
    assert kinds == {0: "unverified", 1: "unverified", 2: "unverified", 3: "stage"}
    flag = sol.flags[3]
    # the stage's sigma from the scatter of the three solved tiles (4 degrees of freedom) and the stated
    # 3 px (4 more), widened for so few
    off = sol.positions[:3] - stage[:3]
    ss = float(np.sum((off - off.mean(axis=0)) ** 2))
    assert set(flag.empty) == {1, 2} and flag.sigma_px == pytest.approx(stage_sigma(ss, 4, 3, 3.0))
    assert flag.sigma_px > 1.6 * np.sqrt((ss + 4 * 3.0**2) / 8)  # the pooled scatter, widened for 8 dof
    words = describe_flags(sol.flags, lambda t: f"({t // 2},{t % 2})")
    assert words[3] == f"tile (1,1): overlaps with (0,1) and (1,0) empty — placed by stage, ±{flag.sigma_px:.1f} px"
    assert "no loop checks" in words[0] and all(f.sigma_px >= 3.0 for f in sol.flags)
    assert np.hypot(*(sol.positions[3] - true[3] - (sol.positions[:3] - true[:3]).mean(axis=0))) < 3 * flag.sigma_px


def test_search_radius_grows_with_the_measured_stage_error() -> None:
    rng = np.random.default_rng(1)
    small = rng.normal(0, 1.0, (40, 2))
    assert search_radius(small, 15) == 15
    big = rng.normal(0, 8.0, (40, 2))
    assert 30 <= search_radius(big, 15) <= 80
