"""Blockwise bead detection and fitting, and the per-plane bead-channel statistics, as Dask tasks.

The image is cut into blocks; each task reads its block plus a margin wide
enough to hold the largest bead and its fit cutout and runs
:func:`imaxt_pipeline.algorithms.registration.find_beads_numpy` on it, which
keeps the beads whose centre lies in the block's core, so every bead is
reported once. :func:`find_beads` cuts a Dask array; :func:`find_plane_beads`
has each task read its own window of a mosaic plane from the store, so that no
chunk travels between workers and the graph holds one task per block. A U-Net
comes from :func:`imaxt_pipeline.io.weights.cached_model` on the worker (never
shipped with the task). Either result is a lazy ``pandas.DataFrame`` (one
``dask.delayed``).

:func:`channel_scores` and :func:`threshold_levels` are one task per plane and
channel reading a pyramid level of the mosaic: the numbers the ``beads`` step
chooses the bead channel and each plane's threshold from, computed where the
data are instead of on the client.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...algorithms.registration import BEAD_COLUMNS, BeadSpec, ThresholdLevels, find_beads_numpy
from ...algorithms.registration import bead_channel_scores as _channel_scores
from ...algorithms.registration import threshold_levels as _threshold_levels
from ...io.ome import OmeImage
from ...io.weights import cached_model

__all__ = ["channel_scores", "find_beads", "find_plane_beads", "threshold_levels"]


def _find_block(
    region: np.ndarray,
    spec: BeadSpec,
    *,
    detector: str = "classical",
    model_source: str | None = None,
    device: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """One block's task: the U-Net (loaded once per worker process) if asked for, then the numpy kernel."""
    if detector == "unet":
        model, config = cached_model("bead_unet", model_source, device=device)
        options = {**options, "model": model, "model_config": config}
    return find_beads_numpy(region, spec, detector=detector, **options)


def _read_find_blocks(
    mosaic: OmeImage,
    index: tuple[int, int],
    blocks: list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]],
    spec: BeadSpec,
    **options: Any,
) -> pd.DataFrame:
    """One task: a row of blocks ``(core, window)`` of plane ``index = (channel, plane)``, read as one window.

    Each block is searched on its own window (a view of what was read), exactly as a task of its
    own would: only the reading is shared, so the chunks of the margins between the blocks are
    decompressed once instead of once per block.
    """
    y0, y1 = min(w[0] for _c, w in blocks), max(w[1] for _c, w in blocks)
    x0, x1 = min(w[2] for _c, w in blocks), max(w[3] for _c, w in blocks)
    region = np.asarray(mosaic.array(0, mode="r")[index[0], index[1], y0:y1, x0:x1])
    parts = [
        _find_block(region[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0], spec, origin=(wy0, wx0), core=core, **options)
        for core, (wy0, wy1, wx0, wx1) in blocks
    ]
    return _concat(parts)


def _windows(
    shape: tuple[int, int], block: int, depth: int
) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Each block's core ``(y0, y1, x0, x1)`` and the window read around it, ``depth`` px wider (clipped)."""
    h, w = shape
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            yield (y0, y1, x0, x1), (max(y0 - depth, 0), min(y1 + depth, h), max(x0 - depth, 0), min(x1 + depth, w))


def _check(shape: tuple[int, ...], spec: BeadSpec, block: int, depth: int | None) -> int:
    if len(shape) != 2:
        raise ValueError(f"image must be 2-D, got shape {shape}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    return int(np.ceil(2 * spec.max_radius_px + 16)) if depth is None else depth


def find_beads(image: Any, spec: BeadSpec, *, block: int = 2048, depth: int | None = None, **options: Any) -> Any:
    """Lazy blockwise :func:`~imaxt_pipeline.algorithms.registration.find_beads_numpy` over a 2-D Dask array.

    Parameters
    ----------
    image : dask.array.Array (H, W)
        Bead-channel plane (any chunking; blocks are cut independently).
    spec : BeadSpec
        Bead diameter (µm) and pixel size of ``image``.
    block : int, optional
        Core block edge in px.
    depth : int, optional
        Margin read around each block (default ``2 * spec.max_radius_px + 16``,
        so a bead centred in the core and its fit cutout are fully inside).
    **options
        Passed to :func:`~imaxt_pipeline.algorithms.registration.find_beads_numpy` (``detector``,
        ``threshold``...), except ``model_source`` (U-Net checkpoint path/URL, default the shipped
        weights) and ``device`` (torch device, default CUDA when available) that choose the U-Net.

    Returns
    -------
    dask.delayed.Delayed
        A ``pandas.DataFrame`` of all beads, ordered by block.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``block`` is not positive.
    """
    import dask

    depth = _check(tuple(image.shape), spec, block, depth)
    kernel = dask.delayed(_find_block, pure=True)
    parts = [
        kernel(image[ry0:ry1, rx0:rx1], spec, origin=(ry0, rx0), core=core, **options)
        for core, (ry0, ry1, rx0, rx1) in _windows(image.shape, block, depth)
    ]
    return dask.delayed(_concat)(parts)


def find_plane_beads(
    mosaic: OmeImage,
    channel: int,
    plane: int,
    spec: BeadSpec,
    *,
    block: int = 2048,
    depth: int | None = None,
    per_task: int = 4,
    **options: Any,
) -> Any:
    """:func:`find_beads` on ``mosaic[channel, plane]`` (level 0), each task reading its own window of the store.

    A task takes up to ``per_task`` neighbouring blocks of a row and reads their windows as one
    (the margins' chunks once, not once per block; memory stays bounded by ``per_task`` blocks
    whatever the plane's size); no data travel between workers and the graph holds no chunk tasks.

    Parameters
    ----------
    mosaic : OmeImage
        Multichannel image (axes c, z, y, x).
    channel, plane : int
        The bead channel and the plane (z index) searched.
    spec, block, depth, **options
        As :func:`find_beads`.
    per_task : int, optional
        Blocks of a row per task.

    Returns
    -------
    dask.delayed.Delayed
        A ``pandas.DataFrame`` of the plane's beads, ordered by block.

    Raises
    ------
    ValueError
        If ``block`` is not positive.
    """
    import dask

    shape = tuple(int(v) for v in mosaic.shape[-2:])
    depth = _check(shape, spec, block, depth)
    kernel = dask.delayed(_read_find_blocks, pure=True)
    rows: dict[int, list[Any]] = {}
    for core, window in _windows((shape[0], shape[1]), block, depth):
        rows.setdefault(core[0], []).append((core, window))
    groups = [row[i : i + max(per_task, 1)] for row in rows.values() for i in range(0, len(row), max(per_task, 1))]
    return dask.delayed(_concat)([kernel(mosaic, (channel, plane), group, spec, **options) for group in groups])


def _read_scores(mosaic: OmeImage, plane: int, channel: int, level: int, **options: Any) -> float:
    data = np.asarray(mosaic.array(level, mode="r")[channel, plane])
    scale = mosaic.shape[-1] / max(data.shape[-1], 1)
    return float(_channel_scores(data[None], scale=scale, **options)[0])


def channel_scores(
    mosaic: OmeImage, planes: Sequence[int], *, level: int, sigma: float = 1.0, rel: float = 0.5
) -> list[Any]:
    """Lazy :func:`~imaxt_pipeline.algorithms.registration.bead_channel_scores` of each plane at pyramid ``level``.

    One task per plane and channel (each reads one channel of one plane at ``level``).

    Returns
    -------
    list of dask.delayed.Delayed
        Per plane, a list of the channels' scores (full-resolution px).
    """
    import dask

    kernel = dask.delayed(_read_scores, pure=True)
    n = int(mosaic.shape[0])
    return [dask.delayed(list)([kernel(mosaic, p, c, level, sigma=sigma, rel=rel) for c in range(n)]) for p in planes]


def _read_levels(mosaic: OmeImage, plane: int, channel: int, level: int, **options: Any) -> ThresholdLevels:
    data = np.asarray(mosaic.array(level, mode="r")[channel, plane])
    return _threshold_levels(data, **options)


def threshold_levels(
    mosaic: OmeImage, planes: Sequence[int], channel: int, *, level: int, sigma: float = 1.0, nsigma: float = 5.0
) -> list[Any]:
    """Lazy :func:`~imaxt_pipeline.algorithms.registration.threshold_levels` of ``channel`` of each plane at ``level``.

    Returns
    -------
    list of dask.delayed.Delayed
        One ``ThresholdLevels`` per plane.
    """
    import dask

    kernel = dask.delayed(_read_levels, pure=True)
    return [kernel(mosaic, p, channel, level, sigma=sigma, nsigma=nsigma) for p in planes]


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "fit_ok" else float) for c in BEAD_COLUMNS})
    return pd.concat(parts, ignore_index=True)
