"""Dask layer of pyramids: the coarse levels of block-written images, reduced block by block.

A writer (fusion, cube) writes ``min(levels, BLOCK_LEVELS)`` levels inside each of its blocks
(:meth:`~imaxt_pipeline.io.ome.OmeImage.write_block`). The rest of a full pyramid (down to
:data:`~imaxt_pipeline.io.ome.PYRAMID_MIN_PX`) is made here in rounds: each round reads blocks of
``chunk * 2**n`` px of the last level written and writes the next ``n = BLOCK_LEVELS - 1`` levels
(:meth:`~imaxt_pipeline.io.ome.OmeImage.reduce_block`), so memory is one block whatever the
section size and no two tasks write the same chunk. Rounds depend on each other and are run one
after the other by :func:`reduce_levels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dask import delayed

from ..io.ome import BLOCK_LEVELS, OmeImage
from .fusion import block_regions
from .progress import compute_with_progress

__all__ = ["reduce_levels", "reduce_round"]


def reduce_round(image: OmeImage, planes: Sequence[int], source_level: int, chunk: int) -> list[Any]:
    """Lazy tasks writing levels ``source_level + 1 ..`` (up to ``BLOCK_LEVELS - 1`` of them) of ``planes``."""
    n = min(BLOCK_LEVELS - 1, image.levels - 1 - source_level)
    if n < 1:
        return []
    shape = image.level_shape(source_level)[-2:]
    edge = int(chunk) * 2**n
    return [
        delayed(image.reduce_block, pure=False)(int(p), source_level, region, n)
        for p in planes
        for region in block_regions((int(shape[0]), int(shape[1])), edge)
    ]


def reduce_levels(client: Any, image: OmeImage, planes: Sequence[int], *, written: int, chunk: int, label: str) -> int:
    """Write every level of ``planes`` below the first ``written`` ones; returns the tasks run."""
    tasks = 0
    level = written - 1
    while level + 1 < image.levels:
        lazy = reduce_round(image, planes, level, chunk)
        compute_with_progress(client, lazy, f"{label} pyramid level {level + 1}+", unit="blocks")
        tasks += len(lazy)
        level += BLOCK_LEVELS - 1
    return tasks
