"""Stitching accuracy/speed vs ASHLAR and m2stitch on synthetic distorted tiles.

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

from imaxt_pipeline.algorithms.distortion import DistortionModel, displacement_field

MODEL = DistortionModel(k_y=0.005, k_x=0.005)


def make_tiles(seed, rows, cols, tile, overlap=0.1, stage_err=3.0):
    rng = np.random.default_rng(seed)
    step = tile * (1 - overlap)
    h, w = int((rows - 1) * step + tile + 40), int((cols - 1) * step + tile + 40)
    scene = np.zeros((h, w))
    n = h * w // 150
    scene[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.uniform(500, 2000, n)
    scene = ndi.gaussian_filter(scene, 2.0) * 20 + 20
    dy, dx = displacement_field((tile, tile), MODEL)
    gy, gx = np.indices((tile, tile), dtype=float)
    true, stage, tiles = [], [], []
    for r in range(rows):
        for c in range(cols):
            p = np.array([20 + r * step, 20 + c * step]) + rng.normal(0, 1.0, 2)
            true.append(p)
            stage.append(p + rng.normal(0, stage_err, 2))
            tiles.append(rng.poisson(ndi.map_coordinates(scene, [p[0] + gy + dy, p[1] + gx + dx], order=1)))
    return np.array(tiles, np.uint16), np.array(true), np.array(stage)


def ours(tiles, stage, rows, cols):
    from imaxt_pipeline.algorithms.overlap import adjacent_pairs, match_pair
    from imaxt_pipeline.algorithms.positions import solve_positions

    t = tiles.astype(np.float32)
    ms = [match_pair(t[a], t[b], stage[b] - stage[a], reference=a, moving=b) for a, b in adjacent_pairs(rows, cols)]
    return solve_positions(ms, stage, tile_shape=tiles.shape[1:], fit_magnification=False).positions


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

    al = reg.EdgeAligner(Rdr(tiles, stage), channel=0, max_shift=15, do_make_thumbnail=False)
    al.run()
    return np.asarray(al.positions, float)


def m2stitch(tiles, stage, rows, cols):
    import m2stitch as m2

    df, _ = m2.stitch_images(tiles, rows=[i // cols for i in range(len(tiles))],
                             cols=[i % cols for i in range(len(tiles))], row_col_transpose=False)
    return df[["y_pos", "x_pos"]].to_numpy(float)


def _worker(name, args, q):
    try:
        t0 = time.perf_counter()
        pos = globals()[name](*args)
        q.put((pos, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None))
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


def fuse_rss(n, tile):
    """Peak RSS (MB) of fusing one n x n slice block by block (blocks of 256 px)."""
    from imaxt_pipeline.algorithms.calibration import Calibration
    from imaxt_pipeline.parallel.fusion import block_regions, fuse_block

    tiles, true, _ = make_tiles(1, n, n, tile)
    np.save("/tmp/_bench_tiles.npy", tiles)
    del tiles
    mm = np.load("/tmp/_bench_tiles.npy", mmap_mode="r")
    shape = (int(true[:, 0].max() + tile + 20), int(true[:, 1].max() + tile + 20))
    cal = Calibration(dark=np.zeros(1), distortion=MODEL)
    for region in block_regions(shape, 256):
        fuse_block(lambda i: mm[i][None], lambda *a: None, true, (tile, tile), region, cal, levels=3)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_worker(n, tile, q):
    q.put(fuse_rss(n, tile))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows = cols = 4 if args.quick else 6
    tile = 256 if args.quick else 512
    seeds = [0, 1] if args.quick else [0, 1, 2]
    print(f"{rows}x{cols} tiles of {tile} px, 10 % overlap, stage error 3 px, corner distortion "
          f"{np.hypot(*[d[0, 0] for d in displacement_field((tile, tile), MODEL)]):.1f} px")
    print(f"{'method':10s} {'seed':>4s} {'median':>8s} {'p95':>8s} {'max':>8s} {'time s':>8s} {'RSS MB':>8s}  note")
    for seed in seeds:
        tiles, true, stage = make_tiles(seed, rows, cols, tile)
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
        p = ctx.Process(target=_rss_worker, args=(n, tile, q))
        p.start()
        print(f"block-wise fusion of a {n}x{n} slice ({tile} px tiles): peak RSS {q.get():.0f} MB")
        p.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
