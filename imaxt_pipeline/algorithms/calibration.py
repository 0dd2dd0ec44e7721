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

from .distortion import DistortionModel
from .flatfield import Trim, apply_flat, confidence_map, estimate_dark, estimate_flat, estimate_trim
from .overlap import PairMatch
from .positions import solve_positions

__all__ = ["Calibration", "estimate_calibration", "fit_distortion"]


@dataclass(frozen=True)
class Calibration:
    """Per-channel dark offsets, flat fields, border trim and distortion model.

    Attributes
    ----------
    dark : ndarray (C,)
        Additive offset per channel.
    flat : ndarray (C, H, W) or None
        Flat field per channel (mean 1); None means no flat correction.
    trim : Trim
        Border excluded from matching and fusion.
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

    @classmethod
    def identity(cls, n_channels: int) -> "Calibration":
        return cls(dark=np.zeros(n_channels), source={"dark": "none", "flat": "none", "trim": "none",
                                                     "distortion": "none"})

    def apply(self, tiles: np.ndarray) -> np.ndarray:
        """Dark- and flat-correct tiles ``(C, H, W)`` or ``(C, T, H, W)`` (float32)."""
        arr = np.asarray(tiles, np.float32)
        c = arr.shape[0]
        extra = (1,) * (arr.ndim - 3)
        dark = np.asarray(self.dark, np.float32).reshape(c, *extra, 1, 1)
        if self.flat is None:
            return arr - dark
        flat = np.asarray(self.flat, np.float32).reshape(c, *extra, *self.flat.shape[-2:])
        return apply_flat(arr, flat, dark=dark)

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
                "has_flat": self.flat is not None, "source": dict(self.source)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], flat: np.ndarray | None = None) -> "Calibration":
        return cls(dark=np.asarray(attrs["dark"], float), flat=flat, trim=Trim(**attrs.get("trim", {})),
                   distortion=DistortionModel(**attrs.get("distortion", {})), source=dict(attrs.get("source", {})))


def estimate_calibration(tiles: np.ndarray, *, dark: float | Sequence[float] | None = None, flat: bool = True,
                         trim: bool = True, statistic: str = "median", flat_sigma: float | None = None,
                         trim_threshold: float = 0.2) -> Calibration:
    """Dark, flat and trim of every channel from the data.

    Parameters
    ----------
    tiles : ndarray (C, T, H, W)
        Raw tiles (any number of slices stacked along T).
    dark : float or sequence of float, optional
        Known dark offsets; estimated per channel when None.
    flat, trim : bool
        Estimate the flat field / border trim (else none / no trim).
    statistic : {"median", "trimmed_mean"}
        See :func:`.flatfield.estimate_flat`.
    flat_sigma : float, optional
        Flat smoothing in px.
    trim_threshold : float
        See :func:`.flatfield.estimate_trim`.

    Returns
    -------
    Calibration
        With identity distortion (fit it with :func:`fit_distortion`).
    """
    arr = np.asarray(tiles)
    if arr.ndim != 4:
        raise ValueError(f"tiles must be (C, T, H, W), got shape {arr.shape}")
    c = arr.shape[0]
    if dark is None:
        darks = np.array([estimate_dark(arr[i]) for i in range(c)])
        dark_src = "estimated"
    else:
        darks = np.broadcast_to(np.asarray(dark, float), (c,)).copy()
        dark_src = "given"
    trims = [estimate_trim(arr[i], dark=darks[i], threshold=trim_threshold) for i in range(c)] if trim else [Trim()]
    tr = Trim(*(max(getattr(t, k) for t in trims) for k in ("top", "bottom", "left", "right")))
    flats = None
    if flat:
        flats = np.stack([estimate_flat(arr[i], dark=darks[i], trim=tr, statistic=statistic, sigma=flat_sigma)
                          for i in range(c)])
    return Calibration(dark=darks, flat=flats, trim=tr,
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
