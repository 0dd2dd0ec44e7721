"""CPU seconds per plane of the catalogue (cells + nuclei tables), measured as the step measures a plane.

    python benchmarks/catalogue.py [--quick] [--store demo-output/bucket/processed/synth.zarr] [--block 1024]
                                   [--profile]

With ``--store`` (an output of ``imaxt run`` with a cube and its labels, e.g. the demo's), every plane of the
cube is measured; without it, synthetic planes of the demo's size (1518 x 1550 px, ~3 000 cells) from
:func:`imaxt_pipeline.testing._segdata.two_channel_sample`, three seeds (one with ``--quick``, 768 px).
A plane is cut into ``--block`` px blocks with the 2-px label halo (``catalogue_parts`` per block), then merged
(``catalogue_from_parts``), in this process: printed are the CPU seconds (``time.process_time``) of each plane,
its objects, and the share of the maximum Feret diameter (``feret_diameters``, by cProfile) with ``--profile``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Iterator

import numpy as np

CHANNELS = ["nuclear", "cyto"]


def planes_from_store(store: str) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, image (C, H, W), cells, nuclei) of every plane of ``store``'s cube, labels plane-local."""
    import zarr

    g = zarr.open_group(store, mode="r")
    image, cells, nuclei = g["cube/0"], g["cube/labels/cells/0"], g["cube/labels/nuclei/0"]
    for p in range(cells.shape[0]):
        lab = [np.asarray(a[p]).astype(np.int64) & 0xFFFFFFFF for a in (cells, nuclei)]  # plane << 32 | label
        yield f"plane {p}", np.asarray(image[:, p]), lab[0], lab[1]


def synthetic_planes(quick: bool) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    from imaxt_pipeline.testing._segdata import two_channel_sample

    shape = (768, 768) if quick else (1518, 1550)
    for seed in (0,) if quick else (0, 1, 2):
        image, nuclei, cells = two_channel_sample(shape, seed=seed)
        yield f"synthetic {shape[0]}x{shape[1]} seed {seed}", image, cells.astype(np.int64), nuclei.astype(np.int64)


def measure_plane(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, block: int) -> int:
    """The plane's catalogue from ``block``-px blocks (as ``steps/catalogue.py`` cuts them); returns its cells."""
    from imaxt_pipeline.testing import blockwise_catalogue

    cell_t, _ = blockwise_catalogue(cells, nuclei, image, block, channel_names=CHANNELS[: len(image)])
    return len(cell_t)


def _feret_seconds(prof: cProfile.Profile) -> float:
    stats = pstats.Stats(prof, stream=io.StringIO())
    return sum(v[3] for k, v in stats.stats.items() if k[2] == "feret_diameters")  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one synthetic 768 px plane")
    ap.add_argument("--store", default=None, help="an output store with cube/ and cube/labels/")
    ap.add_argument("--block", type=int, default=1024, help="block edge, px (the step's default)")
    ap.add_argument("--profile", action="store_true", help="also the Feret diameter's share (cProfile)")
    args = ap.parse_args()
    planes = planes_from_store(args.store) if args.store else synthetic_planes(args.quick)
    cpu = []
    for name, image, cells, nuclei in planes:
        prof = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not wall, under load
        t0 = time.process_time()
        if prof:
            prof.enable()
        n = measure_plane(image, cells, nuclei, args.block)
        if prof:
            prof.disable()
        dt = time.process_time() - t0
        cpu.append(dt)
        share = f"; Feret {_feret_seconds(prof):.2f} CPU s of it (profiled)" if prof else ""
        print(f"{name}: {cells.shape[0]}x{cells.shape[1]} px, {n} cells: {dt:.2f} CPU s{share}", flush=True)
    print(f"CPU s per plane: median {np.median(cpu):.2f}, max {max(cpu):.2f} over {len(cpu)} planes")


if __name__ == "__main__":
    main()
