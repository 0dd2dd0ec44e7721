"""Stitching accuracy/speed vs ASHLAR and m2stitch on the project's simulator (imaxt_pipeline.synth).

    python benchmarks/stitching.py [--quick] [--m2stitch-python /tmp/m2venv/bin/python]

Every method runs on the same synthetic tiles in its own fresh interpreter
(``python benchmarks/stitching.py --_worker ...``), so its wall time and
peak RSS (the child's ``VmHWM``) are its own, not the parent's. Tiles and
stage positions go to the child through an ``.npz`` file, positions come
back as JSON. Reported: median / p95 / max tile-position error vs truth
after removing the common translation, and the same after removing
translation + per-axis scale (overlaps cannot determine the simulator's
~0.15 % magnification, see ``tests/test_stitch_synth.py``); the time to
import / start the method (ASHLAR starts a JVM) and the time of the
stitching call; peak RSS. Then the peak RSS of block-wise fusion of a 4x4
vs an 8x8 tile slice.

How the peers are fed (as their users would):

* ASHLAR (``ashlar.reg.EdgeAligner``, numpy Reader/Metadata): the nuclear
  channel (ASHLAR's docs align on the DNA stain), tile positions in pixels
  = stage µm / pixel size, ``pixel_size`` set so that ``max_shift`` is
  15 µm (its CLI default), either the raw tiles or the tiles after the same
  dark / stray-light / flat correction that our stitcher estimates (ASHLAR's
  own ``--ffp/--dfp`` profiles are applied only when assembling the mosaic,
  never before alignment), with the default ``filter_sigma=0`` and with
  ``--filter-sigma 1``. Two rows align the cyto channel instead: with
  the defaults ASHLAR's Laplacian whitening turns its smooth, noisy texture
  into noise, the permutation threshold rejects most edges and it may fall
  back to the stage positions ("Could not align enough edges").
* m2stitch (``stitch_images``, run in a separate interpreter given by
  ``--m2stitch-python`` because it needs numpy >= 2.3): the same channel,
  row/col indices and the stage positions (px) as ``position_initial_guess``.

Our stitcher gets the raw tiles of both channels and estimates its own
calibration (included in its time). "ours + calfile" also gets the distortion
(with magnification) that ``imaxt calibrate-distortion`` fits on a simulated
calibration acquisition of the same optics: the overlaps of one slice cannot
measure the magnification, so only that row reaches the 0.1 px target with
the translation alone removed. Peers that cannot run are listed with
the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUCLEAR = 0  # alignment channel for the peers


# ----------------------------------------------------------------------------- data (parent, main venv)


def make_tiles(seed, rows, cols, tile):
    """Raw tiles (C, T, H, W) uint16, true positions (px), stage positions (µm), pixel size, distortion, informative.

    One slice of :mod:`imaxt_pipeline.synth`: dark ~100, vignetting, stray
    light at x = 0, ~2.5 px corner distortion, stage error ~3 px, shot + read
    noise, 10 % overlap, pixel 1 µm.
    """
    import csv

    import tifffile

    from imaxt_pipeline.synth import SynthParams, synthesize

    p = SynthParams(slices=1, rows=rows, cols=cols, seed=seed, tile_shape=(tile, tile))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        truth = synthesize(root, p)
        n = rows * cols
        tiles = np.zeros((len(p.channels), n, tile, tile), np.uint16)
        stage_um = np.zeros((n, 2))
        with open(root / "tiles.csv") as fh:
            for r in csv.DictReader(fh):
                t = int(r["row"]) * cols + int(r["col"])
                tiles[int(r["channel"]), t] = tifffile.imread(root / r["file"])
                stage_um[t] = float(r["y_um"]), float(r["x_um"])
    true = np.array([truth.tile_positions_px[f"0/{t // cols}/{t % cols}"] for t in range(n)])
    return tiles, true, stage_um, p.pixel_size_um, truth.distortion, informative_tiles(truth, true, rows, cols, tile)


def informative_tiles(truth, true, rows, cols, tile, min_std=10.0):
    """Tiles with at least one seam showing structure in the noise-free scene (truth, the same for every method).

    A tile whose every overlap is empty agarose (clean-scene std ~1 count against hundreds elsewhere) cannot
    be placed by any image-based method: it stays where the stage put it, so it is reported apart.
    """
    from imaxt_pipeline.algorithms.stitching import adjacent_pairs

    clean = truth.clean[0].sum(axis=0)
    keep = np.zeros(rows * cols, bool)
    for a, b in adjacent_pairs(rows, cols):
        y0, x0 = np.maximum(true[a], true[b]).astype(int)
        y1, x1 = (np.minimum(true[a], true[b]) + tile).astype(int)
        if clean[y0:y1, x0:x1].std() > min_std:
            keep[[a, b]] = True
    return keep


def distortion_from_calibration_acquisition(tile):
    """(mag_y, mag_x, k_y, k_x) that ``imaxt calibrate-distortion`` fits on a simulated calibration acquisition.

    Same optics as the benchmark tiles (5 x 5 tiles, 45 % overlap, 0.1 px stage): the 'ours + calfile' row
    stitches with it fixed, as a lab with a distortion calibration would.
    """
    from imaxt_pipeline.synth import calibration_params, synthesize
    from imaxt_pipeline.workflows.calibration_acquisition import calibrate_from_acquisition

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), calibration_params(tile_shape=(tile, tile), seed=100))
        _, fit = calibrate_from_acquisition(tmp, stage_sigma_px=0.1)
    print("calibration acquisition: " + fit.describe().replace("\n", "; "))
    return fit.coefficients()


def errors(pos, true, keep=None, *, scale=False):
    """Distance (px) of each tile from truth after removing translation (and per-axis scale).

    The translation (and scale) are fitted over the ``keep`` tiles only; errors are returned for all tiles.
    """
    keep = np.ones(len(true), bool) if keep is None else keep
    d = np.asarray(pos, float) - true
    if scale:
        for ax in range(2):
            design = np.stack([np.ones(len(true)), true[:, ax] - true[keep, ax].mean()], axis=1)
            coef, *_ = np.linalg.lstsq(design[keep], d[keep, ax], rcond=None)
            d[:, ax] -= design @ coef
    d -= d[keep].mean(axis=0)
    return np.hypot(d[:, 0], d[:, 1])


# ----------------------------------------------------------------------------- methods (child processes)


def _ours_setup():
    from imaxt_pipeline.algorithms.calibration import estimate_calibration
    from imaxt_pipeline.algorithms.optics import DistortionModel
    from imaxt_pipeline.algorithms.stitching import adjacent_pairs, solve_positions
    from imaxt_pipeline.parallel.stitching import match_tiles

    def run(d, opts):
        tiles, stage = d["tiles"], d["stage_um"] / float(d["pixel_size"])
        rows, cols = int(d["rows"]), int(d["cols"])
        h, w = tiles.shape[-2:]
        t0 = time.perf_counter()
        cal = estimate_calibration(tiles, max_trim_px=int(0.1 * w / 4))
        t_cal = time.perf_counter() - t0
        ms = [
            match_tiles(lambda i: tiles[:, i], a, b, tuple(stage[b] - stage[a]), cal)
            for a, b in adjacent_pairs(rows, cols)
        ]
        if opts.get("distortion_file"):  # distortion (with magnification) from a calibration acquisition
            model = DistortionModel(*d["distortion"])
            sol = solve_positions(ms, stage, tile_shape=(h, w), estimate_distortion=False, distortion=model)
        else:
            sol = solve_positions(ms, stage, tile_shape=(h, w), fit_magnification=False)
        return sol.positions, f"both channels; calibration estimate {t_cal:.2f} s of it"

    return run


def _ashlar_setup():
    import warnings

    from ashlar import reg  # starts a JVM (pyjnius + bioformats)

    class Meta(reg.Metadata):
        def __init__(s, tiles, pos_px, px):
            s.t, s.p, s.px = tiles, np.asarray(pos_px, float), px

        _num_images = property(lambda s: len(s.t))
        num_channels = property(lambda s: 1)
        pixel_size = property(lambda s: s.px)  # µm per px: converts max_shift (µm) to px
        pixel_dtype = property(lambda s: s.t[0].dtype)

        def tile_position(s, i):  # (y, x) in pixels, like BioformatsMetadata.tile_position
            return s.p[i]

        def tile_size(s, i):
            return np.array(s.t[i].shape)

    class Rdr(reg.Reader):
        def __init__(s, tiles, pos_px, px):
            s.tiles, s.metadata = tiles, Meta(tiles, pos_px, px)

        def read(s, series, c):
            return s.tiles[series]

    def run(d, opts):
        px = float(d["pixel_size"])
        tiles = d["corrected" if opts["corrected"] else "tiles"][opts.get("channel", NUCLEAR)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            al = reg.EdgeAligner(
                Rdr(tiles, d["stage_um"] / px, px),
                channel=0,
                max_shift=15.0,
                filter_sigma=opts["sigma"],
                do_make_thumbnail=False,
            )
            al.run()
        ok = sum(bool(np.isfinite(v[1])) for v in al._cache.values())
        note = f"{ok}/{len(al._cache)} edges kept"
        if any("Could not align enough edges" in str(w.message) for w in caught):
            note += "; 'Could not align enough edges' -> stage positions"
        return np.asarray(al.positions, float), note

    return run


def _m2stitch_setup():
    import m2stitch

    def run(d, opts):
        tiles = d["corrected" if opts["corrected"] else "tiles"][NUCLEAR]
        cols = int(d["cols"])
        n = len(tiles)
        df, _ = m2stitch.stitch_images(
            tiles,
            rows=[i // cols for i in range(n)],
            cols=[i % cols for i in range(n)],
            position_initial_guess=d["stage_um"] / float(d["pixel_size"]),
            row_col_transpose=False,
        )
        return df.sort_index()[["y_pos", "x_pos"]].to_numpy(float), ""

    return run


SETUPS = {"ours": _ours_setup, "ashlar": _ashlar_setup, "m2stitch": _m2stitch_setup}


def _vmhwm_mb():
    """Peak RSS of this process image (VmHWM; ru_maxrss would carry a forking parent's peak over exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(method, opts_json, npz, out):
    """Child entry point: import/start the method, run it once, write positions + timings as JSON."""
    import contextlib
    import io

    t0 = time.perf_counter()
    res = {}
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # tqdm bars, JVM chatter
            run = SETUPS[method]()
            t1 = time.perf_counter()
            with np.load(npz) as z:
                d = {k: z[k] for k in z.files}
            t2 = time.perf_counter()
            pos, note = run(d, json.loads(opts_json))
            t3 = time.perf_counter()
        res = {"positions": np.asarray(pos, float).tolist(), "start_s": t1 - t0, "time_s": t3 - t2, "note": note}
    except Exception as exc:  # report, never crash the table
        msg = str(exc).splitlines()[0] if str(exc) else ""
        res = {"error": f"{type(exc).__name__}: {msg}"[:100]}
    res["rss_mb"] = _vmhwm_mb()
    Path(out).write_text(json.dumps(res))


def run_isolated(python, method, opts, npz, timeout=600):
    """Run one method in a fresh interpreter ``python``; returns the child's JSON dict."""
    if python is None:
        return {"error": "unavailable: no interpreter given (--m2stitch-python PATH)"}
    if not Path(python).exists():
        return {"error": f"unavailable: {python} not found"}
    out = Path(npz).with_suffix(f".{method}.json")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        proc = subprocess.run(
            [python, str(Path(__file__).resolve()), "--_worker", method, json.dumps(opts), npz, str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if not out.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child exited {proc.returncode}: {tail}"[:100]}
    res = json.loads(out.read_text())
    out.unlink()
    if "error" in res and method == "m2stitch" and res["error"].startswith("ModuleNotFoundError"):
        res["error"] = "unavailable: " + res["error"]
    return res


# ----------------------------------------------------------------------------- fusion RSS


def fuse_rss(path, true, model, tile):
    """Peak RSS (MB) of fusing one slice block by block (blocks of 256 px) from memory-mapped tiles."""
    from imaxt_pipeline.algorithms.optics import Calibration
    from imaxt_pipeline.parallel.fusion import block_regions, fuse_block

    rss0 = _vmhwm_mb()  # imports only
    mm = np.load(path, mmap_mode="r")
    shape = (int(true[:, 0].max() + tile + 20), int(true[:, 1].max() + tile + 20))
    cal = Calibration(dark=np.full(1, 100.0), distortion=model)
    for region in block_regions(shape, 256):
        fuse_block(lambda i: mm[i][None], lambda *a: None, true, (tile, tile), region, cal, levels=3)
    return rss0, _vmhwm_mb()


def _rss_worker(args, q):
    q.put(fuse_rss(*args))


# ----------------------------------------------------------------------------- main

VARIANTS = [  # (label, method, options, interpreter key)
    ("ours", "ours", {}, "main"),
    ("ours + calfile", "ours", {"distortion_file": True}, "main"),
    ("ashlar raw", "ashlar", {"corrected": False, "sigma": 0.0}, "main"),
    ("ashlar cal", "ashlar", {"corrected": True, "sigma": 0.0}, "main"),
    ("ashlar cal s1", "ashlar", {"corrected": True, "sigma": 1.0}, "main"),
    ("ashlar cyto raw", "ashlar", {"corrected": False, "sigma": 0.0, "channel": 1}, "main"),
    ("ashlar cyto s1", "ashlar", {"corrected": True, "sigma": 1.0, "channel": 1}, "main"),
    ("m2stitch raw", "m2stitch", {"corrected": False}, "m2"),
    ("m2stitch cal", "m2stitch", {"corrected": True}, "m2"),
]


def _row(label, seed, e=None, es=None, keep=None, res=None, note=""):
    if e is None:
        return f"{label:15s} {seed:4d}" + f" {'-':>6s}" * 7 + f" {'-':>7s} {'-':>7s} {'-':>6s}  {note}"
    ek, esk = e[keep], es[keep]
    nums = [np.median(ek), np.percentile(ek, 95), ek.max(), np.median(esk), np.percentile(esk, 95), esk.max(), e.max()]
    tail = "" if res is None else f" {res['start_s']:7.2f} {res['time_s']:7.2f} {res['rss_mb']:6.0f}"
    return f"{label:15s} {seed:4d}" + "".join(f" {v:6.2f}" for v in nums) + tail + (f"  {note}" if note else "")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4x4 tiles of 256 px, seeds 0-1 (default: 512 px, seeds 0-2)")
    ap.add_argument("--m2stitch-python", default=None, help="interpreter with m2stitch installed (own venv)")
    args = ap.parse_args(argv)
    rows = cols = 4
    tile = 256 if args.quick else 512
    seeds = [0, 1] if args.quick else [0, 1, 2]
    pythons = {"main": sys.executable, "m2": args.m2stitch_python}
    print(
        f"imaxt_pipeline.synth: {rows}x{cols} tiles of {tile} px, 10 % overlap, stage error ~3 px, ~2.5 px corner "
        "distortion, dark/flat/stray light, pixel 1 um"
    )
    print(
        "error px vs truth over the tiles that have structure in a seam: 'T' after removing the common "
        "translation, 'TS' also per-axis scale; 'all' = max over every tile (T); "
        "start = import/JVM start, time = stitching call, RSS = the method's own process peak"
    )
    print(
        "peers align the nuclear channel; 'raw' = raw tiles, 'cal' = after our dark/stray/flat correction, "
        "'s1' = filter_sigma 1 px, 'cyto' = "
        "aligned on the cyto channel; max_shift 15 um"
    )
    hdr = ["T med", "T p95", "T max", "TS med", "TS p95", "TS max", "all"]
    print(
        f"{'method':15s} {'seed':>4s}"
        + "".join(f" {h:>6s}" for h in hdr)
        + f" {'start s':>7s} {'time s':>7s} {'RSS MB':>6s}  note"
    )
    from imaxt_pipeline.algorithms.calibration import estimate_calibration

    summary = {}
    calfile_distortion = distortion_from_calibration_acquisition(tile)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            tiles, true, stage_um, px, _, keep = make_tiles(seed, rows, cols, tile)
            if not keep.all():
                print(
                    f"seed {seed}: tiles {np.flatnonzero(~keep).tolist()} have only empty-agarose seams "
                    "(no method can place them): left out of the statistics, in the 'all' max column"
                )
            cal = estimate_calibration(tiles, max_trim_px=int(0.1 * tile / 4))
            npz = str(Path(tmp) / f"seed{seed}.npz")
            np.savez(
                npz,
                tiles=tiles,
                corrected=cal.apply(tiles).astype(np.float32),
                stage_um=stage_um,
                pixel_size=px,
                rows=rows,
                cols=cols,
                distortion=calfile_distortion,
            )
            stage = stage_um / px
            print(_row("stage", seed, errors(stage, true, keep), errors(stage, true, keep, scale=True), keep))
            for label, method, opts, py in VARIANTS:
                res = run_isolated(pythons[py], method, opts, npz)
                if "error" in res:
                    print(_row(label, seed, note=res["error"]))
                    continue
                pos = np.asarray(res["positions"])
                e, es = errors(pos, true, keep), errors(pos, true, keep, scale=True)
                summary.setdefault(label, []).append((e[keep], es[keep], res["time_s"], res["rss_mb"]))
                print(_row(label, seed, e, es, keep, res, res.get("note", "")))
            os.unlink(npz)
    if len(seeds) > 1 and summary:
        print(f"pooled over seeds {seeds}:")
        for label, runs in summary.items():
            e = np.concatenate([r[0] for r in runs])
            es = np.concatenate([r[1] for r in runs])
            print(
                f"{label:15s}  T median {np.median(e):5.2f} p95 {np.percentile(e, 95):5.2f} max {e.max():5.2f}   "
                f"T+S median {np.median(es):5.2f} p95 {np.percentile(es, 95):5.2f} max {es.max():5.2f}   "
                f"mean time {np.mean([r[2] for r in runs]):6.2f} s   max RSS {max(r[3] for r in runs):5.0f} MB"
            )

    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for n in (4, 8):
        q = ctx.Queue()
        tiles, true, _, _, model, _ = make_tiles(1, n, n, tile)  # synthesised here, fused in a fresh process
        path = str(Path(tempfile.gettempdir()) / f"_bench_tiles_{os.getpid()}_{n}.npy")
        np.save(path, tiles[1])
        del tiles
        p = ctx.Process(target=_rss_worker, args=((path, true, model, tile), q))
        p.start()
        rss0, rss = q.get()
        p.join()
        os.unlink(path)
        print(
            f"block-wise fusion of a {n}x{n} slice ({tile} px tiles, one channel): peak RSS {rss:.0f} MB "
            f"(of which {rss0:.0f} MB imports)"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        worker(*sys.argv[2:6])
        raise SystemExit(0)
    raise SystemExit(main())
