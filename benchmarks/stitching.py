"""Stitching accuracy/speed vs ASHLAR and m2stitch on the project's simulator (imaxt_pipeline.synth).

    python benchmarks/stitching.py [--quick]

Prints median / p95 / max tile-position error vs truth (after removing the
common translation), wall time and peak RSS per method, then the peak RSS
of block-wise fusion for 4x4 vs 8x8 tile slices. Peers that cannot run
(not installed, no JVM, dependency conflicts) are listed with the reason.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
import traceback

import numpy as np
from scipy import ndimage as ndi


def make_tiles(seed, rows, cols, tile):
    """Raw tiles (C, T, H, W) uint16, true and stage positions (px) from :mod:`imaxt_pipeline.synth`.

    One slice: dark 100, vignetting, stray light at x = 0, 2.5 px corner
    distortion, stage error 3 px, shot + read noise, 10 % overlap.
    """
    import csv
    import tempfile
    from pathlib import Path

    import tifffile

    from imaxt_pipeline.synth import SynthParams, synthesize

    p = SynthParams(slices=1, rows=rows, cols=cols, seed=seed, tile_shape=(tile, tile))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        truth = synthesize(root, p)
        n = rows * cols
        tiles = np.zeros((len(p.channels), n, tile, tile), np.uint16)
        stage = np.zeros((n, 2))
        for r in csv.DictReader(open(root / "tiles.csv")):
            t = int(r["row"]) * cols + int(r["col"])
            tiles[int(r["channel"]), t] = tifffile.imread(root / r["file"])
            stage[t] = float(r["y_um"]) / p.pixel_size_um, float(r["x_um"]) / p.pixel_size_um
    true = np.array([truth.tile_positions_px[f"0/{t // cols}/{t % cols}"] for t in range(n)])
    return tiles, true, stage, truth.distortion


def ours(tiles, stage, rows, cols):
    """Calibration from the tiles, pairwise matching, joint positions + distortion solve."""
    from imaxt_pipeline.algorithms.calibration import estimate_calibration
    from imaxt_pipeline.algorithms.overlap import adjacent_pairs
    from imaxt_pipeline.algorithms.positions import solve_positions
    from imaxt_pipeline.parallel.stitch import match_tiles

    h, w = tiles.shape[-2:]
    cal = estimate_calibration(tiles, max_trim_px=int(0.1 * w / 4))
    ms = [match_tiles(lambda i: tiles[:, i], a, b, tuple(stage[b] - stage[a]), cal) for a, b in adjacent_pairs(rows, cols)]
    return solve_positions(ms, stage, tile_shape=(h, w), fit_magnification=False).positions


def ashlar(tiles, stage, rows, cols):
    from ashlar import reg  # starts a JVM (pyjnius + bioformats)

    class Meta(reg.Metadata):
        def __init__(s, tiles, pos):
            s.t, s.p = tiles, np.asarray(pos, float)
        _num_images = property(lambda s: len(s.t))
        num_channels = property(lambda s: 1)
        pixel_size = property(lambda s: 1.0)
        pixel_dtype = property(lambda s: s.t[0].dtype)

        def tile_position(s, i):
            return s.p[i]

        def tile_size(s, i):
            return np.array(s.t[i].shape)

    class Rdr(reg.Reader):
        def __init__(s, tiles, pos):
            s.tiles, s.metadata = tiles, Meta(tiles, pos)

        def read(s, series, c):
            return s.tiles[series]

    tiles = tiles[1]  # one channel (cyto), raw
    al = reg.EdgeAligner(Rdr(tiles, stage), channel=0, max_shift=15, do_make_thumbnail=False)
    al.run()
    return np.asarray(al.positions, float)


def m2stitch(tiles, stage, rows, cols):
    import m2stitch as m2

    tiles = tiles[1]
    df, _ = m2.stitch_images(tiles, rows=[i // cols for i in range(len(tiles))],
                             cols=[i % cols for i in range(len(tiles))], row_col_transpose=False)
    return df[["y_pos", "x_pos"]].to_numpy(float)


def _worker(name, args, q):
    try:
        t0 = time.perf_counter()
        pos = globals()[name](*args)
        q.put((pos, time.perf_counter() - t0, _hwm_mb(), None))
    except Exception as exc:  # report, never crash the table
        q.put((None, 0.0, 0.0, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:90]
               or traceback.format_exc(limit=1)))


def run_isolated(name, *args):
    """Run one method in a fresh process: honest wall time and peak RSS."""
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_worker, args=(name, args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def _hwm_mb():
    """Peak RSS of this process image (VmHWM; ru_maxrss would carry the parent's peak over exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fuse_rss(path, true, model, tile):
    """Peak RSS (MB) of fusing one slice block by block (blocks of 256 px) from memory-mapped tiles."""
    from imaxt_pipeline.algorithms.calibration import Calibration
    from imaxt_pipeline.parallel.fusion import block_regions, fuse_block

    rss0 = _hwm_mb()  # imports only
    mm = np.load(path, mmap_mode="r")
    shape = (int(true[:, 0].max() + tile + 20), int(true[:, 1].max() + tile + 20))
    cal = Calibration(dark=np.full(1, 100.0), distortion=model)
    for region in block_regions(shape, 256):
        fuse_block(lambda i: mm[i][None], lambda *a: None, true, (tile, tile), region, cal, levels=3)
    return rss0, _hwm_mb()


def _rss_worker(args, q):
    q.put(fuse_rss(*args))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows = cols = 4 if args.quick else 6
    tile = 256 if args.quick else 512
    seeds = [0, 1] if args.quick else [0, 1, 2]
    print(f"imaxt_pipeline.synth: {rows}x{cols} tiles of {tile} px, 10 % overlap, stage error 3 px, "
          "2.5 px corner distortion, dark/flat/stray light; errors after removing the common translation")
    print(f"{'method':10s} {'seed':>4s} {'median':>8s} {'p95':>8s} {'max':>8s} {'time s':>8s} {'RSS MB':>8s}  note")
    for seed in seeds:
        tiles, true, stage, _ = make_tiles(seed, rows, cols, tile)
        e = stage - true
        e = np.hypot(*(e - e.mean(0)).T)
        print(f"{'stage':10s} {seed:4d} {np.median(e):8.3f} {np.percentile(e, 95):8.3f} {e.max():8.3f}")
        for name in ("ours", "ashlar", "m2stitch"):
            pos, dt, rss, err = run_isolated(name, tiles, stage, rows, cols)
            if pos is None:
                print(f"{name:10s} {seed:4d} {'-':>8s} {'-':>8s} {'-':>8s} {'-':>8s} {'-':>8s}  cannot run: {err}")
                continue
            e = pos - true
            e = np.hypot(*(e - e.mean(0)).T)
            print(f"{name:10s} {seed:4d} {np.median(e):8.3f} {np.percentile(e, 95):8.3f} {e.max():8.3f} "
                  f"{dt:8.2f} {rss:8.0f}")
    ctx = mp.get_context("spawn")
    for n in (4, 8):
        q = ctx.Queue()
        tiles, true, _, model = make_tiles(1, n, n, tile)  # synthesised here, fused in a fresh process
        path = f"/tmp/_bench_tiles_{n}.npy"
        np.save(path, tiles[1])
        del tiles
        p = ctx.Process(target=_rss_worker, args=((path, true, model, tile), q))
        p.start()
        rss0, rss = q.get()
        print(f"block-wise fusion of a {n}x{n} slice ({tile} px tiles): peak RSS {rss:.0f} MB "
              f"(of which {rss0:.0f} MB imports)")
        p.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
