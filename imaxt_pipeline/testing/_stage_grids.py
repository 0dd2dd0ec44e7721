"""Random grids of pair matches (no images) for checking the sigma of tiles the stage places.

Each draw is one or more sections of a ``rows x cols`` grid whose stage positions miss the true ones by
Gaussian jitter (its sigma drawn, not the one the solver is told); a random share of the pairs carries
no information (empty agarose), the others give exact-but-noisy correspondences on the seam. What is
scored is what the sweep scores: the error of a tile relative to its section (the section's common
translation removed over the tiles the overlaps placed) against the sigma the solver reports for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imaxt_pipeline.algorithms.stitching import PairMatch, adjacent_pairs, solve_positions

__all__ = ["StageSigmaScores", "stage_sigma_scores"]

_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class StageSigmaScores:
    """Per tile placed by the stage (``kind`` of its flag ``"stage"``) or unverified, over all draws.

    ``z`` is ``|error| / sigma`` (the sweep's test is ``z <= 3``), ``true_sigma`` the jitter drawn for it,
    ``n_solved`` how many tiles of its section the overlaps placed, ``kind`` ``"stage"`` or ``"unverified"``.
    """

    z: _Array
    sigma: _Array
    true_sigma: _Array
    n_solved: npt.NDArray[np.int_]
    kind: npt.NDArray[np.str_]

    def outside(self, kind: str = "stage", nsigma: float = 3.0) -> float:
        """Fraction of the tiles of ``kind`` whose error exceeds ``nsigma`` times their reported sigma."""
        sel = self.kind == kind
        return float(np.mean(self.z[sel] > nsigma)) if sel.any() else 0.0


def _draw_matches(
    rng: np.random.Generator, rows: int, cols: int, sections: int, jitter: float, p_empty: float, tile_px: float
) -> tuple[list[PairMatch], _Array, _Array]:
    n_t = rows * cols
    grid = np.array([(r, c) for r in range(rows) for c in range(cols)], np.float64) * 0.9 * tile_px
    stage = np.concatenate([grid] * sections)
    true = stage + rng.normal(0, jitter, stage.shape)
    ms = []
    for k in range(sections):
        for a0, b0 in adjacent_pairs(rows, cols):
            a, b = a0 + k * n_t, b0 + k * n_t
            expected = tuple(stage[b] - stage[a])
            if rng.random() < p_empty:
                ms.append(PairMatch(a, b, expected, expected, 0.1, False, information=0.0))
                continue
            shift = true[b] - true[a]
            horizontal = abs(shift[1]) > abs(shift[0])
            along = np.linspace(0.1, 0.9, 8) * tile_px
            across = np.full(8, tile_px - 0.5 * (tile_px - abs(shift[1 if horizontal else 0])))
            pa = np.stack([along, across] if horizontal else [across, along], axis=1)
            noise = rng.normal(0, 0.05, pa.shape)
            ms.append(PairMatch(a, b, expected, tuple(shift), 0.9, True, pa, pa - shift + noise, np.full(8, 400.0)))
    return ms, stage, true


def stage_sigma_scores(
    n_draws: int, *, seed: int = 0, stated_sigma: float = 5.0, jitter: tuple[float, float] = (1.0, 10.0)
) -> StageSigmaScores:
    """Solve ``n_draws`` random grids (2-6 rows and columns, 1-3 sections, 10-60 % empty pairs, stage jitter
    drawn in ``jitter``, the solver told ``stated_sigma``) and score every flagged tile (see module docstring).
    """
    rng = np.random.default_rng(seed)
    z, sig, truth, n_solved, kinds = [], [], [], [], []
    for _ in range(n_draws):
        rows, cols = (int(v) for v in rng.integers(2, 7, 2))
        sections = int(rng.integers(1, 4))
        jit = float(rng.uniform(*jitter))
        ms, stage, true = _draw_matches(rng, rows, cols, sections, jit, float(rng.uniform(0.1, 0.6)), 100.0)
        sol = solve_positions(ms, stage, tile_shape=(100, 100), estimate_distortion=False, prior_sigma_px=stated_sigma)
        kind_of = {f.tile: f.kind for f in sol.flags}
        n_t = rows * cols
        for k in range(sections):
            sl = slice(k * n_t, (k + 1) * n_t)
            solid = sol.constrained[sl]
            if not solid.any():
                continue  # nothing placed by the overlaps: no frame to measure a stage tile against
            err = sol.positions[sl] - true[sl]
            err -= err[solid].mean(axis=0)
            for t in range(n_t):
                kind = kind_of.get(k * n_t + t, "")
                if kind not in ("stage", "unverified"):
                    continue
                s = float(sol.position_sigma[k * n_t + t])
                z.append(float(np.hypot(*err[t])) / s)
                sig.append(s)
                truth.append(jit)
                n_solved.append(int(solid.sum()))
                kinds.append(kind)
    return StageSigmaScores(
        np.array(z), np.array(sig), np.array(truth), np.array(n_solved, int), np.array(kinds, dtype=np.str_)
    )
