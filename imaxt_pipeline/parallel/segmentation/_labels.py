"""Segment a plane straight into its label images, block by block: no task holds a plane.

The blocks, margins, IoU matches and merge table are those of
:func:`~imaxt_pipeline.parallel.segmentation.segment_blockwise`, so the labels are the same; only
where the block labels wait for the merge table changes. :func:`segment_plane_labels`:

1. each segmentation task segments its extended window, writes its core's labels as the segmenter
   numbered them (block-local) into level 0 of the nuclei and cells images, and returns only what the
   merge needs: its label count, the labels in its core, and its nucleus labels over each neighbour's
   window (the overlap strips, copied, so the block itself is freed);
2. the strips of each pair of neighbours are matched and the matches joined into the plane's merge
   table (:func:`~imaxt_pipeline.algorithms.segmentation.merge_tables`), as before;
3. one task per write block (chunk-aligned, :func:`~imaxt_pipeline.io.ome.block_edge`) reads the
   local labels back, maps each core's pixels through that core's table to the sample-wide ids
   (:func:`global_labels`) and writes the block with its first pyramid levels
   (:meth:`~imaxt_pipeline.io.ome.OmeImage.write_block`); the caller reduces the coarser levels
   (:func:`~imaxt_pipeline.parallel.pyramid.reduce_levels`).

Step 1 writes whole chunks only if the core blocks start on chunk boundaries:
:func:`label_chunk` picks label chunks that divide the block, :func:`aligned_block` the block an
existing label image's chunks allow. Peak memory per task is one extended window (segmentation) or
one write block (relabelling), whatever the plane's size.
"""

from __future__ import annotations

import uuid
from typing import Any

import dask
import numpy as np

from ...algorithms.segmentation import match_labels
from ...io.ome import BLOCK_LEVELS, OmeImage, block_edge
from ..fusion import block_regions
from ._blockwise import (
    BlockGrid,
    _crop,
    _intersection,
    _segment_window,
    _summary,
    _tables,
    _token,
    block_grid,
    block_overlap,
)
from ._ids import global_labels

__all__ = ["aligned_block", "label_chunk", "segment_plane_labels", "written_levels"]

#: Label chunk edge aimed at (px): the image chunks' default.
TARGET_CHUNK = 512
_MIN_CHUNK = 128


def label_chunk(block: int, target: int = TARGET_CHUNK) -> int:
    """The chunk edge of new label images for core blocks of ``block`` px: divides ``block``, at most ``target``
    where a divisor of at least 128 px exists (else the block itself, one chunk per core).

    >>> label_chunk(1024), label_chunk(128), label_chunk(1000), label_chunk(769)
    (512, 128, 500, 769)
    """
    block = int(block)
    if block <= target:
        return block
    k = -(-block // target)
    while block % k:
        k += 1
    return block // k if block // k >= _MIN_CHUNK else block


def aligned_block(block: int, chunks_yx: tuple[int, int], shape_yx: tuple[int, int]) -> int:
    """``block`` rounded up to a multiple of the label chunks along each axis that has more than one core.

    >>> aligned_block(1024, (512, 512), (5000, 5000)), aligned_block(1000, (512, 512), (5000, 5000))
    (1024, 1024)
    >>> aligned_block(300, (512, 512), (200, 5000)), aligned_block(100, (512, 512), (200, 300))
    (512, 512)
    """
    out = int(block)
    for chunk, size in zip(chunks_yx, shape_yx, strict=True):
        if out < size and out % chunk:
            out = -(-out // chunk) * chunk
    return out


def segment_plane_labels(
    image: Any,
    segmenter: Any,
    nuclei: OmeImage,
    cells: OmeImage,
    plane: int,
    *,
    block: int,
    overlap: int | None = None,
    min_iou: float = 0.5,
    gpu_resource: bool = False,
) -> tuple[list[Any], list[Any]]:
    """Lazy tasks segmenting plane ``plane`` of ``image`` (``(C, H, W)`` dask array) into ``nuclei``/``cells``.

    Returns ``(segmentation, writes)``: the segmentation tasks (each computes to its block's label
    count and core labels) and the write-block tasks (each computes to the largest nucleus label it
    wrote, local to the plane). Computing the writes computes everything; levels
    ``0 .. min(levels, BLOCK_LEVELS) - 1`` are written. Compute with ``optimize_graph=False`` (the
    segmentation tasks carry ``resources={"GPU": 1}`` when ``gpu_resource``).

    Raises
    ------
    ValueError
        As :func:`segment_blockwise`, or if ``block`` does not start cores on label chunk boundaries.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    overlap = block_overlap(segmenter, overlap)
    grid = block_grid(image.shape[1:], block=block, overlap=overlap)
    chunks = tuple(int(c) for c in nuclei.array(0, mode="r").chunks[-2:])
    if aligned_block(block, (chunks[0], chunks[1]), grid.shape) != block:
        raise ValueError(f"block {block} px does not start on the label chunks {chunks}")
    neighbours = grid.neighbours()
    strip_regions: list[dict[int, tuple[int, int, int, int]]] = [{} for _ in grid.cores]
    for k, l_ in neighbours:
        region = _intersection(grid.windows[k], grid.windows[l_])
        strip_regions[k][l_] = strip_regions[l_][k] = region
    annotations = {"resources": {"GPU": 1}} if gpu_resource else {}
    summaries, strips = [], []
    for k, (y0, y1, x0, x1) in enumerate(grid.windows):
        with dask.annotate(**annotations):
            # a fresh key per call: the task writes, so a result still held from an earlier run must not stand in
            key = f"segment-block-{_token(image, segmenter, grid, k)}-{plane}-{uuid.uuid4().hex[:8]}"
            seg = dask.delayed(_segment_core, pure=True, nout=2)(
                image[:, y0:y1, x0:x1],
                segmenter,
                (nuclei, cells),
                plane,
                grid.windows[k],
                grid.cores[k],
                strip_regions[k],
                dask_key_name=key,
            )
        summaries.append(seg[0])
        strips.append(seg[1])
    matches = [dask.delayed(_match_strips)(strips[k], strips[l_], k, l_, min_iou) for k, l_ in neighbours]
    tables = dask.delayed(_tables)(summaries, matches)
    edge = block_edge(max(chunks), nuclei.levels)
    writes = [
        dask.delayed(_relabel_block, pure=False)(tables, (nuclei, cells), plane, region, grid, nuclei.levels)
        for region in block_regions(grid.shape, edge)
    ]
    return summaries, writes


def written_levels(image: OmeImage) -> int:
    """Levels the write-block tasks of :func:`segment_plane_labels` write (the rest: ``reduce_levels``)."""
    return min(image.levels, BLOCK_LEVELS)


def _segment_core(
    window: np.ndarray,
    segmenter: Any,
    targets: tuple[OmeImage, OmeImage],
    plane: int,
    grid_window: tuple[int, int, int, int],
    core: tuple[int, int, int, int],
    strip_regions: dict[int, tuple[int, int, int, int]],
) -> tuple[tuple[int, np.ndarray], dict[int, np.ndarray]]:
    seg = _segment_window(window, segmenter)
    core_seg = _crop(seg, grid_window, core)
    for target, lab in zip(targets, core_seg, strict=True):
        target.write_region(plane, 0, (core[0], core[2]), lab)
    strips = {l_: np.array(_crop(seg[0], grid_window, region)) for l_, region in strip_regions.items()}
    return _summary(seg, grid_window, core), strips


def _match_strips(
    strips_k: dict[int, np.ndarray], strips_l: dict[int, np.ndarray], k: int, l_: int, min_iou: float
) -> tuple[int, int, Any]:
    return k, l_, match_labels(strips_k[l_], strips_l[k], min_iou=min_iou)


def _relabel_block(
    tables: list[np.ndarray],
    targets: tuple[OmeImage, OmeImage],
    plane: int,
    region: tuple[int, int, int, int],
    grid: BlockGrid,
    levels: int,
) -> int:
    """Map the block-local labels of ``region`` to sample-wide ids and write them with their first levels."""
    y0, y1, x0, x1 = region
    by = grid.cores[0][1] - grid.cores[0][0]
    bx = grid.cores[0][3] - grid.cores[0][2]
    largest = 0
    for i, target in enumerate(targets):
        local = np.asarray(target.array(0, mode="r")[plane, y0:y1, x0:x1]).astype(np.int64)
        out = np.zeros(local.shape, np.int32)
        for ky in range(y0 // by, -(-y1 // by)):
            for kx in range(x0 // bx, -(-x1 // bx)):
                sy = slice(max(y0, ky * by) - y0, min(y1, (ky + 1) * by) - y0)
                sx = slice(max(x0, kx * bx) - x0, min(x1, (kx + 1) * bx) - x0)
                out[sy, sx] = tables[ky * grid.grid[1] + kx][local[sy, sx]]
        if i == 0:
            largest = int(out.max(initial=0))
        target.write_block(plane, (y0, x0), global_labels(out, plane), n_levels=min(levels, BLOCK_LEVELS))
    return largest
