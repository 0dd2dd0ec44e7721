"""Coverslip grid stitching: wall time and peak memory of every process for an N x N grid of 512 px tiles.

A DAPI-only, bead-free, single-section sample (the NucleusNet case) is simulated, uploaded and
run through the ``stitch`` step alone on a LocalCluster of two worker processes (3 GiB limit
each). Reported: simulation, upload and stitch seconds, and the peak RSS of the client and of
each worker (sampled every 50 ms with psutil), against the 3 GB budget.

Usage::

    python benchmarks/coverslip.py --quick       # 10 x 10 tiles
    python benchmarks/coverslip.py --grid 25     # 25 x 25 tiles
    python benchmarks/coverslip.py               # 50 x 50 tiles
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

BUDGET_BYTES = 3e9


class _Sampler:
    """Peak RSS of a set of processes, sampled in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except Exception:  # a worker restarted: keep what was seen
                    continue

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10 x 10 grid")
    parser.add_argument("--grid", type=int, default=None, help="tiles per side (default 50, quick 10)")
    parser.add_argument("--tile", type=int, default=512, help="tile edge in px")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    n = args.grid or (10 if args.quick else 50)

    from distributed import Client, LocalCluster

    from imaxt_pipeline.config import load_config
    from imaxt_pipeline.io.upload import upload
    from imaxt_pipeline.pipeline import run_pipeline
    from imaxt_pipeline.steps import STEP_ORDER
    from imaxt_pipeline.synth import SynthParams, synthesize

    params = SynthParams(
        sample="coverslip",
        slices=1,
        rows=n,
        cols=n,
        tile_shape=(args.tile, args.tile),
        channels=("DAPI",),
        n_beads=0,
        seed=5,
    )
    only_stitch = {f"steps.{s}.enabled": s == "stitch" for s in STEP_ORDER}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        synthesize(base / "raw", params)
        t_synth = time.perf_counter() - t0
        t0 = time.perf_counter()
        upload(str(base / "raw"), str(base / "raw.zarr"), progress=False)
        t_upload = time.perf_counter() - t0
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="3GiB"
            ) as cluster,
            Client(cluster) as client,
        ):
            pids = {f"worker {i}": pid for i, pid in enumerate(client.run(os.getpid).values())}
            config = load_config(
                None, input_url=str(base / "raw.zarr"), output_url=str(base / "out.zarr"), **only_stitch
            )
            with _Sampler({"client": os.getpid(), **pids}) as sampler:
                t0 = time.perf_counter()
                run_pipeline(config, client=client)
                t_stitch = time.perf_counter() - t0
    print(f"{n} x {n} tiles of {args.tile} px, 1 channel, 2 workers")
    print(f"simulate {t_synth:.1f} s, upload {t_upload:.1f} s, stitch {t_stitch:.1f} s")
    for name, peak in sampler.peak.items():
        verdict = "ok" if peak < BUDGET_BYTES else "OVER the 3 GB budget"
        print(f"peak RSS {name:<9} {peak / 1e9:6.2f} GB  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
