"""Coverslip grid stitching: wall time, CPU time and peak memory of every process for an N x N grid of 512 px tiles.

A DAPI-only, bead-free, single-section coverslip of real nuclei texture (the haematoxylin channel of
scikit-image's immunohistochemistry image, :mod:`imaxt_pipeline.testing.write_coverslip_grid`; each seed draws
overlap, stage error, brightness and noise) is written, uploaded and run through the ``stitch`` step
alone on a LocalCluster of two worker processes (3 GiB limit each). Reported, one line as each stage
ends: write, upload and stitch seconds; the CPU seconds the client and each worker spent stitching
(what the step costs on a quiet machine, whatever the load); the peak RSS of each (sampled every
50 ms with psutil) against the 3 GB budget; tile position errors against the truth.

Usage::

    python benchmarks/coverslip.py --quick       # 10 x 10 tiles
    python benchmarks/coverslip.py --grid 25     # 25 x 25 tiles (the test's size)
    python benchmarks/coverslip.py               # 50 x 50 tiles
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

BUDGET_BYTES = 3e9


def _say(line: str) -> None:
    print(line, flush=True)  # as each stage ends: a run cut short still says how far it got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10 x 10 grid")
    parser.add_argument("--grid", type=int, default=None, help="tiles per side (default 50, quick 10)")
    parser.add_argument("--tile", type=int, default=512, help="tile edge in px")
    parser.add_argument("--seed", type=int, default=5, help="instrument and scene draw")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    n = args.grid or (10 if args.quick else 50)

    import numpy as np
    import psutil
    from distributed import Client, LocalCluster

    from imaxt_pipeline.io.output import OutputStore
    from imaxt_pipeline.io.upload import upload
    from imaxt_pipeline.testing import PeakRss, only_steps, position_errors, write_coverslip_grid

    _say(f"{n} x {n} tiles of {args.tile} px, 1 channel, 1 section, 2 workers (seed {args.seed})")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        grid = write_coverslip_grid(base / "raw", rows=n, cols=n, tile=args.tile, seed=args.seed)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        upload(str(base / "raw"), str(base / "raw.zarr"), progress=False)
        _say(f"write {t_write:.1f} s, upload {time.perf_counter() - t0:.1f} s")
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="3GiB"
            ) as cluster,
            Client(cluster) as client,
        ):
            from imaxt_pipeline.config import load_config
            from imaxt_pipeline.pipeline import run_pipeline

            pids = {"client": os.getpid(), **{f"worker {i}": p for i, p in enumerate(client.run(os.getpid).values())}}
            procs = {name: psutil.Process(pid) for name, pid in pids.items()}
            cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
            config = load_config(
                None, input_url=str(base / "raw.zarr"), output_url=str(base / "out.zarr"), **only_steps("stitch")
            )
            with PeakRss(pids) as rss:
                t0 = time.perf_counter()
                run_pipeline(config, client=client)
                t_stitch = time.perf_counter() - t0
            cpu = {name: sum(p.cpu_times()[:2]) - cpu0[name] for name, p in procs.items()}
            _say(f"stitch {t_stitch:.1f} s wall, {sum(cpu.values()):.1f} s CPU in all (load {os.getloadavg()[0]:.1f})")
            for name, peak in rss.peak.items():
                verdict = "ok" if peak < BUDGET_BYTES else "OVER the 3 GB budget"
                _say(f"  {name:<9} peak RSS {peak / 1e9:5.2f} GB  {verdict:<4}  CPU {cpu[name]:6.1f} s")
        meta = OutputStore(str(base / "out.zarr"), mode="r").imaxt_attrs()["stitch"]
        pos = np.array([meta["tile_positions_px"][f"0/{t // n}/{t % n}"] for t in range(n * n)])
        keep = np.ones(n * n, bool)
        for label, scale in (("T", False), ("TS", True)):
            e = position_errors(pos, grid.true_px, keep, scale=scale)
            s = position_errors(grid.stage_px, grid.true_px, keep, scale=scale)
            _say(
                f"tile error ({label}) median {np.median(e):.3f} max {e.max():.3f} px "
                f"(stage median {np.median(s):.2f} max {s.max():.2f} px)"
            )
        _say(f"tiles placed by the stage: {len(meta['unconstrained'])}, flagged: {len(meta['flags'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
