"""The uncertainty of a channel's tile model: its last fit replicated over tiles drawn with replacement.

Nothing here reads or writes storage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._dark_check import DarkCheck
from ._level_fit import LevelFit
from ._stray import flat_bands, stray_profiles
from ._summary import TileStats

__all__ = ["Bootstrap"]

_Array = npt.NDArray[np.float64]


class Bootstrap:
    """Replicates of a channel's last fit over tiles drawn with replacement: the spread of dark, flat and stray.

    The scene differs from tile to tile (how much agarose, which tissue), so the tiles are the units that
    are resampled; a replicate reweights the per-(tile, class) sums of the fit (no block is revisited) and
    re-measures the stray light from the drawn tiles' border bands.
    """

    def __init__(
        self,
        stats: TileStats,
        fit: LevelFit,
        basis: _Array,
        coef: _Array | None,
        dim: npt.NDArray[np.bool_],
        background: float,
        edge_px: int,
        floor: float,
    ) -> None:
        self.stats, self.fit, self.basis, self.coef, self.dim = stats, fit, basis, coef, dim
        self.background, self.edge_px, self.floor = background, edge_px, floor

    def sigmas(
        self, dark: float, surface: _Array, *, fixed_dark: bool, n: int, seed: int, check: DarkCheck | None = None
    ) -> dict[str, Any]:
        t = self.stats.n_tiles
        rng = np.random.default_rng(seed)
        darks, flats, strays, failed = [], [], [], 0
        bands = flat_bands(surface, self.stats.block)
        fb = None if self.coef is None else self.basis @ self.coef
        for _ in range(n):
            idx = rng.integers(0, t, t)
            rep = self.fit.resampled(np.bincount(idx, minlength=t).astype(np.float64))
            d = dark
            if not fixed_dark:
                found = rep.best_dark()
                d = dark if found is None else found
                failed += found is None
            darks.append(d)
            if fb is not None:
                coef_r = rep.solve(d, fit_flat=True)[0]
                if coef_r is not None:
                    f = self.basis @ coef_r
                    flats.append((f / f.mean()) / (fb / fb.mean()) - 1.0)
            horiz, vert, _ = stray_profiles(
                self.stats, self.dim, dark, bands, self.background, self.edge_px, self.floor, index=idx
            )
            strays.append(float(horiz.max() + vert.max()))  # the largest of horiz[None, :] + vert[:, None]
        out: dict[str, Any] = {"stray": float(np.std(strays))}
        if not fixed_dark:
            # draws that could not separate the dark from the flat: the data do not pin it (the check's bounds do)
            out["dark"] = float(np.std(darks)) if failed <= n // 4 else float("nan")

        if flats:
            flat_sigma = np.std(flats, axis=0)
            if check is not None and np.isfinite(check.sigma) and fb is not None:
                # A dark error shapes the flat (the dim class reads flat * L + error): refit the flat with
                # the dark held at either end of its range (the check's bounds, about the dark used).
                boot = out.get("dark", 0.0)
                sigma = float(np.hypot(boot if np.isfinite(boot) else 0.0, check.sigma))
                lo = check.lower if np.isfinite(check.lower) else -np.inf
                centre = dark if check.consistent else float(np.clip(dark, min(lo, check.upper), check.upper))
                whole = self.fit.resampled(np.ones(t))
                for d in (centre - sigma, centre + sigma):
                    coef_d = whole.solve(d, fit_flat=True)[0]
                    if coef_d is not None:
                        f = self.basis @ coef_d
                        flat_sigma = np.hypot(flat_sigma, np.abs((f / f.mean()) / (fb / fb.mean()) - 1.0))
            out["flat"] = flat_sigma.astype(np.float32)
        return out
