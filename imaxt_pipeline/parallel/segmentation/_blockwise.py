"""Blockwise segmentation of planes larger than memory, on Dask.

The plane is cut into core blocks; each block is segmented with a margin of
``overlap`` px on every side (``overlap >= 2 x`` the expected diameter, so an
object cut by a core boundary is seen whole by both blocks). Neighbouring
blocks' nucleus labels are matched by IoU in the region both blocks saw;
the connected components of those matches (:func:`~imaxt_pipeline.algorithms.segmentation.merge_tables`)
give every object one global label, and each block's core is written with
its labels mapped through that table. Cells share their nucleus's label.
A cellpose segmenter travels without its model; each worker process loads
it once (:func:`imaxt_pipeline.io.weights.cached_model`) and binds it.

Everything stays lazy until the caller computes the returned arrays. With
``gpu_resource=True`` the segmentation tasks carry the Dask annotation
``resources={"GPU": 1}``, so a cluster schedules them only on workers that
advertise a ``GPU`` resource (the GPU worker group on Kubernetes). Compute
the result with ``client.compute(..., optimize_graph=False)``: Dask's graph
optimisation fuses tasks and drops the annotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np

from ...algorithms.segmentation import CellGrowth, CellposeSegmenter, LabelMatch, match_labels, merge_tables
from ...io.weights import cached_model

if TYPE_CHECKING:
    from ...algorithms.segmentation import Segmenter

__all__ = ["BlockGrid", "block_grid", "block_overlap", "segment_blockwise"]


@dataclass(frozen=True)
class BlockGrid:
    """Core blocks of a plane and their extended (core + margin) windows.

    Attributes
    ----------
    shape : tuple of int
        Plane shape (H, W).
    cores : list of tuple
        ``(y0, y1, x0, x1)`` of each core block, row-major.
    windows : list of tuple
        ``(y0, y1, x0, x1)`` of each extended window, clipped to the plane.
    grid : tuple of int
        Number of block rows and columns.
    """

    shape: tuple[int, int]
    cores: list[tuple[int, int, int, int]]
    windows: list[tuple[int, int, int, int]]
    grid: tuple[int, int]

    def neighbours(self) -> list[tuple[int, int]]:
        """Pairs ``(k, l)``, ``k < l``, of blocks whose windows overlap."""
        out = []
        for k, wk in enumerate(self.windows):
            for l_ in range(k + 1, len(self.windows)):
                wl = self.windows[l_]
                if max(wk[0], wl[0]) < min(wk[1], wl[1]) and max(wk[2], wl[2]) < min(wk[3], wl[3]):
                    out.append((k, l_))
        return out


def block_grid(shape: tuple[int, int], *, block: int | tuple[int, int], overlap: int) -> BlockGrid:
    """Cut a plane of ``shape`` into core blocks of ``block`` px plus ``overlap`` margins.

    Raises
    ------
    ValueError
        If ``block`` is not positive or ``overlap`` is negative.
    """
    by, bx = (block, block) if isinstance(block, int) else block
    if by < 1 or bx < 1:
        raise ValueError(f"block must be positive, got {block}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    h, w = int(shape[0]), int(shape[1])
    ys = list(range(0, h, by))
    xs = list(range(0, w, bx))
    cores, windows = [], []
    for y0 in ys:
        for x0 in xs:
            y1, x1 = min(y0 + by, h), min(x0 + bx, w)
            cores.append((y0, y1, x0, x1))
            windows.append((max(0, y0 - overlap), min(h, y1 + overlap), max(0, x0 - overlap), min(w, x1 + overlap)))
    return BlockGrid(shape=(h, w), cores=cores, windows=windows, grid=(len(ys), len(xs)))


def segment_blockwise(
    image: Any,
    segmenter: Segmenter,
    *,
    block: int | tuple[int, int] = 1024,
    overlap: int | None = None,
    min_iou: float = 0.5,
    gpu_resource: bool = False,
) -> da.Array:
    """Segment a ``(C, H, W)`` plane block by block into global nucleus and cell labels.

    Parameters
    ----------
    image : dask.array.Array or ndarray, shape (C, H, W)
        The plane.
    segmenter : Segmenter
        Backend run on each extended block (must pickle).
    block : int or tuple of int
        Core block edge in px.
    overlap : int, optional
        Margin in px added on each side; ``2 * ceil(segmenter.expected_diameter_px)``
        plus the cell growth when ``None``.
    min_iou : float
        IoU above which two blocks' labels are the same nucleus.
    gpu_resource : bool
        Annotate segmentation tasks with ``resources={"GPU": 1}``.

    Returns
    -------
    labels : dask.array.Array of int32, shape (2, H, W)
        ``labels[0]`` nuclei, ``labels[1]`` cells, labels 1..N unique over
        the plane; a cell has its nucleus's label. Chunks are the core blocks.

    Raises
    ------
    ValueError
        If the image is not 3-D or ``overlap`` is smaller than twice the
        expected diameter.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    overlap = block_overlap(segmenter, overlap)
    if not isinstance(image, da.Array):
        image = da.from_array(np.asarray(image), chunks=(image.shape[0], *(min(s, 1024) for s in image.shape[1:])))
    grid = block_grid(image.shape[1:], block=block, overlap=overlap)

    segs = []
    annotations = {"resources": {"GPU": 1}} if gpu_resource else {}
    for k, (y0, y1, x0, x1) in enumerate(grid.windows):
        window = image[:, y0:y1, x0:x1]
        with dask.annotate(**annotations):
            key = f"segment-block-{_token(image, segmenter, grid, k)}"
            segs.append(dask.delayed(_segment_window, pure=True)(window, segmenter, dask_key_name=key))
    matches = [
        dask.delayed(_match_pair)(segs[k], segs[l_], grid.windows[k], grid.windows[l_], k, l_, min_iou)
        for k, l_ in grid.neighbours()
    ]
    summaries = [dask.delayed(_summary)(segs[k], grid.windows[k], grid.cores[k]) for k in range(len(segs))]
    tables = dask.delayed(_tables)(summaries, matches)
    blocks = []
    for k, core in enumerate(grid.cores):
        out = dask.delayed(_apply)(segs[k], tables, k, grid.windows[k], core)
        blocks.append(da.from_delayed(out, shape=(2, core[1] - core[0], core[3] - core[2]), dtype=np.int32))
    rows = [blocks[r * grid.grid[1] : (r + 1) * grid.grid[1]] for r in range(grid.grid[0])]
    return da.block(rows)


def block_overlap(segmenter: Any, overlap: int | None) -> int:
    """The block margin: ``overlap``, or ``2 * ceil(expected diameter)`` plus the cell growth when ``None``.

    Raises
    ------
    ValueError
        If ``overlap`` is below twice the expected diameter.
    """
    min_overlap = int(np.ceil(2 * float(segmenter.expected_diameter_px)))
    if overlap is None:
        growth = getattr(segmenter, "growth", None)
        overlap = min_overlap + (int(np.ceil(growth.max_distance_px)) if isinstance(growth, CellGrowth) else 0)
    if overlap < min_overlap:
        raise ValueError(f"overlap {overlap} px is below 2 x expected diameter ({min_overlap} px)")
    return int(overlap)


def _token(image: da.Array, segmenter: Any, grid: BlockGrid, k: int) -> str:
    return f"{dask.base.tokenize(image.name, segmenter, grid.windows[k])}-{k}"


def _segment_window(window: np.ndarray, segmenter: Segmenter) -> np.ndarray:
    if isinstance(segmenter, CellposeSegmenter) and segmenter.net is None:
        segmenter = segmenter.with_model(cached_model("cellpose", segmenter.model, device=segmenter.device()))
    seg = segmenter.segment(np.asarray(window, np.float32))
    return np.stack([seg.nuclei, seg.cells]).astype(np.int32, copy=False)


def _intersection(wa: tuple[int, ...], wb: tuple[int, ...]) -> tuple[int, int, int, int]:
    return max(wa[0], wb[0]), min(wa[1], wb[1]), max(wa[2], wb[2]), min(wa[3], wb[3])


def _crop(seg: np.ndarray, window: tuple[int, ...], region: tuple[int, ...]) -> np.ndarray:
    y0, y1, x0, x1 = region
    return seg[..., y0 - window[0] : y1 - window[0], x0 - window[2] : x1 - window[2]]


def _match_pair(
    seg_k: np.ndarray,
    seg_l: np.ndarray,
    win_k: tuple[int, ...],
    win_l: tuple[int, ...],
    k: int,
    l_: int,
    min_iou: float,
) -> tuple[int, int, LabelMatch]:
    region = _intersection(win_k, win_l)
    return k, l_, match_labels(_crop(seg_k[0], win_k, region), _crop(seg_l[0], win_l, region), min_iou=min_iou)


def _summary(seg: np.ndarray, window: tuple[int, ...], core: tuple[int, ...]) -> tuple[int, np.ndarray]:
    core_seg = _crop(seg, window, core)
    present = np.union1d(np.unique(core_seg[0]), np.unique(core_seg[1]))
    return int(max(seg[0].max(initial=0), seg[1].max(initial=0))), present


def _tables(summaries: list[tuple[int, np.ndarray]], matches: list[tuple[int, int, LabelMatch]]) -> list[np.ndarray]:
    counts = [s[0] for s in summaries]
    tables = merge_tables(counts, matches, present=[s[1] for s in summaries])
    if sum(int(t.max(initial=0) > np.iinfo(np.int32).max) for t in tables):
        raise OverflowError("more than 2**31 labels in one plane")
    return tables


def _apply(
    seg: np.ndarray, tables: list[np.ndarray], k: int, window: tuple[int, ...], core: tuple[int, ...]
) -> np.ndarray:
    return tables[k][_crop(seg, window, core)].astype(np.int32)
