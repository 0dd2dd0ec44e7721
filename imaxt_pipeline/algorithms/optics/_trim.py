"""Border trim and tile confidence: which detector pixels fusion and matching may use, and how much.

Stray light and scan turnarounds spoil a few lines at some tile borders
(:mod:`..calibration` measures them); :class:`Trim` names those lines and
:func:`confidence_map` turns a trim (and a flat field too vignetted to
trust) into the per-pixel weight every concern uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Trim", "confidence_map"]


@dataclass(frozen=True)
class Trim:
    """Rows/columns to ignore at each tile border (stray light, scan turnarounds)."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def as_dict(self) -> dict[str, int]:
        """``{"top": ..., "bottom": ..., "left": ..., "right": ...}``."""
        return asdict(self)

    def valid(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """Slices of the kept region of a tile of ``shape``."""
        h, w = shape
        return slice(self.top, h - self.bottom), slice(self.left, w - self.right)


def confidence_map(
    shape: tuple[int, int],
    *,
    trim: Trim | None = None,
    feather: float = 0.0,
    flat: npt.ArrayLike | None = None,
    min_flat: float = 0.3,
) -> npt.NDArray[np.float32]:
    """Per-pixel weight of a tile in fusion and matching.

    0 on trimmed borders (and where ``flat < min_flat``: too vignetted to
    trust); 1 elsewhere, or, with ``feather > 0``, a linear ramp from 0 at
    the kept border to 1 at ``feather`` px inside it, which blends seams.

    Returns
    -------
    ndarray (H, W) float32 in [0, 1]
    """
    h, w = shape
    trim = trim or Trim()
    sy, sx = trim.valid((h, w))
    conf = np.zeros((h, w), np.float32)
    if feather > 0:
        yy = np.arange(h, dtype=np.float32)
        xx = np.arange(w, dtype=np.float32)
        ry = np.clip(np.minimum(yy - sy.start + 1, sy.stop - yy) / feather, 0, 1)
        rx = np.clip(np.minimum(xx - sx.start + 1, sx.stop - xx) / feather, 0, 1)
        conf[sy, sx] = (ry[:, None] * rx[None, :])[sy, sx]
    else:
        conf[sy, sx] = 1.0
    if flat is not None:
        conf[np.asarray(flat) < min_flat] = 0.0
    return conf
