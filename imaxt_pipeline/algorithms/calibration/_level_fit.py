"""The level fit of :mod:`._flatfield`: weighted least squares of block levels through one flat, and its dark.

Moved out of :mod:`._flatfield` unchanged; :meth:`LevelFit.resampled` reweights it for the bootstrap
(:mod:`._bootstrap`). Nothing here reads or writes storage.
"""

from __future__ import annotations

import copy

import numpy as np
import numpy.typing as npt
from scipy import optimize

__all__ = ["LevelFit"]

_Array = npt.NDArray[np.float64]


class LevelFit:
    """Weighted least squares of ``block = dark + f(p) * L_g`` over (tile, class) groups ``g``.

    ``f`` is the polynomial ``basis @ coef`` (mean 1 over the blocks), or
    the given flat when ``coef`` is None. Each group is weighted by
    ``1 / (s L)²`` with ``s`` the relative scatter of its class, frozen at
    construction so that residuals at different darks compare. Per-group
    sums make every step cost O(groups), not O(blocks).
    """

    def __init__(
        self,
        data: _Array,
        cls: npt.NDArray[np.int8],
        region: npt.NDArray[np.bool_],
        robust: _Array,
        basis: _Array,
        coef: _Array | None,
        fb: _Array,
        dark: float,
        min_blocks: int = 3,
    ) -> None:
        sel = (cls >= 0) & region[None]
        ii, yy, xx = np.nonzero(sel)
        key = ii * 2 + cls[sel]
        _, g, counts = np.unique(key, return_inverse=True, return_counts=True)
        keep = counts[g] >= min_blocks
        uniq, g = np.unique(key[keep], return_inverse=True)
        self.index = (ii[keep], yy[keep], xx[keep])
        self.n_groups, self.g = len(uniq), g
        self.group_class = (uniq % 2).astype(int)
        self.group_tile = uniq // 2
        self.active = np.ones(len(uniq), bool)  # groups of tiles a bootstrap draw left out are not
        self.cls_row = self.group_class[g]
        self.y = data[self.index].astype(np.float64)
        self.coef: _Array | None = None if coef is None else np.array(coef, float)
        self.P = basis[self.index[1:]] if coef is not None else fb[self.index[1:]][:, None]
        self.mean_basis = basis.reshape(-1, basis.shape[-1]).mean(axis=0)
        if not self.n_groups:
            return
        rel = (self.y - dark) / np.maximum(self.P @ (self.coef if coef is not None else [1.0]), 1e-6)
        level = np.array([np.median(rel[g == k]) for k in range(self.n_groups)])
        self.scatter = np.ones(2)
        for k in (0, 1):
            r = rel[self.cls_row == k] / level[g[self.cls_row == k]] - 1
            if r.size:
                self.scatter[k] = max(1.4826 * np.median(np.abs(r - np.median(r))), 1e-3)
        self.scale = self.scatter[self.group_class] * np.maximum(np.abs(level), 1e-3)
        w = robust[self.index] / self.scale[g] ** 2
        n, y, P = self.n_groups, self.y, self.P
        self.s0, self.s1, self.s2 = (np.bincount(g, w * y**k, n) for k in range(3))
        self.c = np.stack([np.bincount(g, w * p, n) for p in P.T], axis=1)
        self.a = np.stack([np.bincount(g, w * y * p, n) for p in P.T], axis=1)
        self.m = np.stack([np.stack([np.bincount(g, w * pi * pj, n) for pj in P.T], -1) for pi in P.T], -1)

    def resampled(self, tile_weight: _Array) -> LevelFit:
        """This fit with every tile's groups weighted by ``tile_weight`` (its count in a bootstrap draw)."""
        out = copy.copy(self)
        gw = tile_weight[self.group_tile]
        out.active = gw > 0
        out.s0, out.s1, out.s2 = self.s0 * gw, self.s1 * gw, self.s2 * gw
        out.c, out.a, out.m = self.c * gw[:, None], self.a * gw[:, None], self.m * gw[:, None, None]
        return out

    def solve(
        self, dark: float, *, fit_flat: bool = True, iters: int = 100, tol: float = 1e-9
    ) -> tuple[_Array | None, _Array, float]:
        """Flat coefficients (None when given), group levels and weighted residual sum at ``dark``."""
        fixed = self.coef is None or not fit_flat
        coef = np.ones(1) if self.coef is None else self.coef
        ay = self.a - dark * self.c  # per group: sum w y p
        yy = self.s2 - 2 * dark * self.s1 + dark * dark * self.s0
        prev = np.inf
        for _ in range(iters):
            fy, ff = ay @ coef, np.einsum("i,gij,j->g", coef, self.m, coef)
            levels = fy / np.maximum(ff, 1e-300)
            obj = float(np.sum(yy - levels * fy))
            if fixed or prev - obj <= tol * abs(obj):
                break
            prev = obj
            coef = np.linalg.lstsq(np.einsum("g,gij->ij", levels**2, self.m), levels @ ay, rcond=None)[0]
            mean = float(self.mean_basis @ coef)
            if not (mean > 1e-6 and np.all(np.isfinite(coef))):
                # no positive flat fits the levels at this dark (a dark up at the faintest blocks leaves them
                # at or below zero): this dark is not a candidate, and the warm start is kept for the next
                return (None if self.coef is None else self.coef), levels, np.inf
            coef = coef / mean
        if not fixed:
            self.coef = coef
        return (None if self.coef is None else coef), levels, obj

    def objective(self, dark: float) -> float:
        """Weighted residual sum of squares at ``dark`` (fitting the flat when it is not given)."""
        return self.solve(dark)[2]

    def best_dark(self, n_grid: int = 16, min_ratio: float = 1.5) -> float | None:
        """Dark with the smallest residual, or None when the data cannot tell.

        That is: one class only, a minimum at the end of the range searched,
        or class levels less than ``min_ratio`` apart (one population split
        in two, e.g. tiles of pure agarose).
        """
        counts = np.bincount(self.cls_row, minlength=2)
        if counts.sum() < 3 or self.coef is not None and counts.min() < 3 * self.P.shape[1]:
            return None
        low = self.y[self.cls_row == (0 if counts[0] else 1)]
        hi = float(np.percentile(low, 1.0))
        lo = min(0.0, hi) - 2 * abs(float(np.median(low)) - hi)
        grid = np.linspace(lo, hi, n_grid)
        obj = [self.objective(x) for x in grid]
        j = int(np.argmin(obj))
        if j in (0, n_grid - 1):
            return None
        res = optimize.minimize_scalar(
            self.objective, bounds=(grid[j - 1], grid[j + 1]), method="bounded", options={"xatol": 1e-3 * (hi - lo)}
        )
        best = float(res.x)
        levels = self.solve(best)[1]
        if counts.min() and np.median(levels[self.active & (self.group_class == 1)]) < min_ratio * np.median(
            levels[self.active & (self.group_class == 0)]
        ):
            return None
        return best

    def support(self) -> float:
        """``min(n / s²)`` over the classes: blocks ``n`` of relative scatter ``s``."""
        return float(np.min(np.bincount(self.cls_row, minlength=2) / self.scatter**2))

    def robust_weights(self, dark: float, coef: _Array | None, levels: _Array, c: float = 4.685) -> _Array:
        """Tukey biweights of the blocks' standardised residuals for a solution of :meth:`solve`."""
        f = self.P @ (np.ones(1) if coef is None else coef)
        z = (self.y - dark - f * levels[self.g]) / self.scale[self.g] / c
        out: _Array = np.where(np.abs(z) < 1, (1 - z * z) ** 2, 0.0)
        return out
