"""The calibration record applied to every tile: dark, stray light, flat, trim, distortion.

:class:`Calibration` gathers what :mod:`..calibration` estimates (or a
calibration file holds) so that the stitch, mosaic, bead and segmentation
steps all correct tiles the same way. It converts to and from plain
dicts/arrays so steps can store it (small attrs plus flat arrays) and
reload it. Estimating it is not its business: see
:func:`..calibration.estimate_calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ._distortion import DistortionModel
from ._trim import Trim, confidence_map

__all__ = ["Calibration", "apply_flat"]


def apply_flat(
    tile: npt.ArrayLike, flat: npt.ArrayLike, *, dark: float | npt.ArrayLike = 0.0, stray: npt.ArrayLike | None = None
) -> npt.NDArray[np.float32]:
    """``(tile - dark - stray) / flat`` as float32 (works on (..., H, W) stacks)."""
    out = np.asarray(tile, np.float32) - np.asarray(dark, np.float32)
    if stray is not None:
        out = out - np.asarray(stray, np.float32)
    return (out / np.asarray(flat, np.float32)).astype(np.float32, copy=False)


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

    dark: npt.NDArray[Any]
    flat: npt.NDArray[Any] | None = None
    trim: Trim = field(default_factory=Trim)
    distortion: DistortionModel = field(default_factory=DistortionModel)
    source: dict[str, str] = field(default_factory=dict)
    stray: npt.NDArray[Any] | None = None

    @classmethod
    def identity(cls, n_channels: int) -> Calibration:
        """No correction at all for ``n_channels`` channels (dark 0, no flat, no trim, no distortion)."""
        return cls(
            dark=np.zeros(n_channels), source={"dark": "none", "flat": "none", "trim": "none", "distortion": "none"}
        )

    def apply(self, tiles: npt.ArrayLike, *, window: tuple[slice, slice] | None = None) -> npt.NDArray[np.float32]:
        """Dark-, stray- and flat-correct tiles ``(C, H, W)`` or ``(C, T, H, W)`` (float32).

        ``window`` (rows, cols) says which part of the detector ``tiles`` hold (default all of
        it): the matching part of the flat and stray fields is used, so a caller needing a strip
        of a tile corrects only that strip. One float32 array is allocated, corrected in place.
        """
        arr = np.asarray(tiles)
        c = arr.shape[0]
        extra = (1,) * (arr.ndim - 3)
        part = (slice(None),) if window is None else (slice(None), *window)
        out = np.subtract(arr, np.asarray(self.dark, np.float32).reshape(c, *extra, 1, 1), dtype=np.float32)
        for term, correct in ((self.stray, np.subtract), (self.flat, np.true_divide)):
            if term is None:
                continue
            values = np.asarray(term, np.float32)[part]
            if values.shape[-2:] != out.shape[-2:]:
                raise ValueError(
                    f"tiles of shape {out.shape[-2:]} do not match the calibration window {values.shape[-2:]}"
                )
            correct(out, values.reshape(c, *extra, *values.shape[-2:]), out=out)
        return out

    @property
    def flat_estimated(self) -> bool:
        """Whether the flat came from the data (its source starts "estimated"), so the seams may refine it."""
        return self.flat is not None and self.source.get("flat", "").startswith("estimated")

    def confidence(self, shape: tuple[int, int], *, feather: float = 0.0) -> npt.NDArray[np.float32]:
        """Tile weight map (0 on the trimmed border)."""
        flat = None if self.flat is None else np.min(self.flat, axis=0)
        return confidence_map(shape, trim=self.trim, feather=feather, flat=flat)

    def with_distortion(self, model: DistortionModel, source: str) -> Calibration:
        """A copy with ``model`` as the distortion, recorded as coming from ``source``."""
        return replace(self, distortion=model, source={**self.source, "distortion": source})

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able summary (the flat array is stored separately)."""
        return {
            "dark": [float(d) for d in self.dark],
            "trim": self.trim.as_dict(),
            "distortion": {k: float(v) for k, v in self.distortion.as_dict().items()},
            "has_flat": self.flat is not None,
            "has_stray": self.stray is not None,
            "source": dict(self.source),
        }

    @classmethod
    def from_attrs(
        cls, attrs: dict[str, Any], flat: npt.NDArray[Any] | None = None, stray: npt.NDArray[Any] | None = None
    ) -> Calibration:
        """Inverse of :meth:`to_attrs`, given the arrays stored beside the attrs."""
        return cls(
            dark=np.asarray(attrs["dark"], float),
            flat=flat,
            trim=Trim(**attrs.get("trim", {})),
            distortion=DistortionModel.from_dict(attrs.get("distortion", {})),  # terms it lacks: 0
            source=dict(attrs.get("source", {})),
            stray=stray,
        )
