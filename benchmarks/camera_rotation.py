"""A camera turned against the stage: is its rotation found from the stage statistics, applied, reported?

    python benchmarks/camera_rotation.py [--quick] [--deg 0.3] [--grids 2,4,6] [--seeds 0,1,2] [--cache DIR]

Tiles of a random blob scene (:func:`imaxt_pipeline.testing.grid_tiles`, Poisson noise) seen through a
cubic distortion and a camera rotated by ``--deg`` against the stage (``shear_yx = -shear_xy``), a 3 px
stage, square grids of 384 px tiles; every pair matched with the stitch step's matcher, one solve.
Per case: median / max tile error after removing the translation only (the rotation is a linear map
the overlaps cannot see, so it stays in these errors unless the solve applies it), the same after
removing the whole linear map (what the overlaps fix), the off-diagonal estimate and its sigma, whether
it was applied and the translation-only error its sigma implies.

The matches are cached (``--cache``), so the same cases can be solved by another version of the code
(``PYTHONPATH=/path/to/old/checkout python benchmarks/camera_rotation.py --cache DIR``, which then only
reads them): before / after on identical inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _errors(pos, true, linear=False):
    d = np.asarray(pos, float) - true
    if linear:
        design = np.column_stack([np.ones(len(true)), true - true.mean(axis=0)])
        d = d - design @ np.linalg.lstsq(design, d, rcond=None)[0]
    else:
        d = d - d.mean(axis=0)
    return np.hypot(d[:, 0], d[:, 1])


def _case(grid, seed, deg, cache):
    """Matches (as arrays), true and stage positions of one case, rendered and matched once (cached)."""
    path = Path(cache) / f"rot_g{grid}_s{seed}_d{deg:g}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    from imaxt_pipeline.algorithms.optics import DistortionModel
    from imaxt_pipeline.algorithms.stitching import adjacent_pairs, match_pair
    from imaxt_pipeline.testing import grid_tiles

    theta = np.radians(deg)
    model = DistortionModel(k_y=0.004, k_x=0.005, shear_yx=theta, shear_xy=-theta)
    tiles, true, stage = grid_tiles(seed, rows=grid, cols=grid, tile=384, overlap=0.1, model=model, stage_err=3.0)
    out = {"true": true, "stage": stage, "ref": [], "mov": [], "ok": [], "pa": [], "pb": [], "w": [], "n": []}
    for a, b in adjacent_pairs(grid, grid):
        m = match_pair(tiles[a], tiles[b], stage[b] - stage[a], reference=a, moving=b)
        out["ref"].append(a)
        out["mov"].append(b)
        out["ok"].append(m.ok)
        out["n"].append(len(m.point_weights))
        out["pa"].append(m.points_ref)
        out["pb"].append(m.points_mov)
        out["w"].append(m.point_weights)
    d = {k: np.asarray(v) for k, v in out.items() if k not in ("pa", "pb", "w")}
    d.update(pa=np.concatenate(out["pa"]), pb=np.concatenate(out["pb"]), w=np.concatenate(out["w"]))
    Path(cache).mkdir(parents=True, exist_ok=True)
    np.savez(path, **d)
    return d


def _solve(d):
    from imaxt_pipeline.algorithms.stitching import PairMatch, solve_positions

    ms, k = [], 0
    for a, b, ok, n in zip(d["ref"], d["mov"], d["ok"], d["n"], strict=True):
        pa, pb, w = d["pa"][k : k + n], d["pb"][k : k + n], d["w"][k : k + n]
        k += n
        shift = tuple(np.mean(pa - pb, axis=0)) if n else (0.0, 0.0)
        ms.append(PairMatch(int(a), int(b), shift, shift, 1.0, bool(ok), pa, pb, w))
    t0 = time.perf_counter()
    sol = solve_positions(ms, d["stage"], tile_shape=(384, 384), fit_magnification=False, prior_sigma_px=3.0)
    return sol, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="grids 2 and 6, seed 0")
    ap.add_argument("--deg", type=float, default=0.3)
    ap.add_argument("--grids", default="2,4,6")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache", default="/tmp/camera_rotation_cache")
    args = ap.parse_args(argv)
    grids = [2, 6] if args.quick else [int(v) for v in args.grids.split(",")]
    seeds = [0] if args.quick else [int(v) for v in args.seeds.split(",")]
    print(f"camera rotated {args.deg} deg against the stage, 3 px stage, 384 px tiles, 10 % overlap")
    print("T: translation removed; A: whole linear map removed; shear yx/xy (1e-3) +- sigma, * applied")
    print(
        f"{'grid':>6s} {'seed':>4s} {'Tmed':>6s} {'Tmax':>6s} {'Amed':>6s} {'shear yx':>15s} {'shear xy':>15s} "
        f"{'Tpred':>6s} {'s':>5s}"
    )
    worst = 0.0
    for grid in grids:
        for seed in seeds:
            d = _case(grid, seed, args.deg, args.cache)
            sol, dt = _solve(d)
            e, ea = _errors(sol.positions, d["true"]), _errors(sol.positions, d["true"], linear=True)
            m = sol.magnification
            applied = getattr(m, "shear_applied", (False, False))
            cols = [
                f"{v * 1e3:+6.2f}+-{s * 1e3:5.2f}" + ("*" if a else " ")
                for v, s, a in zip(m.shear, m.shear_sigma, applied, strict=True)
            ]
            pred = getattr(m, "linear_predicted_px", m.predicted_px)
            print(
                f"{grid}x{grid:<4d} {seed:4d} {np.median(e):6.3f} {e.max():6.3f} {np.median(ea):6.3f} "
                f"{cols[0]:>15s} {cols[1]:>15s} {pred:6.3f} {dt:5.1f}",
                flush=True,
            )
            worst = max(worst, float(np.median(e)))
    print(f"worst translation-only median {worst:.3f} px (true rotation {np.radians(args.deg) * 1e3:.2f}e-3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
