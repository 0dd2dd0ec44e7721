"""Bead detection precision and speed at 0.56 and 2.24 µm/px against the simulator's truth.

    python benchmarks/beads.py [--quick] [--seeds N] [--step] [--tile 1024] [--grid 3] [--sections 2]

1. Numpy level: sections drawn by the synth scene renderer with a randomised instrument
   (:func:`imaxt_pipeline.testing._beads.bead_field`: background, read noise, PSF, bead S/N 4-80,
   tissue 10-90 % as bright as the beads, texture own to each section), beads of 90 µm. Per pixel
   size, over the seeds: recall (cuts of radius >= 0.3 R wholly inside the image), false positives
   as a fraction of detections, median centre error where S/N >= 5, seconds per Mpx of
   ``find_beads_numpy`` (detection + fits); worst seed and median.
2. ``--step``: the ``beads`` step of ``imaxt run`` (2 workers) on a simulated sample at instrument-like
   geometry (``--grid`` x ``--grid`` tiles of ``--tile`` px, ``--sections``, 2 channels, 90 µm beads)
   at both pixel sizes; calibrate -> mosaic is run once and cached under ``--cache``. Prints the step's
   seconds, candidates, good fits and the truth's bead cuts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def numpy_sweep(pixel_size_um: float, shape: tuple[int, int], seeds: range) -> list[dict[str, float]]:
    from imaxt_pipeline.algorithms.registration import BeadSpec, find_beads_numpy, good_beads
    from imaxt_pipeline.testing._beads import bead_field, bead_truth_score

    spec = BeadSpec(pixel_size_um=pixel_size_um)
    rows = []
    for seed in seeds:
        image, truth = bead_field(seed, pixel_size_um, shape)
        t0 = time.perf_counter()
        df = find_beads_numpy(image, spec)
        dt = time.perf_counter() - t0
        df["good"] = good_beads(df, spec)
        n, found, false, det, err = bead_truth_score(
            df, truth, image.shape, min_radius=spec.min_radius_px, edge=spec.factor + 2
        )
        bright = err[err[:, 1] >= 5, 0]
        rows.append(
            {
                "seed": seed,
                "snr": float(truth[0, 3]) if len(truth) else np.nan,
                "recall": found / n if n else np.nan,
                "fp": false / det if det else 0.0,
                "err": float(np.median(bright)) if bright.size else np.nan,
                "s_per_mpx": dt / (image.size / 1e6),
                "counted": n,
            }
        )
    return rows


def _summary(rows: list[dict[str, float]]) -> str:
    rec = np.array([r["recall"] for r in rows])
    fp = np.array([r["fp"] for r in rows])
    err = np.array([r["err"] for r in rows])
    spd = np.array([r["s_per_mpx"] for r in rows])
    n = int(sum(r["counted"] for r in rows))
    return (
        f"cuts {n:4d}  recall median {np.nanmedian(rec):.3f} worst {np.nanmin(rec):.3f}  "
        f"FP median {np.median(fp):.3f} worst {np.max(fp):.3f}  "
        f"centre err (S/N>=5) median {np.nanmedian(err):.3f} worst {np.nanmax(err):.3f} px  "
        f"{np.median(spd):.2f} s/Mpx (worst {np.max(spd):.2f})"
    )


def step_time(pixel_size_um: float, args: argparse.Namespace) -> str:
    import pandas as pd

    from imaxt_pipeline.config import load_config
    from imaxt_pipeline.io.upload import upload
    from imaxt_pipeline.pipeline import dask_client, run_pipeline
    from imaxt_pipeline.steps import STEP_ORDER
    from imaxt_pipeline.synth import SynthParams, load_truth, synthesize

    root = Path(args.cache).expanduser() / f"g{args.grid}_t{args.tile}_s{args.sections}_p{pixel_size_um:g}"
    store, out = root / "raw.zarr", root / "out.zarr"
    common = {"cluster.n_workers": 2}
    if not (root / "mosaic.done").exists():
        params = SynthParams(
            sample="beadbench",
            slices=args.sections,
            rows=args.grid,
            cols=args.grid,
            tile_shape=(args.tile, args.tile),
            pixel_size_um=pixel_size_um,
            bead_radius_um=(44.0, 46.0),
            corner_distortion_px=12.0 * args.tile / 2048,
        )
        synthesize(root / "raw", params)
        upload(str(root / "raw"), str(store), progress=False, overwrite=store.exists())
        steps = {f"steps.{s}.enabled": s in ("calibrate", "stitch", "mosaic") for s in STEP_ORDER}
        cfg = load_config(None, input_url=str(store), output_url=str(out), **steps, **common)
        with dask_client(cfg.cluster) as client:
            run_pipeline(cfg, client=client)
        (root / "mosaic.done").write_text("1")
    steps = {f"steps.{s}.enabled": s == "beads" for s in STEP_ORDER}
    cfg = load_config(None, input_url=str(store), output_url=str(out), **steps, **common)
    with dask_client(cfg.cluster) as client:
        seconds = run_pipeline(cfg, client=client).steps["beads"]
    df = pd.read_parquet(out / "tables" / "beads.parquet")
    cuts = len(load_truth(root / "raw").bead_detections)
    return (
        f"{pixel_size_um:g} µm/px, {args.grid}x{args.grid} tiles of {args.tile} px, {args.sections} sections: "
        f"beads step {seconds:.1f} s, {len(df)} candidates, {int(df['good'].sum())} good, {cuts} truth cuts"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer seeds, no step timing unless --step")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--step", action="store_true", help="also time the beads step of imaxt run")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--sections", type=int, default=2)
    ap.add_argument("--cache", default="~/.cache/imaxt-bench/beads")
    args = ap.parse_args()
    n = args.seeds or (6 if args.quick else 20)
    print("numpy level (find_beads_numpy on synth sections, 90 µm beads, randomised instrument):")
    for px, shape in ((0.56, (1024, 1024)), (2.24, (512, 512))):
        rows = numpy_sweep(px, shape, range(100, 100 + n))
        print(f"  {px:.2f} µm/px {shape[0]}² x {n} seeds: {_summary(rows)}")
    if args.step or not args.quick:
        print("beads step at instrument-like geometry:")
        for px in (0.56, 2.24):
            print("  " + step_time(px, args))


if __name__ == "__main__":
    main()
