"""Zarr shard sizes on an S3 endpoint (a local moto server, through s3fs) and on local disk.

    python benchmarks/shards.py [--quick] [--repeats 3] [--endpoint-url http://host:port]

The same (2, N, N) float32 block as ``benchmarks/fusion_codecs.py`` (N = 2048, 1024 with ``--quick``),
with the output images' codec (:data:`imaxt_pipeline.io.ome.IMAGE_COMPRESSOR`), chunks of 512 px and
shards of None / 1024 / 2048 px, written as one block task writes it (``arr[:] = block``) into a fresh
zarr v3 array opened through :meth:`imaxt_pipeline.io.urls.Location.zarr_store` (what the pipeline uses),
then read back whole. Printed per store and layout: MB/s written and read (1 MB = 1e6 B of
uncompressed float32; best of ``--repeats``), the objects written (files / S3 keys, metadata apart) and
the HTTP requests of the write and of the read (moto's access log). moto keeps objects in memory in this
process: it measures the request overheads of a layout (one PUT per chunk against one per shard), not a
network or a disk; a real bucket adds latency per request, which favours fewer, larger objects. Without
``--endpoint-url`` a ``ThreadedMotoServer`` is started.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

HERE = Path(__file__).resolve().parent
CHUNK = 512
SHARDS = (None, 1024, 2048)


def _block(size: int) -> np.ndarray:
    """``fusion_codecs.py``'s block (loaded by path: benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("_fusion_codecs", HERE / "fusion_codecs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._block(size)  # type: ignore[no-any-return]


class _RequestCounter(logging.Filter):
    """Counts the moto server's requests (its access log, which it then swallows)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        return False


REQUESTS = _RequestCounter()


def _moto() -> tuple[Any, str]:
    from imaxt_pipeline.testing._s3 import start_moto_server

    logging.getLogger("werkzeug").addFilter(REQUESTS)
    return start_moto_server()


def measure(url: str, options: dict[str, Any], data: np.ndarray, shard: int | None, repeats: int) -> dict[str, float]:
    """Best write and read seconds of ``data`` at ``url`` with 512-px chunks and ``shard``, and its objects."""
    from imaxt_pipeline.io.ome import IMAGE_COMPRESSOR
    from imaxt_pipeline.io.urls import Location

    best_w = best_r = float("inf")
    objects = puts = gets = 0
    for k in range(repeats):
        loc = Location(f"{url.rstrip('/')}/r{k}.zarr", options)
        arr = zarr.create_array(
            loc.zarr_store(),
            shape=data.shape,
            chunks=(1, CHUNK, CHUNK),
            shards=None if shard is None else (1, shard, shard),
            dtype="float32",
            compressors=[IMAGE_COMPRESSOR],
            fill_value=0,
        )
        n0 = REQUESTS.count
        t0 = time.perf_counter()
        arr[:] = data
        t1 = time.perf_counter()
        n1 = REQUESTS.count
        back = zarr.open_array(loc.zarr_store(read_only=True), mode="r")[:]
        t2 = time.perf_counter()
        puts, gets = n1 - n0, REQUESTS.count - n1
        if not np.array_equal(back, data):
            raise AssertionError(f"{loc.url}: read back differs from what was written")
        best_w, best_r = min(best_w, t1 - t0), min(best_r, t2 - t1)
        objects = sum(1 for f in loc.fs.find(loc.root) if not f.endswith("zarr.json"))
        loc.fs.rm(loc.root, recursive=True)
    return {"write_s": best_w, "read_s": best_r, "objects": objects, "write_requests": puts, "read_requests": gets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 1024 px block, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--endpoint-url", default=None, help="an S3 endpoint to use instead of a local moto server")
    args = ap.parse_args()
    size, repeats = (1024, 1) if args.quick else (2048, args.repeats)
    data = _block(size)
    mb = data.nbytes / 1e6
    server, endpoint = (None, args.endpoint_url) if args.endpoint_url else _moto()
    from imaxt_pipeline.testing._s3 import create_bucket

    bucket = create_bucket(endpoint, f"shards-{uuid.uuid4().hex[:8]}")
    local = Path(tempfile.mkdtemp(prefix="shards."))
    stores = [("s3 (moto)", f"s3://{bucket}/bench", {"endpoint_url": endpoint}), ("local disk", str(local), {})]
    print(f"block (2, {size}, {size}) float32, {mb:.0f} MB, chunk {CHUNK} px, lz4-1 shuffle; best of {repeats}")
    print(
        f"{'store':>10s} {'shard':>5s} {'write MB/s':>10s} {'read MB/s':>9s} {'objects':>7s} "
        f"{'requests write/read':>19s}"
    )
    try:
        for name, url, options in stores:
            for shard in SHARDS:
                r = measure(url, options, data, shard, repeats)
                counted = server is not None and url.startswith("s3://")
                requests = f"{r['write_requests']:.0f} / {r['read_requests']:.0f}" if counted else "-"
                print(
                    f"{name:>10s} {str(shard):>5s} {mb / r['write_s']:10.0f} {mb / r['read_s']:9.0f} "
                    f"{r['objects']:7.0f} {requests:>19s}",
                    flush=True,
                )
    finally:
        shutil.rmtree(local, ignore_errors=True)
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    main()
