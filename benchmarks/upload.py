"""Upload throughput (MB/s of decoded tile pixels) per raw format, against the disk's own bandwidth.

One synthetic sample is written in the generic layout (TIFF tiles), as a TissueCyte scan with
``.tif`` and with ``.tif.gz`` tiles, and as one Axioscan ``.czi`` file; each is uploaded to a
fresh local raw store (read, decode, SHA-256, write Blosc/zstd chunks with CRC-32C). The disk is
measured with a plain copy of a file of the same size (``shutil.copyfile`` plus ``fsync``), on
the same file system.

Usage::

    python benchmarks/upload.py --quick     # 1 section, 3 x 3 tiles of 512 px, 2 channels (~9 MB)
    python benchmarks/upload.py             # 2 sections, 6 x 6 tiles of 1024 px (~150 MB)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _disk_mb_s(folder: Path, nbytes: int) -> float:
    src, dst = folder / "dd.src", folder / "dd.dst"
    with open(src, "wb") as fh:
        fh.write(os.urandom(nbytes))
        fh.flush()
        os.fsync(fh.fileno())
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    src.unlink()
    dst.unlink()
    return nbytes / 1e6 / dt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small sample")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=8, help="upload threads")
    args = parser.parse_args(argv)

    from imaxt_pipeline.io.upload import upload
    from imaxt_pipeline.synth import SynthParams, synthesize, write_axioscan, write_tissuecyte

    if args.quick:
        params = SynthParams(slices=1, rows=3, cols=3, tile_shape=(512, 512), seed=1)
    else:
        params = SynthParams(slices=2, rows=6, cols=6, tile_shape=(1024, 1024), seed=1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        synthesize(base / "generic", params)
        write_tissuecyte(base / "generic", base / "tc")
        write_tissuecyte(base / "generic", base / "tcgz", compress=True)
        write_axioscan(base / "generic", base / "slide.czi")
        sources = {
            "generic TIFF": base / "generic",
            "TissueCyte TIFF": base / "tc",
            "TissueCyte TIFF.gz": base / "tcgz",
            "Axioscan CZI": base / "slide.czi",
        }
        rows = []
        for name, src in sources.items():
            dest = base / f"{src.name}.zarr"
            t0 = time.perf_counter()
            report = upload(str(src), str(dest), progress=False, workers=args.workers)
            dt = time.perf_counter() - t0
            rows.append((name, report.nbytes / 1e6, dt))
        disk = _disk_mb_s(base, int(rows[0][1] * 1e6))
    h, w = params.tile_shape
    print(
        f"{params.slices} section(s), {params.rows} x {params.cols} tiles of {h} x {w} px, "
        f"{len(params.channels)} channels, {args.workers} threads; disk copy {disk:.0f} MB/s"
    )
    print(f"{'format':<20} {'MB':>8} {'seconds':>8} {'MB/s':>8} {'of disk':>8}")
    for name, mb, dt in rows:
        print(f"{name:<20} {mb:>8.1f} {dt:>8.2f} {mb / dt:>8.1f} {mb / dt / disk:>8.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
