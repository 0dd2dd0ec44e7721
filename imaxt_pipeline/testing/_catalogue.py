"""A plane's catalogue measured block by block, as the catalogue step cuts it (tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def blockwise_catalogue(
    cells: np.ndarray,
    nuclei: np.ndarray,
    image: np.ndarray,
    block: int,
    *,
    channel_names: Sequence[str],
    pixel_size_um: float = 1.0,
    plane: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cell and nucleus tables from ``block``-px blocks (labels with the halo, zero beyond the plane)."""
    from imaxt_pipeline.algorithms.measure import HALO, catalogue_from_parts, catalogue_parts

    h, w = cells.shape
    c_pad, n_pad = (np.pad(lab.astype(np.int64), HALO) for lab in (cells, nuclei))
    parts = []
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            window = (slice(y0, min(h, y0 + block) + 2 * HALO), slice(x0, min(w, x0 + block) + 2 * HALO))
            core = image[:, y0 : y0 + block, x0 : x0 + block]
            parts.append(catalogue_parts(c_pad[window], n_pad[window], core, offset_yx=(y0, x0)))
    return catalogue_from_parts(parts, channel_names=channel_names, pixel_size_um=pixel_size_um, plane=plane)
