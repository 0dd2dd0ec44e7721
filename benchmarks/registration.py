"""Bead registration benchmark: centring vs S/N, registration vs beads per slice, solver time.

Run ``python benchmarks/registration.py --quick`` (about a minute on 2 cores)
or without ``--quick`` for more trials. Prints three tables:

1. centring error of the Poisson ML disc fit vs S/N (S/N = disc amplitude
   over the background noise per pixel), with the median reported error;
   the IMAXT paper reaches < 0.1 um at S/N ~ 2 with 0.56 um pixels
   (i.e. < 0.18 px);
2. slice-offset error (after removing nothing: slice 0 is the reference)
   vs beads per slice, with centring errors drawn from table 1's regime;
3. wall time of track building and of the sparse solver for 500 slices x
   20 000 detections.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from imaxt_pipeline.algorithms.registration import build_tracks, disc_model, fit_bead, solve_slice_offsets


def centring_vs_snr(snrs, trials, rng, *, background=100.0, size=81):
    yy, xx = np.indices((size, size), dtype=float)
    rows = []
    for snr in snrs:
        amp = snr * np.sqrt(background)
        err, rep = [], []
        for _ in range(trials):
            p = [
                size / 2 + rng.uniform(-1, 1),
                size / 2 + rng.uniform(-1, 1),
                rng.uniform(10, 30),
                1.5,
                amp,
                background,
            ]
            img = rng.poisson(disc_model(p, yy, xx)).astype(float)
            f = fit_bead(img, y0=size / 2, x0=size / 2, r0=p[2] * rng.uniform(0.9, 1.1))
            err.append(np.hypot(f.y - p[0], f.x - p[1]) / np.sqrt(2))
            rep.append(0.5 * (f.y_err + f.x_err))
        rows.append((snr, float(np.median(err)), float(np.sqrt(np.mean(np.square(err)))), float(np.median(rep))))
    return rows


def simulate_tracks(rng, n_slices, beads_per_slice, sigma, *, span=(3, 8)):
    drift = np.cumsum(rng.normal(0, 2.0, (n_slices, 2)), axis=0)
    drift -= drift[0]
    mean_len = 0.5 * (span[0] + span[1] - 1)
    n_beads = int(np.ceil(beads_per_slice * n_slices / mean_len)) + 1
    s0 = rng.integers(-span[1] + 1, n_slices, n_beads)
    length = rng.integers(span[0], span[1], n_beads)
    pos = rng.uniform(0, 20000, (n_beads, 2))
    slices, yx, sig = [], [], []
    for b in range(n_beads):
        s = np.arange(max(s0[b], 0), min(s0[b] + length[b], n_slices))
        e = sigma * rng.uniform(0.5, 1.5, len(s))
        slices.append(s)
        yx.append(pos[b] + drift[s] + rng.normal(0, 1, (len(s), 2)) * e[:, None])
        sig.append(e)
    return np.concatenate(slices), np.concatenate(yx), np.concatenate(sig), drift


def registration_vs_beads(counts, trials, rng, *, n_slices=20, sigma=0.15):
    rows = []
    for n in counts:
        rms, rep = [], []
        for _ in range(trials):
            slices, yx, sig, drift = simulate_tracks(rng, n_slices, n, sigma)
            ids = build_tracks(slices, yx, radius=20)
            sol = solve_slice_offsets(slices, yx, ids, sigma=sig)
            d = sol.offsets - drift[sol.slices]
            rms.append(float(np.sqrt(np.nanmean(d[1:] ** 2))))
            rep.append(float(np.nanmedian(sol.errors[1:])))
        rows.append((n, float(np.median(rms)), float(np.median(rep))))
    return rows


def solver_time(rng, n_slices=500, detections=20000, sigma=0.15):
    slices, yx, sig, drift = simulate_tracks(rng, n_slices, detections / n_slices, sigma)
    t0 = time.perf_counter()
    ids = build_tracks(slices, yx, radius=20)
    t1 = time.perf_counter()
    sol = solve_slice_offsets(slices, yx, ids, sigma=sig)
    t2 = time.perf_counter()
    err = float(np.sqrt(np.nanmean((sol.offsets - drift[sol.slices])[1:] ** 2)))
    return len(slices), t1 - t0, t2 - t1, sol.iterations, err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    trials = 15 if args.quick else 60

    print("1. Centring error vs S/N (disc radius 10-30 px, background 100 counts/px, 1-D error per axis)")
    print(f"{'S/N':>6} {'median err px':>14} {'rms err px':>11} {'median reported px':>19}")
    for snr, med, rms, rep in centring_vs_snr([0.5, 1, 2, 5, 10, 20], trials, rng):
        print(f"{snr:6.1f} {med:14.3f} {rms:11.3f} {rep:19.3f}")

    print("\n2. Slice-offset error vs beads per slice (20 slices, centring sigma 0.15 px)")
    print(f"{'beads/slice':>11} {'rms offset err px':>18} {'median reported px':>19}")
    for n, rms, rep in registration_vs_beads([2, 5, 10, 20, 40], max(3, trials // 5), rng):
        print(f"{n:11d} {rms:18.3f} {rep:19.3f}")

    print("\n3. Solver time, 500 slices x 20 000 detections")
    n, t_tracks, t_solve, iters, err = solver_time(rng)
    print(
        f"detections {n}, tracks {t_tracks:.2f} s, sparse LSQ {t_solve:.2f} s ({iters} solves), "
        f"rms offset err {err:.3f} px"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
