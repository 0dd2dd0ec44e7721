"""cellpose segmentation on the GPU against the CPU: megapixels per second, same plane, same model.

The prepared device check of the GPU path (``--gpu-workers``): a rendered two-channel plane is
segmented with the shipped cellpose model

* in one piece on the CPU (``gpu=False``) and on the GPU (``gpu=True``), after a warm-up
  each (imports, model load, CUDA context), and
* blockwise on a LocalCluster whose single worker advertises ``resources={"GPU": 1}``
  (``segment_blockwise(..., gpu_resource=True)``: the pipeline's GPU path), checking that every
  segmentation task ran on that worker,

and prints Mpx/s, the speed-up and the object F1 at IoU > 0.5 against the truth (the GPU must
not lose accuracy). Without a CUDA device it runs the CPU rows only and says so (``make bench``
runs ``--quick`` on CPU-only machines).

Usage::

    python benchmarks/segmentation_gpu.py --quick   # 512 x 512 plane (CPU row only without a GPU)
    python benchmarks/segmentation_gpu.py           # 4096 x 4096 plane (GPU machine, ~minutes)
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def _segmenter(image: np.ndarray, *, gpu: bool, threads: int):
    from imaxt_pipeline.algorithms.segmentation import CellGrowth, CellposeSegmenter, plane_thresholds
    from imaxt_pipeline.io.weights import cached_model

    _, t_cell = plane_thresholds(image, max_area=int(np.pi * 10**2))
    lo, hi = np.percentile(image[0], [1.0, 99.9])
    seg = CellposeSegmenter(
        model="shipped",
        normalize_lowhigh=(float(lo), float(hi)),
        growth=CellGrowth(threshold=t_cell),
        threads=threads,
        gpu=gpu,
    )
    return seg, seg.with_model(cached_model("cellpose", seg.model, device=seg.device()))


def _time(seg, image: np.ndarray, repeats: int) -> tuple[float, object]:
    seg.segment(image[:, :256, :256])  # warm-up
    best, out = np.inf, None
    for _ in range(repeats):
        if seg.use_gpu():
            import torch

            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = seg.segment(image)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _blockwise_on_gpu_worker(seg, image: np.ndarray, block: int) -> tuple[float, object, bool]:
    from distributed import Client, LocalCluster, get_task_stream

    from imaxt_pipeline.parallel.segmentation import segment_blockwise

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, resources={"GPU": 1}, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        lab = segment_blockwise(image, seg, block=block, gpu_resource=True)
        client.compute(segment_blockwise(image[:, :512, :512], seg, block=256, gpu_resource=True)).result()  # warm
        with get_task_stream(client) as ts:
            t0 = time.perf_counter()
            out = client.compute(lab, optimize_graph=False).result()
            dt = time.perf_counter() - t0
        (worker,) = client.scheduler_info()["workers"]
        ok = all(t["worker"] == worker for t in ts.data if "segment-block-" in str(t["key"]))
    return dt, out, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 px plane, one repeat")
    parser.add_argument("--size", type=int, default=None, help="plane edge in px (512 quick, else 4096)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--block", type=int, default=1024, help="block edge of the blockwise GPU run")
    args = parser.parse_args(argv)

    import torch

    from imaxt_pipeline.algorithms.segmentation import object_f1
    from imaxt_pipeline.synth import render_cells

    size = args.size or (512 if args.quick else 4096)
    repeats = 1 if args.quick else 3
    image, truth, _ = render_cells((size, size), density=0.35, seed=7)
    mpx = size * size / 1e6
    has_gpu = torch.cuda.is_available()
    print(f"plane {size} x {size} px ({mpx:.2f} Mpx), {int(truth.max())} truth nuclei, torch {torch.__version__}")
    print(f"GPU: {torch.cuda.get_device_name(0) if has_gpu else 'none (CPU rows only)'}")
    rows = []
    _, cpu = _segmenter(image, gpu=False, threads=args.threads)
    dt, out = _time(cpu, image, repeats)
    rows.append(("cpu", f"whole, {args.threads} threads", mpx / dt, object_f1(truth, out.nuclei).f1, dt))
    if has_gpu:
        plain, gpu = _segmenter(image, gpu=True, threads=1)
        dt, out = _time(gpu, image, repeats)
        rows.append(("gpu", "whole", mpx / dt, object_f1(truth, out.nuclei).f1, dt))
        dt, labels, on_gpu = _blockwise_on_gpu_worker(plain, image, args.block)
        where = "all on the GPU worker" if on_gpu else "NOT all on the GPU worker"
        rows.append(("gpu", f"blockwise {args.block} px, {where}", mpx / dt, object_f1(truth, labels[0]).f1, dt))
    print(f"{'device':<6} {'run':<44} {'Mpx/s':>8} {'F1@0.5':>7} {'seconds':>8}")
    for device, run, rate, f1, dt in rows:
        print(f"{device:<6} {run:<44} {rate:>8.3f} {f1:>7.3f} {dt:>8.2f}")
    if has_gpu:
        print(f"GPU / CPU speed-up (whole plane): {rows[1][2] / rows[0][2]:.1f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
