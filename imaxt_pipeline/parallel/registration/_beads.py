"""Blockwise bead detection and fitting over a Dask array.

The image is cut into blocks; each task reads its block plus a margin wide
enough to hold the largest bead and its fit cutout and runs
:func:`imaxt_pipeline.algorithms.registration.find_beads_numpy` on it, which
keeps the beads whose centre lies in the block's core, so every bead is
reported once. A U-Net comes from :func:`imaxt_pipeline.io.weights.cached_model`
on the worker (never shipped with the task). The result is a lazy
``pandas.DataFrame`` (one ``dask.delayed``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ...algorithms.registration import BEAD_COLUMNS, BeadSpec, find_beads_numpy
from ...io.weights import cached_model

__all__ = ["find_beads"]


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

    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    if depth is None:
        depth = int(np.ceil(2 * spec.max_radius_px + 16))
    h, w = image.shape
    parts = []
    kernel = dask.delayed(_find_block, pure=True)
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            ry0, rx0 = max(y0 - depth, 0), max(x0 - depth, 0)
            region = image[ry0 : min(y1 + depth, h), rx0 : min(x1 + depth, w)]
            parts.append(kernel(region, spec, origin=(ry0, rx0), core=(y0, y1, x0, x1), **options))
    return dask.delayed(_concat)(parts)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "fit_ok" else float) for c in BEAD_COLUMNS})
    return pd.concat(parts, ignore_index=True)
