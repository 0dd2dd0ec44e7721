"""Which pairs no loop checks (bridges of the pair graph, found in linear time), and the stage-placed sigma."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from imaxt_pipeline.algorithms.stitching import adjacent_pairs, stage_sigma
from imaxt_pipeline.algorithms.stitching._uncertainty import bridges, components, unverified_tiles
from imaxt_pipeline.testing import stage_sigma_scores


def _bridges_by_removal(n, edges):
    """The definition: an edge is a bridge when removing it separates its ends."""
    out = np.zeros(len(edges), bool)
    for i in range(len(edges)):
        comp = components(n, [tuple(e) for e in np.delete(edges, i, axis=0)])
        out[i] = comp[edges[i, 0]] != comp[edges[i, 1]]
    return out


def test_bridges_agree_with_the_definition_on_random_grids():
    rng = np.random.default_rng(0)
    for _ in range(150):
        rows, cols = rng.integers(1, 7, 2)
        edges = np.array(adjacent_pairs(rows, cols)).reshape(-1, 2)
        edges = edges[rng.random(len(edges)) < rng.uniform(0.3, 1.0)]  # failed pairs dropped
        if len(edges) and rng.random() < 0.3:
            edges = np.concatenate([edges, edges[:1]])  # a doubled pair is never a bridge
        np.testing.assert_array_equal(bridges(rows * cols, edges), _bridges_by_removal(rows * cols, edges))


def test_a_50x50_grid_is_checked_in_well_under_a_second():
    pairs = adjacent_pairs(50, 50)
    times = []
    for _ in range(3):  # the fastest of three: a loaded CI machine once stalled one call for 2.3 s
        t0 = time.perf_counter()
        loose = unverified_tiles(2500, pairs)
        times.append(time.perf_counter() - t0)
    # ~8 ms here; it was quadratic (one connected-components pass per pair: seconds)
    assert min(times) < 1.0, times
    assert not loose.any()
    chain = [(i, i + 1) for i in range(49)]  # one row of tiles: every pair a bridge, every tile unverified
    assert unverified_tiles(50, chain).all()


def test_stage_sigma_is_the_predictive_f_quantile_and_tends_to_the_scatter() -> None:
    """The closed form against scipy's F quantile: the 3-sigma circle holds a new tile's error 98.9 % of the time."""
    from scipy import stats

    p = np.exp(-4.5)
    for dof, n_ref, ss, stated in ((4, 3, 4 * 81.0, 5.0), (0, 0, 0.0, 5.0), (38, 20, 38 * 9.0, 5.0)):
        nu = dof + 4
        s2 = (ss + 4 * stated**2) / nu
        c = 0.0 if n_ref == 0 else (1.0 / n_ref if n_ref <= 2 else np.pi / 2 / n_ref)
        want = np.sqrt(s2 * (1 + c) * 2 * stats.f.ppf(1 - p, 2, nu) / 9)
        assert stage_sigma(ss, dof, n_ref, stated) == pytest.approx(want, rel=1e-9)
    # three solved tiles of a 2 x 2 grid: well over the scatter; a 10 x 10 section: within 2 % of it
    assert stage_sigma(4 * 81.0, 4, 3, 9.0) > 1.6 * 9.0
    assert stage_sigma(198 * 4.0, 198, 99, 2.0) == pytest.approx(2.0, rel=0.02)


def test_stage_placed_tiles_lie_within_their_3_sigma_over_random_grids() -> None:
    """60 random grids (2-6 x 2-6, 1-3 sections, 10-60 % empty seams, stage jitter 1-10 px, the solver told 5 px).

    Measured (200 draws, seed 0): 0.8 % of 502 stage-placed tiles outside 3 sigma, median z 1.07 (4.0 % and
    16 % with 3-5 solved tiles before the small-sample sigma); benchmarks/stage_sigma.py reports more draws.
    """
    s = stage_sigma_scores(60, seed=1)
    stage = s.kind == "stage"
    assert stage.sum() > 100
    assert s.outside("stage") <= 0.03, np.sort(s.z[stage])[-5:]
    assert s.outside("unverified") <= 0.01
    # not covered by being loose: the typical error is about the sigma (a Rayleigh median is 1.18)
    assert 0.8 < np.median(s.z[stage]) < 1.4
    # tight where the stage was measured on many tiles: the sigma within 30 % of the jitter drawn
    many = stage & (s.n_solved >= 15)
    assert many.any() and np.median(s.sigma[many] / s.true_sigma[many]) < 1.3


def _two_island_grid(rng: np.random.Generator, jitter: float) -> tuple[Any, np.ndarray, np.ndarray]:
    """2 x 4 tiles, the seams between columns 1 and 2 empty: two 2 x 2 islands, each with a loop."""
    from imaxt_pipeline.algorithms.stitching import PairMatch, adjacent_pairs, solve_positions

    step = 90.0
    stage = np.array([[r * step, c * step] for r in range(2) for c in range(4)])
    true = stage + rng.normal(0, jitter, stage.shape)
    pts = np.stack([np.linspace(10, 90, 8), np.full(8, 95.0)], axis=1)
    ms = []
    for a, b in adjacent_pairs(2, 4):
        exp = tuple(stage[b] - stage[a])
        if {a % 4, b % 4} == {1, 2}:
            ms.append(PairMatch(a, b, exp, exp, 0.1, False, information=0.0))
            continue
        shift = true[b] - true[a] + rng.normal(0, 0.02, 2)
        pa = pts if abs(shift[1]) > abs(shift[0]) else pts[:, ::-1]
        ms.append(PairMatch(a, b, exp, tuple(shift), 0.9, True, pa, pa - shift, np.full(8, 100.0)))
    sol = solve_positions(ms, stage, tile_shape=(100, 100), estimate_distortion=False, prior_sigma_px=jitter)
    return sol, stage, true


def test_an_island_tied_by_the_stage_only_carries_the_stages_sigma_and_is_named() -> None:
    from imaxt_pipeline.algorithms.stitching import describe_flags

    rng = np.random.default_rng(3)
    beyond, n = 0, 0
    for _ in range(150):
        sol, _stage, true = _two_island_grid(rng, jitter=4.0)
        main = [0, 1, 4, 5]
        other = [2, 3, 6, 7]
        kinds = {f.tile: (f.kind, f.group) for f in sol.flags}
        # the second island (of two alike) is flagged with its size; the first frames the section (its tiles
        # weak too: the frame is the mean of both islands, which the stage ties)
        assert all(kinds.get(t) == ("weak", 4) for t in other) and all(kinds.get(t, ("", 0))[1] == 0 for t in main)
        frame = (sol.positions[main] - true[main]).mean(axis=0)
        err = np.hypot(*(sol.positions[other] - true[other] - frame).T)
        beyond += int(np.sum(err > 3 * sol.position_sigma[other]))
        n += len(other)
        # the solve alone would claim the island's tiles to about the stated prior / 2 only
        assert np.all(sol.position_sigma[other] > 4.0 * np.sqrt(0.5) / np.sqrt(1.25))
    assert beyond / n <= 0.03, beyond / n
    words = describe_flags(sol.flags, lambda t: f"({t // 4},{t % 4})")
    said = dict(zip([f.tile for f in sol.flags], words, strict=True))
    assert "its group of 4 tiles tied to the others by the stage only" in said[2]
    assert "stage only" not in said.get(0, "")


def test_a_false_match_on_a_bridge_is_within_the_sigma_the_stage_disagreement_gives() -> None:
    """2 x 3 tiles, one seam empty so that tile (0,2) hangs on one pair no loop checks, which a false match
    (a 25 px overlap searched 100 px wide, draw 70 of the 12 Mpx sweep) puts 60-120 px off: the tile is flagged
    unverified with a sigma at least its disagreement with the stage, so its error lies within 3 sigma."""
    from imaxt_pipeline.algorithms.stitching import PairMatch, adjacent_pairs, describe_flags, solve_positions

    rng = np.random.default_rng(7)
    step = 90.0
    pts = np.stack([np.linspace(10, 90, 8), np.full(8, 95.0)], axis=1)
    for _ in range(20):
        stage = np.array([[r * step, c * step] for r in range(2) for c in range(3)])
        true = stage + rng.normal(0, 5.0, stage.shape)
        false = rng.uniform(60, 120) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        ms = []
        for a, b in adjacent_pairs(2, 3):
            exp = tuple(stage[b] - stage[a])
            if (a, b) == (2, 5):  # the empty seam: tile 2 hangs on its pair with tile 1
                ms.append(PairMatch(a, b, exp, exp, 0.1, False, information=0.0))
                continue
            shift = true[b] - true[a] + rng.normal(0, 0.02, 2) + (false if (a, b) == (1, 2) else 0.0)
            pa = pts if abs(shift[1]) > abs(shift[0]) else pts[:, ::-1]
            ms.append(PairMatch(a, b, exp, tuple(shift), 0.9, True, pa, pa - shift, np.full(8, 100.0)))
        sol = solve_positions(ms, stage, tile_shape=(100, 100), estimate_distortion=False, prior_sigma_px=5.0)
        frame = (sol.positions[[0, 1, 3, 4]] - true[[0, 1, 3, 4]]).mean(axis=0)
        err = float(np.hypot(*(sol.positions[2] - true[2] - frame)))
        kinds = {f.tile: f.kind for f in sol.flags}
        assert kinds.get(2) == "unverified" and err > 50
        assert err <= 3 * sol.position_sigma[2], (err, sol.position_sigma[2])
        # the tiles the loop checks keep their sub-pixel sigma
        assert np.all(sol.position_sigma[[0, 1, 3, 4]] < 1.0)
        # and the QC line says where the sigma comes from
        (line,) = [w for f, w in zip(sol.flags, describe_flags(sol.flags, str), strict=True) if f.tile == 2]
        assert f"±{sol.position_sigma[2]:.1f} px (its pairs and the stage disagree by" in line, line
