"""CPU seconds of the fusion kernel on one worker-sized block, per output megapixel.

    python benchmarks/fusion_kernels.py [--quick] [--tile 2048] [--channels 2] [--seeds 3]

Data: a 3x3 grid of raw uint16 tiles (``--tile`` px, ``--channels``) at a ~10 % overlap with
stage jitter, a flat field, a border trim and a distortion of ~12 px at the corners of a 2048 px
tile (random per seed); the block is ``tile`` px square, astride the tiles (four touch it), as
:func:`imaxt_pipeline.parallel.fusion.fuse_block` fuses it with its three pyramid levels; then that
block and its right neighbour as one task fuses them (:func:`~imaxt_pipeline.parallel.fusion.fuse_block_chain`:
the two tiles both touch are read once, 6 reads instead of 8). Printed:
CPU seconds (``time.process_time``, one thread) per seed and the worst case, and
output Mpx per CPU-second. Then the cube step's order-1 shift of one block
(:func:`imaxt_pipeline.algorithms.registration.shift_linear`, every channel) in CPU ns per pixel and
channel, beside scipy's order-1 ``affine_transform`` it replaced. No I/O: what the readers and the
codec cost is measured by ``benchmarks/scale.py`` and ``benchmarks/fusion_codecs.py``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def _sample(tile: int, channels: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, Any]:
    from imaxt_pipeline.algorithms.optics import Calibration, DistortionModel, Trim

    rng = np.random.default_rng(seed)
    pitch = 0.9 * tile
    tiles = [rng.integers(0, 4000, (channels, tile, tile)).astype(np.uint16) for _ in range(9)]
    pos = np.array([[r * pitch, c * pitch] for r in range(3) for c in range(3)]) + rng.normal(0, 3, (9, 2)) + 20
    k = 12.0 / 2048  # ~12 px at the corners of a 2048 px tile (k u r² cx with u = 1, r² = 2)
    model = DistortionModel(*rng.uniform(-1, 1, 2) * 1e-3, *rng.uniform(-k, k, 2))
    flat = (0.8 + 0.2 * rng.random((channels, tile, tile))).astype(np.float32)
    cal = Calibration(dark=np.full(channels, 100.0), flat=flat, trim=Trim(4, 4, 4, 4), distortion=model)
    return tiles, pos, cal


def _fuse_once(tile: int, channels: int, seed: int) -> tuple[float, int, str]:
    from imaxt_pipeline.parallel.fusion import fuse_block

    tiles, pos, cal = _sample(tile, channels, seed)
    region = (tile // 2, tile // 2 + tile, tile // 2, tile // 2 + tile)
    t0 = time.process_time()
    fuse_block(tiles.__getitem__, lambda *a: None, pos, (tile, tile), region, cal, levels=3, n_channels=channels)
    return time.process_time() - t0, tile * tile, ""


def _chain_once(tile: int, channels: int, seed: int) -> tuple[float, int, str]:
    """Two neighbouring blocks of a row as one task fuses them (:func:`fuse_block_chain`), with the
    tiles read: each shared tile once."""
    from imaxt_pipeline.parallel.fusion import fuse_block_chain

    tiles, pos, cal = _sample(tile, channels, seed)
    reads: list[int] = []

    def read(i: int) -> np.ndarray:
        reads.append(i)
        return tiles[i]

    regions = [
        (tile // 2, tile // 2 + tile, tile // 2, tile // 2 + tile),
        (tile // 2, tile // 2 + tile, 3 * tile // 2, 5 * tile // 2),
    ]
    t0 = time.process_time()
    fuse_block_chain(read, lambda *a: None, pos, (tile, tile), regions, cal, levels=3, n_channels=channels)
    return time.process_time() - t0, 2 * tile * tile, f"; {len(reads)} tile reads (8 block by block)"


def _shift_ns_per_px(tile: int, channels: int, seed: int) -> tuple[float, float]:
    """CPU ns per pixel and channel of the cube's order-1 shift (:func:`shift_linear`) of one ``tile`` px block,
    and of scipy's order-1 ``affine_transform`` (diagonal matrix, the kernel it replaced) on the same window."""
    from scipy import ndimage as ndi

    from imaxt_pipeline.algorithms.registration import shift_linear

    rng = np.random.default_rng(seed)
    window = (rng.random((channels, tile + 1, tile + 1)) * 4000).astype(np.float32)
    offset = rng.uniform(0, 1, 2)
    shift_linear(window[:, :8, :8], offset, (4, 4))  # numba loads the kernel once per process
    t0 = time.process_time()
    shift_linear(window, offset, (tile, tile))
    ours = time.process_time() - t0
    out = np.empty((tile, tile), np.float32)
    t0 = time.process_time()
    for c in range(channels):
        ndi.affine_transform(
            window[c], np.ones(2), offset=offset, output=out, order=1, mode="constant", prefilter=False
        )
    theirs = time.process_time() - t0
    px = channels * tile * tile
    return ours / px * 1e9, theirs / px * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="512 px tiles, 2 seeds")
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    tile, seeds = (512, 2) if args.quick else (args.tile, args.seeds)
    _fuse_once(64, args.channels, 0)  # untimed: the compiled kernels load (or compile) once per process
    for name, kernel in (("fuse_block", _fuse_once), ("fuse_block_chain (2 blocks)", _chain_once)):
        runs = [kernel(tile, args.channels, seed) for seed in range(seeds)]
        worst = max(cpu for cpu, _, _ in runs)
        px, note = runs[0][1], runs[0][2]
        per_seed = ", ".join(f"{cpu:.2f}" for cpu, _, _ in runs)
        print(
            f"{name}: {tile} px block, {args.channels} channels: CPU s per seed {per_seed}; worst {worst:.2f} s, "
            f"{px / 1e6 / worst:.1f} output Mpx per CPU-second{note}"
        )
    shifts = [_shift_ns_per_px(tile, args.channels, seed) for seed in range(seeds)]
    print(
        f"cube shift (order 1): {tile} px block, {args.channels} channels: CPU ns per px and channel per seed "
        + ", ".join(f"{ours:.1f}" for ours, _ in shifts)
        + f"; worst {max(o for o, _ in shifts):.1f} (scipy's affine_transform: worst {max(t for _, t in shifts):.1f})"
    )


if __name__ == "__main__":
    main()
