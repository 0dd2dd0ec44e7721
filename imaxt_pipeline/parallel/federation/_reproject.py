"""Coordinates, tables and images from one modality's frame into the other's (lazy for images)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ...algorithms.federation import apply_affine, invert_affine

__all__ = ["map_points", "map_table", "reproject_image"]


def _forward(affine: Any, inverse: bool) -> np.ndarray:
    a = np.asarray(affine, np.float64).reshape(2, 3)
    return invert_affine(a) if inverse else a


def map_points(xy: Any, affine: Any, *, inverse: bool = False) -> np.ndarray:
    """(N, 2) points (x, y) mapped by the slide -> cube ``affine`` (``inverse``: cube -> slide)."""
    return apply_affine(_forward(affine, inverse), np.asarray(xy, np.float64))


def map_table(
    table: pd.DataFrame,
    affine: Any,
    *,
    x: str = "centroid_x_px",
    y: str = "centroid_y_px",
    inverse: bool = False,
    suffix: str = "_stpt",
) -> pd.DataFrame:
    """A copy of ``table`` with mapped coordinates added as ``<x><suffix>``, ``<y><suffix>``."""
    out = table.copy()
    mapped = map_points(table[[x, y]].to_numpy(np.float64), affine, inverse=inverse)
    out[x + suffix], out[y + suffix] = mapped[:, 0], mapped[:, 1]
    return out


def reproject_image(
    image: Any,
    affine: Any,
    out_shape: tuple[int, int],
    *,
    inverse: bool = False,
    labels: bool = False,
    chunks: tuple[int, int] = (512, 512),
) -> Any:
    """Resample a 2-D (dask or numpy) image from its frame into the other one, lazily, chunk by chunk.

    Parameters
    ----------
    image : array (H, W)
        Source-frame pixels (slide frame, or cube section with ``inverse``).
    affine : (2, 3)
        The slide -> cube federation affine.
    out_shape : (int, int)
        Shape of the target frame.
    labels : bool
        Nearest neighbour (label ids are kept, never blended) instead of linear interpolation.
    """
    import dask.array as da
    from dask_image.ndinterp import affine_transform

    # affine_transform maps each output (row, col) to the input position matrix @ (row, col) + offset
    back = _forward(affine, not inverse)  # target (x, y) -> source (x, y)
    matrix = back[:, :2][::-1, ::-1]
    offset = back[:, 2][::-1]
    src = image if isinstance(image, da.Array) else da.from_array(np.asarray(image), chunks=chunks)
    return affine_transform(
        src,
        matrix,
        offset=offset,
        output_shape=tuple(int(v) for v in out_shape),
        output_chunks=chunks,
        order=0 if labels else 1,
        mode="constant",
        cval=0,
    )
