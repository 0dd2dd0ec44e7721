"""Is the sigma of a tile placed by the stage honest? z-scores over random grids of pair matches.

    python benchmarks/stage_sigma.py [--quick] [--draws 400] [--seed 0] [--stated 5]

Each draw is 1-3 sections of a 2-6 x 2-6 grid, 10-60 % of its seams empty, a stage jitter drawn in
1-10 px while the solver is told ``--stated`` px (:func:`imaxt_pipeline.testing.stage_sigma_scores`).
Per tile the solver placed by the stage (or on bridge pairs only, "unverified"), ``z = |error| / sigma``
with the error relative to the section's solved tiles, as the stitching sweep scores it. A 2-D Gaussian
error leaves its 3-sigma circle 1.1 % of the time; the table splits the stage-placed tiles by how many
solved tiles measured the stage and by the jitter drawn.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="60 draws")
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stated", type=float, default=5.0, help="stage error the solver is told (px)")
    args = ap.parse_args(argv)
    from imaxt_pipeline.testing import stage_sigma_scores

    t0 = time.perf_counter()
    s = stage_sigma_scores(60 if args.quick else args.draws, seed=args.seed, stated_sigma=args.stated)
    print(f"{'tiles':>28s} {'n':>5s} {'>3 sigma':>9s} {'median z':>9s} {'rms z/sqrt2':>11s} {'sigma/jitter':>12s}")

    def row(label: str, sel: np.ndarray) -> None:
        if not sel.any():
            return
        z = s.z[sel]
        ratio = np.median(s.sigma[sel] / s.true_sigma[sel])
        print(
            f"{label:>28s} {int(sel.sum()):5d} {100 * np.mean(z > 3):8.1f}% {np.median(z):9.2f} "
            f"{np.sqrt(np.mean(z**2) / 2):11.2f} {ratio:12.2f}"
        )

    stage = s.kind == "stage"
    row("stage-placed, all", stage)
    for lo, hi in ((1, 3), (3, 6), (6, 15), (15, 1000)):
        row(f"  {lo}-{hi - 1} solved tiles", stage & (s.n_solved >= lo) & (s.n_solved < hi))
    for lo, hi in ((1, 3), (3, 6), (6, 8), (8, 10.01)):
        row(f"  jitter {lo}-{hi:.0f} px", stage & (s.true_sigma >= lo) & (s.true_sigma < hi))
    row("unverified (bridges only)", s.kind == "unverified")
    print(f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
