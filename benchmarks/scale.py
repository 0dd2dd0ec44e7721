"""Instrument-scale throughput and memory of ``imaxt run`` (calibrate -> cube) on a simulated STPT sample.

    python benchmarks/scale.py [--quick] [--grid 10] [--sections 3] [--channels 4] [--tile 2048]
                               [--workers 1,2] [--steps calibrate,stitch,mosaic,beads,register,cube]
                               [--cache DIR] [--profile]

The sample (default: 4x4 tiles of 2048 px at 0.56 µm/px, 4 channels, 3 sections, beads of 90 µm diameter) is
simulated and uploaded once into ``--cache`` (default ``~/.cache/imaxt-bench``), keyed by its geometry, and
reused. Each run is a fresh interpreter (``--_run``) that does what ``imaxt run`` does: start a LocalCluster
of ``n`` single-threaded workers (timed: cluster start is part of the run), ``run_pipeline`` with only
``--steps`` enabled, then reads every worker's peak RSS (``VmHWM``, through ``client.run``) and its own.
Printed per worker count: seconds per step, the workers' busy fraction per step (from the task stream), the
wall time, **MB/s per core** = raw uint16 bytes of every tile (all channels, optical layers; 1 MB = 1e6 B) /
wall time / ``os.cpu_count()``, peak RSS of each worker and of the client, and the speed-up from the first to
the last worker count. On a shared machine the wall time measures the neighbours too: the CPU seconds of the
workers and the client (``getrusage``) are printed as well, and raw MB per CPU-second is what MB/s per core
would be with the cores to itself. ``--profile`` also prints the top functions of the workers' statistical
profile (``distributed``'s own sampler, by self time) and of a cProfile of the client.

When ``stitch`` is among the steps, ASHLAR's alignment (``ashlar.reg.EdgeAligner``, through the worker of
``benchmarks/stitching.py``, in the interpreter ``--ashlar-python``, a fresh one per section) runs on the
nuclear channel of each section's raw tiles of the same store (stage positions, pixel size, max_shift
15 µm, its defaults otherwise): its seconds per section (the alignment call; JVM start apart) are printed
beside ours (the stitch step's seconds / sections, all channels, with ``n`` workers) and their ratio
(the issue's target: ours <= 0.5x ASHLAR's). Skipped, with a line, when that interpreter is absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_STEPS = "calibrate,stitch,mosaic,beads,register,cube"


def _sample_params(args: argparse.Namespace) -> Any:
    from imaxt_pipeline.synth import SynthParams

    names = ("nuclear", "cyto", "ch3", "ch4")[: args.channels]
    return SynthParams(
        sample="scale",
        slices=args.sections,
        rows=args.grid,
        cols=args.grid,
        seed=0,
        tile_shape=(args.tile, args.tile),
        pixel_size_um=args.pixel_um,
        channels=names,
        bead_radius_um=(44.0, 46.0),
        corner_distortion_px=12.0 * args.tile / 2048,
        stage_error_px=3.0,
    )


def prepare(args: argparse.Namespace) -> tuple[str, int]:
    """The cached raw store of this geometry (simulated and uploaded once) and its raw tile bytes."""
    from imaxt_pipeline.io.upload import upload
    from imaxt_pipeline.synth import synthesize

    key = f"g{args.grid}_t{args.tile}_c{args.channels}_s{args.sections}_p{args.pixel_um:g}"
    root = Path(args.cache).expanduser() / key
    store = root / "raw.zarr"
    done = root / "ready.json"
    params = _sample_params(args)
    nbytes = params.slices * params.rows * params.cols * len(params.channels) * params.tile_shape[0] ** 2 * 2
    if done.exists():
        return str(store), nbytes
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    synthesize(root / "raw", params)
    t1 = time.perf_counter()
    upload(str(root / "raw"), str(store), progress=False, overwrite=store.exists())
    t2 = time.perf_counter()
    print(
        f"sample {key}: simulated in {t1 - t0:.0f} s, uploaded in {t2 - t1:.0f} s ({nbytes / (t2 - t1) / 1e6:.0f} MB/s)"
    )
    done.write_text(json.dumps({"bytes": nbytes}))
    return str(store), nbytes


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return float(use.ru_utime + use.ru_stime)


def _top_worker_profile(client: Any, n: int = 15) -> list[tuple[str, float]]:
    """Functions of the workers' sampled profile with the most self time (fraction of samples)."""
    tree = client.profile()
    total = max(int(tree.get("count", 0)), 1)
    self_counts: dict[str, int] = {}

    def walk(node: dict[str, Any]) -> None:
        children = node.get("children", {})
        own = int(node.get("count", 0)) - sum(int(c.get("count", 0)) for c in children.values())
        ident = node.get("description", {})
        name = f"{ident.get('name', '?')} ({Path(str(ident.get('filename', '?'))).name}:{ident.get('line_number', '')})"
        if own > 0:
            self_counts[name] = self_counts.get(name, 0) + own
        for c in children.values():
            walk(c)

    walk(tree)
    top = sorted(self_counts.items(), key=lambda kv: -kv[1])[:n]
    return [(k, v / total) for k, v in top]


def run_once(
    store: str, out: str, n_workers: int, steps: list[str], profile: bool, keep: bool = False
) -> dict[str, Any]:
    """One timed run in this interpreter (the ``--_run`` child)."""
    import cProfile
    import io
    import pstats
    import shutil

    from distributed import get_task_stream

    from imaxt_pipeline.config import load_config
    from imaxt_pipeline.pipeline import dask_client, run_pipeline
    from imaxt_pipeline.steps import STEP_ORDER

    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    overrides = {f"steps.{s}.enabled": s in steps for s in STEP_ORDER}
    config = load_config(None, input_url=store, output_url=out, **overrides, **{"cluster.n_workers": n_workers})
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    with dask_client(config.cluster) as client:
        t_cluster = time.perf_counter() - t0
        if prof:
            prof.enable()
        run_start = time.time()
        with get_task_stream(client=client, plot=False) as ts:
            summary = run_pipeline(config, client=client)
        stream = ts.data
        if prof:
            prof.disable()
        wall = time.perf_counter() - t0
        workers = sorted(client.run(_vmhwm_mb).values())
        worker_cpu = sum(client.run(_cpu_s).values())
        top = _top_worker_profile(client) if profile else []
    client_top = ""
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        client_top = buf.getvalue()
    return {
        "steps": summary.steps,
        "wall_s": wall,
        "cluster_s": t_cluster,
        "worker_rss_mb": workers,
        "client_rss_mb": _vmhwm_mb(),
        "cpu_s": worker_cpu + _cpu_s(),
        "worker_profile": top,
        "client_profile": client_top,
        "busy": step_busy(stream, summary.steps, run_start, n_workers),
    }


def step_busy(stream: list[dict[str, Any]], steps: dict[str, float], start: float, n_workers: int) -> dict[str, float]:
    """Per step, the fraction of its wall time the workers spent computing tasks (the task stream).

    Steps run one after another; each step's window is placed by the cumulative step seconds from
    ``start`` (the gaps between steps, provenance writes, are ~0.1 s).
    """
    windows, t = {}, start
    for name, sec in steps.items():
        windows[name] = (t, t + sec)
        t += sec
    busy = dict.fromkeys(windows, 0.0)
    for task in stream:
        for ss in task.get("startstops", ()):
            if ss.get("action") != "compute":
                continue
            for name, (w0, w1) in windows.items():
                busy[name] += max(0.0, min(ss["stop"], w1) - max(ss["start"], w0))
    return {k: busy[k] / max((w1 - w0) * n_workers, 1e-9) for k, (w0, w1) in windows.items()}


def _stitching_bench() -> Any:
    """``benchmarks/stitching.py`` as a module (its ASHLAR worker), as ``stitching_sweep.py`` loads it."""
    spec = importlib.util.spec_from_file_location("_stitching_bench", Path(__file__).resolve().parent / "stitching.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ashlar_per_section(store: str, python: str) -> dict[str, Any]:
    """ASHLAR's ``EdgeAligner`` on channel 0 of every section of the raw store: seconds per section.

    Returns ``time_s`` (the alignment call of each section), ``start_s`` (import + JVM start of each),
    ``cpu_s`` (each child's CPU seconds, its JVM start included), or ``error``.
    """
    import numpy as np

    from imaxt_pipeline.io.rawzarr import RawStore

    if not python or python == "none" or not Path(python).exists():
        return {"error": f"skipped: no ASHLAR interpreter at {python!r} (--ashlar-python PATH)"}
    bench = _stitching_bench()
    raw = RawStore(store)
    acq = raw.acquisition
    out: dict[str, Any] = {"time_s": [], "start_s": [], "cpu_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(acq.slices):
            tiles = np.stack([raw.read_tile(s, 0, t)[0] for t in range(acq.n_tiles)])[None]  # (1, T, H, W)
            npz = str(Path(tmp) / f"section{s}.npz")
            np.savez(npz, tiles=tiles, stage_um=raw.stage_um[s, 0], pixel_size=acq.pixel_size_um)
            del tiles
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = bench.run_isolated(python, "ashlar", {"corrected": False, "sigma": 0.0}, npz, timeout=1800)
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            Path(npz).unlink()
            if "error" in res:
                return {"error": f"failed on section {s}: {res['error']}"}
            out["time_s"].append(res["time_s"])
            out["start_s"].append(res["start_s"])
            out["cpu_s"].append(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime)
            out["note"] = res.get("note", "")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2x2 tiles of 1024 px, 2 channels, 2 sections, 2 workers")
    ap.add_argument("--grid", type=int, default=4, help="tiles per row and column (10 for a 10x10 section)")
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--channels", type=int, default=4, choices=(1, 2, 3, 4))
    ap.add_argument("--sections", type=int, default=3)
    ap.add_argument("--pixel-um", type=float, default=0.56)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--steps", default=DEFAULT_STEPS)
    ap.add_argument("--cache", default="~/.cache/imaxt-bench")
    ap.add_argument("--out", default=None, help="folder for the runs' outputs (default: beside the cached sample)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--keep-output",
        action="store_true",
        help="run --steps on the output a previous run left (e.g. --steps mosaic,cube after a full run)",
    )
    ap.add_argument(
        "--ashlar-python",
        default="/tmp/ashvenv/bin/python",
        help="interpreter with ashlar installed, for the stitch comparison ('none': skip)",
    )
    ap.add_argument("--_run", nargs=4, metavar=("STORE", "OUT", "N", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--_profile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_keep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        store, out, n, steps = args._run
        print("RESULT " + json.dumps(run_once(store, out, int(n), steps.split(","), args._profile, args._keep)))
        return
    if args.quick:
        args.grid, args.tile, args.channels, args.sections, args.workers = 2, 1024, 2, 2, "2"
    store, nbytes = prepare(args)
    cores = os.cpu_count() or 1
    print(
        f"sample: {args.grid}x{args.grid} tiles of {args.tile} px at {args.pixel_um} µm/px, {args.channels} channels, "
        f"{args.sections} sections: {nbytes / 1e6:.0f} MB raw uint16; {cores} cores; steps {args.steps}"
    )
    rows = []
    for n in [int(v) for v in args.workers.split(",")]:
        out_dir = Path(args.out).expanduser() if args.out else Path(store).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        out = str(out_dir / f"out_{n}w.zarr")
        cmd = [sys.executable, __file__, "--_run", store, out, str(n), args.steps]
        if args.profile:
            cmd.append("--_profile")
        if args.keep_output:
            cmd.append("--_keep")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{n} workers: failed\n{proc.stderr[-3000:]}")
            continue
        res = json.loads(lines[-1][7:])
        warned = "large graph" in proc.stderr.lower()
        rows.append((n, res))
        steps = ", ".join(f"{k} {v:.1f}" for k, v in res["steps"].items())
        print(
            f"{n} worker(s): wall {res['wall_s']:.1f} s (cluster start {res['cluster_s']:.1f} s); {steps} s; "
            f"{nbytes / 1e6 / res['wall_s'] / cores:.2f} MB/s per core; CPU {res['cpu_s']:.0f} s "
            f"({nbytes / 1e6 / res['cpu_s']:.2f} MB per CPU-second); peak RSS workers "
            f"{', '.join(f'{v:.0f}' for v in res['worker_rss_mb'])} MB, client {res['client_rss_mb']:.0f} MB"
            f"{'; dask warned about a large graph' if warned else ''}"
        )
        print("  workers busy per step: " + ", ".join(f"{k} {v:.0%}" for k, v in res["busy"].items()))
        if args.profile:
            print("  workers' profile (self time, fraction of samples):")
            for name, frac in res["worker_profile"]:
                print(f"    {frac:6.1%}  {name}")
            print("  client cProfile (tottime):\n" + res["client_profile"])
    if len(rows) > 1:
        (n0, r0), (n1, r1) = rows[0], rows[-1]
        print(f"scaling {n0} -> {n1} workers: {r0['wall_s'] / r1['wall_s']:.2f}x faster")
    if "stitch" in args.steps.split(","):
        _print_ashlar(store, args, rows)


def _print_ashlar(store: str, args: argparse.Namespace, rows: list[tuple[int, dict[str, Any]]]) -> None:
    ash = ashlar_per_section(store, args.ashlar_python)
    if "error" in ash:
        print(f"ASHLAR stitch comparison {ash['error']}")
        return
    per = sum(ash["time_s"]) / len(ash["time_s"])
    print(
        f"ASHLAR EdgeAligner, channel 0 of each section: {per:.1f} s per section "
        f"({', '.join(f'{t:.1f}' for t in ash['time_s'])}; start {sum(ash['start_s']) / len(ash['start_s']):.1f} s "
        f"each, apart; CPU {sum(ash['cpu_s']) / len(ash['cpu_s']):.1f} s per section with the start; {ash['note']})",
        flush=True,
    )
    for n, res in rows:
        ours = res["steps"].get("stitch", float("nan")) / args.sections
        print(f"  ours, stitch step, {n} worker(s), all channels: {ours:.1f} s per section, {ours / per:.2f}x ASHLAR's")


if __name__ == "__main__":
    main()
