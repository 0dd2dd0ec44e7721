"""Write/read speed and size of output-image codecs, chunk and shard sizes on local disk.

    python benchmarks/fusion_codecs.py [--quick] [--dir /tmp]

Data: a (2, 2048, 2048) float32 block shaped like a fused mosaic (smooth tissue, nuclei-sized
blobs, Poisson-like noise, an empty agarose margin), written as one block task would write it
(``arr[:] = block``) into a fresh zarr v3 array on disk, then read back whole. Printed per
codec x chunk (x shard): MB/s written and read (1 MB = 1e6 B of uncompressed float32), the
compression ratio and the number of objects (files) written: what chose
:data:`imaxt_pipeline.io.ome.IMAGE_COMPRESSOR` and the default chunk, and what ``shard`` buys.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle


def _block(size: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    tissue = ndi.gaussian_filter(rng.random((size, size)), size / 16) > 0.5
    blobs = ndi.gaussian_filter((rng.random((size, size)) > 0.995).astype(np.float32), 3) * 4e4
    out = []
    for c in range(2):
        signal = 200.0 + tissue * (300.0 + 200 * c) + blobs * (1 - c)
        out.append(rng.poisson(signal).astype(np.float32) - 100.0)
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1024 px block, fewer combinations")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = ap.parse_args()
    size = 1024 if args.quick else 2048
    data = _block(size)
    codecs = [
        ("zstd-5 bitshuffle (raw tiles')", BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle)),
        ("zstd-1 shuffle", BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle)),
        ("lz4-1 shuffle", BloscCodec(cname="lz4", clevel=1, shuffle=BloscShuffle.shuffle)),
        ("lz4-1 bitshuffle", BloscCodec(cname="lz4", clevel=1, shuffle=BloscShuffle.bitshuffle)),
    ]
    layouts = [(256, None), (512, None), (1024, None), (512, 1024), (512, 2048)]
    if args.quick:
        layouts = [(256, None), (512, None), (256, 1024)]
    root = Path(tempfile.mkdtemp(prefix="codecs.", dir=args.dir))
    print(f"block (2, {size}, {size}) float32, {data.nbytes / 1e6:.0f} MB, on {root}")
    try:
        for name, codec in codecs:
            for chunk, shard in layouts:
                path = root / "a.zarr"
                shutil.rmtree(path, ignore_errors=True)
                arr = zarr.create_array(
                    str(path),
                    shape=data.shape,
                    chunks=(1, chunk, chunk),
                    shards=None if shard is None else (1, shard, shard),
                    dtype="float32",
                    compressors=[codec],
                    fill_value=0,
                )
                t0 = time.perf_counter()
                arr[:] = data
                t1 = time.perf_counter()
                back = zarr.open_array(str(path), mode="r")[:]
                t2 = time.perf_counter()
                assert np.array_equal(back, data)
                files = [f for f in path.rglob("*") if f.is_file() and f.name != "zarr.json"]
                stored = sum(f.stat().st_size for f in files)
                write, read = data.nbytes / (t1 - t0) / 1e6, data.nbytes / (t2 - t1) / 1e6
                print(
                    f"{name:32s} chunk {chunk:4d} shard {str(shard):>4s}: write {write:6.0f} MB/s, "
                    f"read {read:6.0f} MB/s, ratio {data.nbytes / stored:.2f}, {len(files)} objects"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
