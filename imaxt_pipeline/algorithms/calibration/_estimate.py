"""The calibration bundle applied to every tile: dark, flat, trim, distortion.

:class:`Calibration` gathers what :mod:`.flatfield` and the distortion fit
produce so that the stitch, mosaic, bead and segmentation steps all correct
tiles the same way. It converts to and from plain dicts/arrays so steps can
store it (small attrs plus one flat array) and reload it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..optics import DistortionModel
from ._flatfield import Trim, apply_flat, confidence_map, estimate_tile_model
from ..stitching import PairMatch
from ..stitching import solve_positions

__all__ = ["Calibration", "estimate_calibration", "fit_distortion"]


@dataclass(frozen=True)
class Calibration:
    """Per-channel dark offsets, flat fields, stray light, border trim and distortion model.

    Attributes
    ----------
    dark : ndarray (C,)
        Additive offset per channel.
    flat : ndarray (C, H, W) or None
        Flat field per channel (mean 1); None means no flat correction.
    trim : Trim
        Border excluded from matching and fusion.
    stray : ndarray (C, H, W) or None
        Additive stray light per channel (counts), subtracted with the dark.
    distortion : DistortionModel
        Optical distortion of every tile.
    source : dict
        Where each term came from (``"estimated"``, ``"file"``, ``"none"``).
    """

    dark: np.ndarray
    flat: np.ndarray | None = None
    trim: Trim = field(default_factory=Trim)
    distortion: DistortionModel = field(default_factory=DistortionModel)
    source: dict[str, str] = field(default_factory=dict)
    stray: np.ndarray | None = None

    @classmethod
    def identity(cls, n_channels: int) -> "Calibration":
        return cls(dark=np.zeros(n_channels), source={"dark": "none", "flat": "none", "trim": "none",
                                                     "distortion": "none"})

    def apply(self, tiles: np.ndarray) -> np.ndarray:
        """Dark-, stray- and flat-correct tiles ``(C, H, W)`` or ``(C, T, H, W)`` (float32)."""
        arr = np.asarray(tiles, np.float32)
        c = arr.shape[0]
        extra = (1,) * (arr.ndim - 3)
        dark = np.asarray(self.dark, np.float32).reshape(c, *extra, 1, 1)
        stray = None if self.stray is None else np.asarray(self.stray, np.float32).reshape(
            c, *extra, *self.stray.shape[-2:])
        if self.flat is None:
            return arr - dark if stray is None else arr - dark - stray
        flat = np.asarray(self.flat, np.float32).reshape(c, *extra, *self.flat.shape[-2:])
        return apply_flat(arr, flat, dark=dark, stray=stray)

    def confidence(self, shape: tuple[int, int], *, feather: float = 0.0) -> np.ndarray:
        """Tile weight map (0 on the trimmed border)."""
        flat = None if self.flat is None else np.min(self.flat, axis=0)
        return confidence_map(shape, trim=self.trim, feather=feather, flat=flat)

    def with_distortion(self, model: DistortionModel, source: str) -> "Calibration":
        return replace(self, distortion=model, source={**self.source, "distortion": source})

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able summary (the flat array is stored separately)."""
        return {"dark": [float(d) for d in self.dark], "trim": self.trim.as_dict(),
                "distortion": {k: float(v) for k, v in self.distortion.as_dict().items()},
                "has_flat": self.flat is not None, "has_stray": self.stray is not None, "source": dict(self.source)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], flat: np.ndarray | None = None,
                   stray: np.ndarray | None = None) -> "Calibration":
        return cls(dark=np.asarray(attrs["dark"], float), flat=flat, trim=Trim(**attrs.get("trim", {})),
                   distortion=DistortionModel(**attrs.get("distortion", {})), source=dict(attrs.get("source", {})),
                   stray=stray)


def estimate_calibration(tiles: np.ndarray, *, dark: float | Sequence[float] | None = None, flat: bool = True,
                         trim: bool = True, trim_threshold: float = 1.0, max_trim_px: int | None = None,
                         degree: int = 2, shared_flat: bool = True) -> Calibration:
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
        See :func:`.flatfield.estimate_tile_model`; cap the trim at a
        fraction of the tile overlap (a quarter, say) so matching keeps it.
    shared_flat : bool
        Use one flat field for all channels (the vignetting of the shared
        optics), taken from the channel that pins it best (most agarose
        and tissue blocks, least scatter: ``TileModel.support``); the other
        channels' dark offsets are refitted with it.

    Returns
    -------
    Calibration
        With identity distortion (fit it with :func:`fit_distortion`).
        ``source["dark"]`` tells whether the offset was separated from the
        flat (``"estimated"``) or is only a low-percentile upper bound.
    """
    arr = np.asarray(tiles)
    if arr.ndim != 4:
        raise ValueError(f"tiles must be (C, T, H, W), got shape {arr.shape}")
    c = arr.shape[0]
    given = None if dark is None else np.broadcast_to(np.asarray(dark, float), (c,))
    kw = dict(degree=degree, trim_threshold=trim_threshold, max_trim_px=max_trim_px)
    models = [estimate_tile_model(arr[i], dark=None if given is None else float(given[i]), **kw) for i in range(c)]
    if shared_flat and c > 1:
        # Vignetting is a property of the shared optics: take the flat of the channel that pins it
        # best (a speckled nuclear stain has few clean tissue blocks) and refit the others' dark.
        score = [m.support for m in models]
        ref = int(np.argmax(score))
        models = [m if i == ref else estimate_tile_model(arr[i], dark=None if given is None else float(given[i]),
                                                         flat=models[ref].flat, **kw) for i, m in enumerate(models)]
    darks = np.array([m.dark for m in models])
    if given is None:
        kinds = {m.dark_source for m in models}
        dark_src = "estimated" if kinds <= {"two-level fit", "flat + dim-class fit"} else "low-percentile (upper bound)"
    else:
        dark_src = "given"
    tr = Trim(*(max(getattr(m.trim, k) for m in models) for k in ("top", "bottom", "left", "right"))) \
        if trim else Trim()
    flats = np.stack([m.flat for m in models]) if flat else None
    strays = np.stack([m.stray for m in models]) if flat else None
    if strays is not None and not np.any(strays):
        strays = None
    return Calibration(dark=darks, flat=flats, trim=tr, stray=strays,
                       source={"dark": dark_src, "flat": "estimated" if flat else "none",
                               "trim": "estimated" if trim else "none", "distortion": "none"})


def fit_distortion(matches: Sequence[PairMatch], stage_px: np.ndarray, *, tile_shape: tuple[int, int],
                   fit_magnification: bool = True, prior_sigma_px: float = 5.0) -> DistortionModel:
    """Distortion coefficients from a (high-overlap) calibration acquisition.

    A thin front of :func:`.positions.solve_positions`: the positions are
    solved too but discarded. With large overlaps (e.g. 50 %) every detector
    region is matched against several others and all four terms are well
    constrained; magnification still relies on the stage as the ruler.
    """
    return solve_positions(matches, stage_px, tile_shape=tile_shape, estimate_distortion=True,
                           fit_magnification=fit_magnification, prior_sigma_px=prior_sigma_px).distortion
