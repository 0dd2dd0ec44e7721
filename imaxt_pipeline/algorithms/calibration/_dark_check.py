"""An independent check of a dark estimate: the photon-transfer curve of the tiles themselves.

For a photon-counting detector the pixel noise grows with the signal above the dark offset,
``var = g (mean - dark) + read²`` (``g`` ADU per photon). Local means and local noise variances of
smooth blocks of the tiles (agarose, smooth tissue) trace that line; its zero crossing ``-a / g`` is
a *lower* bound of the dark (``read² >= 0`` puts the dark above it), and the low percentile of the
smoothed tiles an *upper* bound (no pixel reads below the dark on average). A dark estimate outside
``[lower - 3 sigma, upper]`` is inconsistent with the data and is flagged; the interval itself is the
estimate's uncertainty when nothing else pins it.

Texture inflates a block's variance, never deflates it: the noise of each mean bin is taken from its
lowest-variance blocks, and the line is fitted through those robustly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._summary import TileStats, low_percentile, summarise

__all__ = ["DarkCheck", "check_dark", "checked_darks"]

_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DarkCheck:
    """Bounds on one channel's dark from the data, and whether ``estimate`` lies within them (ADU)."""

    estimate: float
    lower: float  # photon-transfer zero crossing (nan when the curve could not be fitted)
    upper: float  # low percentile of the smoothed tiles
    lower_sigma: float
    gain: float  # ADU per photon from the slope (nan when not fitted)

    @property
    def consistent(self) -> bool:
        """Estimate within ``[lower - 3 sigma, upper + 1]`` (bounds that could not be measured pass)."""
        lo_ok = not np.isfinite(self.lower) or self.estimate >= self.lower - 3 * self.lower_sigma - 1.0
        return bool(lo_ok and self.estimate <= self.upper + 1.0)

    @property
    def sigma(self) -> float:
        """Half the width of the data's interval ``[lower, upper]``: how far the data let the dark move."""
        if not np.isfinite(self.lower):
            return float("nan")
        return float(max(self.upper - self.lower, 0.0) / 2 + self.lower_sigma)

    def as_dict(self) -> dict[str, float | bool | None]:
        """JSON-ready (NaN becomes None)."""

        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {
            "estimate": num(self.estimate),
            "lower": num(self.lower),
            "upper": num(self.upper),
            "sigma": num(self.sigma),
            "gain_adu_per_photon": num(self.gain),
            "consistent": self.consistent,
        }

    def describe(self, channel: int) -> str:
        """One line: the estimate against the data's bounds."""
        lo = "n/a" if not np.isfinite(self.lower) else f"{self.lower:.1f} ± {self.lower_sigma:.1f}"
        word = "consistent with" if self.consistent else "INCONSISTENT with"
        return (
            f"channel {channel}: dark {self.estimate:.1f} ADU {word} the data (photon-transfer lower bound {lo}, "
            f"darkest-pixel upper bound {self.upper:.1f})"
        )


def check_dark(tiles: npt.ArrayLike | TileStats, estimate: float, *, block: int = 16, bins: int = 12) -> DarkCheck:
    """Bounds on the dark of one channel's raw tiles ``(T, H, W)`` or their statistics; the check of ``estimate``.

    Raw tiles are summarised here, the noise blocks (``block`` px) taken from at most 16 of them; a
    :class:`TileStats` carries its own (:func:`._summary.summarise_tile` with ``noise``).
    """
    if isinstance(tiles, TileStats):
        stats = tiles
    else:
        arr = np.asarray(tiles)
        arr = arr.reshape(-1, *arr.shape[-2:])
        stats = summarise(arr, noise_every=max(1, len(arr) // 16), noise_block=block)
    upper = low_percentile(stats, 0.5)
    m = stats.noise_means.astype(np.float64)
    v = stats.noise_vars.astype(np.float64)
    nan = float("nan")
    if len(m) < 20 or np.ptp(m) <= 0:
        return DarkCheck(float(estimate), nan, float(upper), nan, nan)
    # the darker half of the blocks: mostly agarose; tissue texture inflates the variance of bright blocks
    edges = np.unique(np.quantile(m, np.linspace(0.0, 0.5, bins + 1)))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (m >= lo) & (m < hi)
        if sel.sum() < 5:
            continue
        q = v[sel] <= np.quantile(v[sel], 0.2)
        xs.append(float(np.mean(m[sel][q])))
        ys.append(float(np.mean(v[sel][q])))
    x, y = np.array(xs), np.array(ys)
    if len(x) < 3 or np.ptp(x) <= 0:
        return DarkCheck(float(estimate), nan, float(upper), nan, nan)
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    keep = np.abs(resid) <= 3 * 1.4826 * np.median(np.abs(resid)) + 1e-9
    if keep.sum() >= 3:
        coef, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
        resid = y[keep] - design[keep] @ coef
    a, g = float(coef[0]), float(coef[1])
    if not g > 0:
        return DarkCheck(float(estimate), nan, float(upper), nan, nan)
    lower = -a / g
    # sigma of the zero crossing from the scatter of the bin points about the line
    n = int(keep.sum())
    s2 = float(np.sum(resid**2)) / max(n - 2, 1)
    xk = x[keep]
    var_a = s2 * (1.0 / n + xk.mean() ** 2 / max(float(np.sum((xk - xk.mean()) ** 2)), 1e-12))
    return DarkCheck(float(estimate), float(lower), float(upper), float(np.sqrt(var_a) / g), g)


def checked_darks(tiles: npt.ArrayLike | Sequence[TileStats], darks: npt.ArrayLike) -> tuple[_Array, list[DarkCheck]]:
    """Check every channel's dark; an inconsistent one is clipped into the data's bounds.

    ``tiles`` are raw ``(C, T, H, W)`` or one :class:`TileStats` per channel.

    Returns the darks to use and the checks (of the *original* estimates).
    """
    est = np.asarray(darks, np.float64).reshape(-1)
    per_channel = tiles if isinstance(tiles, Sequence) and isinstance(tiles[0], TileStats) else np.asarray(tiles)
    checks = [check_dark(per_channel[c], float(est[c])) for c in range(len(per_channel))]
    out = est.copy()
    for c, ck in enumerate(checks):
        if not ck.consistent:
            lo = ck.lower if np.isfinite(ck.lower) else -np.inf
            out[c] = float(np.clip(est[c], min(lo, ck.upper), ck.upper))
    return out, checks
