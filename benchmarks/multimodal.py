"""Multi-modal federation: seconds per slide against a many-section STPT reference, and error vs bead count.

The reference is a bead catalogue only (no images): spheres (radius 9-14 um) scattered through a block of
``--sections`` 15 um sections; each STPT section lists the discs its mid-plane cuts (radius >= 4 px at
2 um/px, centre error 0.15 px). A slide of section k lists the silhouettes of every bead inside the
section (radius >= 3 um) under a random pose (pixel size 0.65-1.3 um, flip, any rotation, 1 % shear,
a smooth warp of ~0.3 px), detection error 0.1 slide px. The coarse pose is the truth perturbed by
what the coarse search leaves (2 degrees, 10 px); the coarse search itself is timed on images of the
same size as a slide (its cost does not depend on content). Per slide: RANSAC matches against every
section, N(z) fit, the affine. Prints seconds per slide (vs the IMAXT paper's ~120 s per slice per
core), the share of slides given their right section, and the median bead error vs truth.

    python benchmarks/multimodal.py --quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from imaxt_pipeline.algorithms.federation import (
    apply_affine,
    coarse_orientation,
    identify_section,
    invert_affine,
    match_beads,
)

PX = 2.0  # STPT um/px
T = 15.0  # section thickness um


def block(rng, n_sections, per_mm2, size_px):
    """Bead spheres: (x, y) px, z um, R um; density per section-thickness slab and mm^2."""
    area = (size_px * PX / 1000.0) ** 2
    n = rng.poisson(per_mm2 * area * n_sections)
    return np.column_stack(
        [rng.uniform(20, size_px - 20, (n, 2)), rng.uniform(-20, n_sections * T + 20, n), rng.uniform(9, 14, n)]
    )


def catalogue(beads, k, rng):
    dz = (k + 0.5) * T - beads[:, 2]
    r2 = beads[:, 3] ** 2 - dz**2
    r = np.sqrt(np.clip(r2, 0, None)) / PX
    keep = r >= 4
    xy = beads[keep, :2] + rng.normal(0, 0.15, (keep.sum(), 2))
    return np.column_stack([xy, r[keep]])


def slide(beads, k, rng):
    top, bottom = k * T, (k + 1) * T
    gap = np.maximum(np.maximum(top - beads[:, 2], beads[:, 2] - bottom), 0)
    sil = np.sqrt(np.clip(beads[:, 3] ** 2 - gap**2, 0, None))
    keep = sil >= 3
    px = rng.uniform(0.65, 1.3)
    t = rng.uniform(-np.pi, np.pi)
    m = (px / PX) * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.array([[1.005, 0.005], [0, 1]])
    if rng.random() < 0.5:
        m = m @ np.diag([-1.0, 1.0])
    a = np.hstack([m, rng.uniform(-100, 100, (2, 1))])
    warp = 0.3 * np.sin(beads[keep, :2] @ rng.normal(0, 0.004, (2, 2)) + rng.uniform(0, 6, 2))
    q = apply_affine(invert_affine(a), beads[keep, :2] + warp) + rng.normal(0, 0.1, (keep.sum(), 2))
    return np.column_stack([q, sil[keep] / px]), a, px


def register(sb, cats, initial, scale):
    counts, fits, expected = [], [], []
    for cat in cats:
        comp = cat[None, :, 2] <= sb[:, None, 2] * scale + 1.5
        mm = match_beads(sb[:, :2], cat[:, :2], initial, search_px=40, tol_px=3, compatible=comp)
        counts.append(mm.n)
        fits.append(mm)
        expected.append(len(cat))  # the whole section lies in the slide's field here
    return identify_section(np.array(counts), np.array(expected)), fits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer slides and densities")
    ap.add_argument("--sections", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    size = 1500  # px: a 3 mm field
    img = rng.random((2200, 2200)) < 0.001
    ref_img = rng.random((size, size)) < 0.001
    t0, c0 = time.perf_counter(), time.process_time()
    coarse_orientation(img.astype(float), 32, ref_img.astype(float), 16, nominal_scale=0.5)
    t_coarse, c_coarse = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"coarse orientation (2200^2 slide px, both flips, full turn, 3 scales): {t_coarse:.2f} s ({c_coarse:.2f} CPU)"
    )
    densities = (10, 20, 40) if args.quick else (5, 10, 20, 40, 80)
    n_slides = 4 if args.quick else 12
    print(f"reference: {args.sections} sections; {n_slides} slides per density (+1 orphan)")
    print("beads/mm2/section  beads/slide  s/slide (CPU)  right section  median err px (um)  worst slide px")
    for dens in densities:
        beads = block(rng, args.sections, dens, size)
        cats = [catalogue(beads, k, rng) for k in range(args.sections)]
        ok, errs, worst, secs, cpu, nb = 0, [], 0.0, [], [], []
        for k in rng.choice(args.sections, n_slides, replace=False):
            sb, a, px = slide(beads, int(k), rng)
            nb.append(len(sb))
            turn = np.radians(rng.uniform(-2, 2))
            rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
            initial = np.hstack([rot @ a[:, :2], (a[:, 2] + rng.uniform(-10, 10, 2))[:, None]])
            t0, c0 = time.perf_counter(), time.process_time()
            sid, fits = register(sb, cats, initial, px / PX)
            secs.append(time.perf_counter() - t0 + t_coarse)
            cpu.append(time.process_time() - c0 + c_coarse)
            if sid.section == k:
                ok += 1
                true_xy = apply_affine(invert_affine(a), beads[:, :2])
                e = np.hypot(*(apply_affine(fits[k].fit.affine, true_xy) - beads[:, :2]).T)
                errs.append(float(np.median(e)))
                worst = max(worst, errs[-1])
        # an orphan: a section above the stack
        sb, a, px = slide(beads, -2, rng)
        sid, _ = register(sb, cats, a, px / PX)
        orphan = "orphan ok" if sid.section is None else f"orphan -> {sid.section}"
        med = float(np.median(errs)) if errs else float("nan")
        print(
            f"{dens:17d}  {np.mean(nb):11.0f}  {np.mean(secs):5.2f} ({np.mean(cpu):5.2f})  {ok:>6d}/{n_slides:<6d}  "
            f"{med:8.3f} ({med * PX:.2f})     {worst:.3f}   {orphan}"
        )
    print("IMAXT paper: ~120 s per slice per core (this: one core, numpy)")


if __name__ == "__main__":
    main()
