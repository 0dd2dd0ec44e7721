"""Segmentation throughput (megapixels per second) and accuracy (object F1) per backend and block size.

For each backend (watershed, cellpose with the shipped model) and block size,
a rendered two-channel plane with known nuclei is segmented

* in one piece in this process (kernel throughput), and
* blockwise on a LocalCluster (the pipeline path: overlapping blocks, IoU
  merge across margins, global relabelling),

and the object-wise F1 at IoU > 0.5 against the truth nuclei is reported.
cellpose uses the GPU when torch sees one (the ``device`` column).

Throughput is printed as Mpx/s (wall), **Mpx/s per core** (divided by the cores the run used: 1 x
``--threads`` in one piece, ``--workers`` x ``--threads`` blockwise, at most the machine's) and Mpx per
CPU-second (the CPU time of this process, or of the workers, over the run: what a core would give on a
machine nobody else loads).

Usage::

    python benchmarks/segmentation.py --quick      # 512 x 512 plane, ~1-2 min on 2 cores
    python benchmarks/segmentation.py              # 2048 x 2048 plane
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def _segmenter(backend: str, image: np.ndarray, threads: int):
    from imaxt_pipeline.algorithms.segmentation import CellGrowth, WatershedSegmenter, plane_thresholds

    t_nuc, t_cell = plane_thresholds(image, max_area=int(np.pi * 10**2))
    if backend == "watershed":
        return WatershedSegmenter(nuclear_threshold=t_nuc, growth=CellGrowth(threshold=t_cell))
    from imaxt_pipeline.algorithms.segmentation import CellposeSegmenter

    lo, hi = np.percentile(image[0], [1.0, 99.9])
    return CellposeSegmenter(
        model="shipped", normalize_lowhigh=(float(lo), float(hi)), growth=CellGrowth(threshold=t_cell), threads=threads
    )


def _bound(seg):
    """``seg`` ready to run in this process: a cellpose model is loaded (once) through io.weights."""
    from imaxt_pipeline.algorithms.segmentation import CellposeSegmenter
    from imaxt_pipeline.io.weights import cached_model

    if isinstance(seg, CellposeSegmenter):
        return seg.with_model(cached_model("cellpose", seg.model, device=seg.device()))
    return seg


def _cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return float(use.ru_utime + use.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small plane, one block size")
    parser.add_argument("--backends", default="watershed,cellpose")
    parser.add_argument("--size", type=int, default=None, help="plane edge in px (512 quick, else 2048)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cellpose task")
    args = parser.parse_args(argv)

    from distributed import Client, LocalCluster

    from imaxt_pipeline.algorithms.segmentation import object_f1
    from imaxt_pipeline.parallel.segmentation import segment_blockwise
    from imaxt_pipeline.synth import render_cells

    cores = os.cpu_count() or 1
    size = args.size or (512 if args.quick else 2048)
    blocks = [256] if args.quick else [512, 1024]
    image, truth, _ = render_cells((size, size), density=0.35, seed=123)
    mpx = size * size / 1e6
    rows = []
    with (
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="3GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        for backend in args.backends.split(","):
            seg = _segmenter(backend, image, args.threads)
            device = "gpu" if backend == "cellpose" and seg.use_gpu() else "cpu"
            _bound(seg).segment(image[:, :64, :64])  # warm-up: imports, model load
            threads = args.threads if backend == "cellpose" else 1
            t0, c0 = time.perf_counter(), _cpu_s()
            whole = _bound(seg).segment(image)
            dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
            f1 = object_f1(truth, whole.nuclei).f1
            rows.append((backend, device, "whole", 1, min(threads, cores), mpx / dt, mpx / cpu, f1, dt))
            client.run(lambda s=seg: _bound(s).segment(np.zeros((2, 32, 32), np.float32)))  # warm the workers
            for block in blocks:
                lab = segment_blockwise(image, seg, block=block)
                c0 = sum(client.run(_cpu_s).values())
                t0 = time.perf_counter()
                out = client.compute(lab, optimize_graph=False).result()
                dt, cpu = time.perf_counter() - t0, sum(client.run(_cpu_s).values()) - c0
                used = min(args.workers * threads, cores)
                f1 = object_f1(truth, out[0]).f1
                rows.append((backend, device, str(block), args.workers, used, mpx / dt, mpx / cpu, f1, dt))
    print(
        f"plane {size} x {size} px ({mpx:.2f} Mpx), {int(truth.max())} truth nuclei, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (client)"
    )
    print(
        f"{'backend':<10} {'device':<6} {'block':>6} {'workers':>7} {'cores':>5} {'Mpx/s':>8} {'Mpx/s/core':>10} "
        f"{'Mpx/CPU-s':>9} {'F1@0.5':>7} {'seconds':>8}"
    )
    for backend, device, block, workers, used, rate, per_cpu, f1, dt in rows:
        print(
            f"{backend:<10} {device:<6} {block:>6} {workers:>7} {used:>5} {rate:>8.3f} {rate / used:>10.3f} "
            f"{per_cpu:>9.3f} {f1:>7.3f} {dt:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
