"""The calibration record of a sample estimated from its own tiles: dark, flat, stray light and trim per channel.

:func:`estimate_calibration` runs :func:`._flatfield.estimate_tile_model` on
every channel and gathers the results in the :class:`..optics.Calibration`
record that every step applies; the distortion is fitted later, from the
seams (:mod:`..stitching`) or a calibration acquisition
(:mod:`._distortion_fit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..optics import Calibration, Trim
from ._flatfield import TileModel, estimate_tile_model

__all__ = ["estimate_calibration"]


def estimate_calibration(
    tiles: npt.ArrayLike,
    *,
    dark: float | Sequence[float] | None = None,
    flat: bool = True,
    trim: bool = True,
    trim_threshold: float = 1.0,
    max_trim_px: int | None = None,
    degree: int = 2,
    shared_flat: bool = True,
) -> Calibration:
    """Dark, flat, stray light and trim of every channel from the data.

    Parameters
    ----------
    tiles : ndarray (C, T, H, W)
        Raw tiles (any number of slices stacked along T).
    dark : float or sequence of float, optional
        Known dark offsets; estimated per channel when None.
    flat, trim : bool
        Estimate the flat field and stray light / the border trim.
    trim_threshold, max_trim_px, degree
        See :func:`._flatfield.estimate_tile_model`; cap the trim at a
        fraction of the tile overlap (a quarter, say) so matching keeps it.
    shared_flat : bool
        Use one flat field for all channels (the vignetting of the shared
        optics), taken from the channel that pins it best (most agarose
        and tissue blocks, least scatter: ``TileModel.support``); the other
        channels' dark offsets are refitted with it.

    Returns
    -------
    Calibration
        With identity distortion (fitted by :func:`..stitching.solve_positions`
        or :func:`._distortion_fit.fit_calibration_distortion`).
        ``source["dark"]`` tells whether the offset was separated from the
        flat (``"estimated"``) or is only a low-percentile upper bound.
    """
    arr = np.asarray(tiles)
    if arr.ndim != 4:
        raise ValueError(f"tiles must be (C, T, H, W), got shape {arr.shape}")
    c = arr.shape[0]
    given = None if dark is None else np.broadcast_to(np.asarray(dark, float), (c,))

    def model(i: int, known_flat: npt.NDArray[np.float32] | None = None) -> TileModel:
        return estimate_tile_model(
            arr[i],
            dark=None if given is None else float(given[i]),
            flat=known_flat,
            degree=degree,
            trim_threshold=trim_threshold,
            max_trim_px=max_trim_px,
        )

    models = [model(i) for i in range(c)]
    if shared_flat and c > 1:
        # Vignetting is a property of the shared optics: take the flat of the channel that pins it
        # best (a speckled nuclear stain has few clean tissue blocks) and refit the others' dark.
        score = [m.support for m in models]
        ref = int(np.argmax(score))
        models = [m if i == ref else model(i, models[ref].flat) for i, m in enumerate(models)]
    darks = np.array([m.dark for m in models])
    if given is None:
        kinds = {m.dark_source for m in models}
        dark_src = "estimated" if kinds <= {"two-level fit", "flat + dim-class fit"} else "low-percentile (upper bound)"
    else:
        dark_src = "given"
    tr = (
        Trim(**{k: max(getattr(m.trim, k) for m in models) for k in ("top", "bottom", "left", "right")})
        if trim
        else Trim()
    )
    flats = np.stack([m.flat for m in models]) if flat else None
    strays = np.stack([m.stray for m in models]) if flat else None
    if strays is not None and not np.any(strays):
        strays = None
    return Calibration(
        dark=darks,
        flat=flats,
        trim=tr,
        stray=strays,
        source={
            "dark": dark_src,
            "flat": "estimated" if flat else "none",
            "trim": "estimated" if trim else "none",
            "distortion": "none",
        },
    )
