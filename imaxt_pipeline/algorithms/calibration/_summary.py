"""What the calibration estimators need of a tile, reduced where the tile is read.

The dark, flat and stray-light estimators (:mod:`._flatfield`, :mod:`._stray`, :mod:`._dark_check`) never
need whole tiles: the flat and the scene levels are smooth (block means), stray light varies across the
border only (block-row and block-column means at full resolution along the other axis), the darkest-pixel
bound needs the low tail of the smoothed tile's distribution, and the photon-transfer check the mean and
noise variance of small blocks. :func:`summarise_tile` computes all of it from one raw tile, so a worker
returns ~1/16 of the tile's bytes and the client never holds a stack of tiles; :class:`TileStats` gathers
the summaries of one channel (:meth:`TileStats.concat`) and resamples them (:meth:`TileStats.take`, the
bootstrap). Nothing here reads or writes storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

__all__ = ["LOW_PROBS", "TileStats", "block_noise", "default_block", "low_percentile", "summarise", "summarise_tile"]

_Array = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]

#: Probabilities at which each tile's smoothed distribution is kept: finely over the low tail (where the
#: darkest-pixel bound lies), coarsely above it (so that a tile darker than the rest is still exact).
TAIL = 0.02
LOW_PROBS: _Array = np.unique(np.concatenate([np.linspace(0.0, TAIL, 201), np.linspace(TAIL, 1.0, 99)]))
NOISE_BLOCK = 16


def default_block(shape: tuple[int, ...]) -> int:
    """Block edge of the flat/dark fit for tiles of ``shape``: ``min(H, W) // 32``, at least 4 px."""
    return max(4, min(shape) // 32)


@dataclass(frozen=True)
class TileStats:
    """Reduced statistics of ``T`` tiles of one channel (see the module notes).

    Attributes
    ----------
    shape : (int, int)
        Tile shape (H, W).
    block : int
        Block edge ``b`` of ``blocks``, ``rows`` and ``cols``.
    blocks : ndarray (T, H // b, W // b) float64
        Block means.
    rows : ndarray (T, H // b, W) float32
        Mean over the ``b`` lines of each block row, per column (stray light entering at left/right).
    cols : ndarray (T, W // b, H) float32
        Mean over the ``b`` columns of each block column, per line (stray light entering at top/bottom).
    low : ndarray (T, len(LOW_PROBS)) float64
        Quantiles of each smoothed tile at :data:`LOW_PROBS` (:func:`low_percentile`).
    noise_means, noise_vars : ndarray (N,) float32
        Mean and white-noise variance of small blocks (:data:`NOISE_BLOCK` px by default) of the tiles summarised with
        ``noise`` (the photon-transfer check, :mod:`._dark_check`), concatenated.
    """

    shape: tuple[int, int]
    block: int
    blocks: _Array
    rows: _F32
    cols: _F32
    low: _Array
    noise_means: _F32
    noise_vars: _F32

    @property
    def n_tiles(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def nbytes(self) -> int:
        arrays = (self.blocks, self.rows, self.cols, self.low, self.noise_means, self.noise_vars)
        return int(sum(a.nbytes for a in arrays))

    def take(self, index: npt.ArrayLike) -> TileStats:
        """The statistics of tiles ``index`` (repeats allowed: a bootstrap draw); noise blocks kept as they are."""
        i = np.asarray(index, int)
        return TileStats(
            self.shape,
            self.block,
            self.blocks[i],
            self.rows[i],
            self.cols[i],
            self.low[i],
            self.noise_means,
            self.noise_vars,
        )

    @staticmethod
    def concat(parts: Sequence[TileStats]) -> TileStats:
        """One record of the tiles of ``parts`` (same channel, tile shape and block), in their order."""
        if not parts:
            raise ValueError("no tile statistics to gather")
        first = parts[0]
        if any(p.shape != first.shape or p.block != first.block for p in parts):
            raise ValueError("tile statistics of different tile shapes or blocks cannot be gathered")
        return TileStats(
            first.shape,
            first.block,
            *(np.concatenate([getattr(p, k) for p in parts]) for k in ("blocks", "rows", "cols", "low")),
            *(np.concatenate([getattr(p, k) for p in parts]) for k in ("noise_means", "noise_vars")),
        )


def summarise_tile(
    tile: npt.ArrayLike, *, block: int, noise: bool = False, smooth: float = 2.0, noise_block: int = NOISE_BLOCK
) -> list[TileStats]:
    """:class:`TileStats` (one tile each) of every channel of a raw tile ``(C, H, W)``.

    ``noise`` adds the photon-transfer block statistics (the costliest part: the check samples a few tiles).
    """
    arr = np.asarray(tile)
    if arr.ndim != 3:
        raise ValueError(f"tile must be (C, H, W), got shape {arr.shape}")
    return [_summarise_channel(arr[c], block, noise, smooth, noise_block) for c in range(arr.shape[0])]


def summarise(
    tiles: npt.ArrayLike,
    *,
    block: int | None = None,
    noise_every: int = 0,
    smooth: float = 2.0,
    noise_block: int = NOISE_BLOCK,
) -> TileStats:
    """:class:`TileStats` of one channel's tiles ``(T, H, W)``; ``noise_every = k``: noise blocks of every k-th."""
    arr = np.asarray(tiles)
    if arr.ndim != 3:
        raise ValueError(f"tiles must be (T, H, W), got shape {arr.shape}")
    b = block or default_block(arr.shape[1:])
    return TileStats.concat(
        [
            _summarise_channel(t, b, noise_every > 0 and i % noise_every == 0, smooth, noise_block)
            for i, t in enumerate(arr)
        ]
    )


def low_percentile(stats: TileStats, percentile: float) -> float:
    """``percentile`` (0-100) of the smoothed pixels of all tiles of ``stats`` (tiles of equal size weigh alike).

    The pooled distribution function is the mean of the tiles' own, each interpolated between its kept
    quantiles; the result is where it reaches ``percentile / 100`` (bisection).
    """
    q = float(percentile) / 100.0
    low = stats.low
    lo, hi = float(low[:, 0].min()), float(low[:, -1].max())
    if hi <= lo:
        return lo

    def cdf(x: float) -> float:
        return float(np.mean([np.interp(x, row, LOW_PROBS) for row in low]))

    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
        if hi - lo <= 1e-6 * max(1.0, abs(hi)):
            break
    return 0.5 * (lo + hi)


def _summarise_channel(
    tile: npt.NDArray[np.generic], b: int, noise: bool, smooth: float, noise_block: int
) -> TileStats:
    """One channel of one tile ``(H, W)`` (raw integers are reduced as they are: no float copy of the tile)."""
    t = np.asarray(tile)
    h, w = t.shape
    hb, wb = h // b, w // b
    if hb < 1 or wb < 1:
        raise ValueError(f"tile of shape {(h, w)} smaller than one block of {b} px")
    rows64 = t[: hb * b].reshape(hb, b, w).mean(axis=1, dtype=np.float64)
    blocks = _block_means(rows64, b, rows_done=True)
    rows = rows64.astype(np.float32)
    cols = t[:, : wb * b].reshape(h, wb, b).mean(axis=2, dtype=np.float64).T.astype(np.float32)
    means, variances = block_noise(t, noise_block) if noise else (np.zeros(0, np.float32), np.zeros(0, np.float32))
    return TileStats(
        (h, w),
        b,
        blocks[None],
        rows[None],
        np.ascontiguousarray(cols)[None],
        _smoothed_quantiles(t, smooth)[None],
        means.astype(np.float32),
        variances.astype(np.float32),
    )


def _smoothed_quantiles(t: npt.NDArray[np.generic], smooth: float) -> _Array:
    """Quantiles at :data:`LOW_PROBS` of the tile smoothed by a Gaussian of ``smooth`` px.

    Binned 2 x 2 first (a box of variance 1/4 px² per axis), then smoothed by the rest of the Gaussian
    on the binned grid: the same smoothing at a quarter of the cost, and a quarter of the pixels.
    """
    h2, w2 = t.shape[0] // 2, t.shape[1] // 2
    if min(h2, w2) >= 4:
        q: npt.NDArray[Any] = t[: 2 * h2, : 2 * w2]
        binned = q[0::2, 0::2].astype(np.float32)  # in place, in float: 5x faster than a 4-D mean
        binned += q[1::2, 0::2]
        binned += q[0::2, 1::2]
        binned += q[1::2, 1::2]
        binned *= 0.25
        sigma = np.sqrt(max(smooth * smooth - 0.25, 0.0)) / 2.0
    else:
        binned, sigma = t.astype(np.float32), smooth
    values = ndi.gaussian_filter(binned, sigma).ravel()
    n = values.size
    pos = LOW_PROBS * (n - 1)  # np.quantile's "linear" positions
    fine = pos <= TAIL * (n - 1)
    # the low tail exactly (its order statistics: a partition, then a sort of 2 %), the rest from every
    # 7th pixel (it only places tiles far darker than the others in the pooled distribution)
    k = min(n - 1, int(np.ceil(TAIL * (n - 1))) + 1)
    tail = np.sort(np.partition(values, k)[: k + 1]).astype(np.float64)
    rest = np.sort(values[::7]).astype(np.float64)
    out: _Array = np.empty(LOW_PROBS.size)
    out[fine] = np.interp(pos[fine], np.arange(k + 1), tail)
    out[~fine] = np.interp(LOW_PROBS[~fine], np.linspace(0.0, 1.0, rest.size), rest)
    return np.maximum.accumulate(out)


def block_noise(tile: npt.ArrayLike, b: int) -> tuple[_Array, _Array]:
    """Per ``b x b`` block: mean, and the white-noise variance from the 4-neighbour Laplacian (robust MAD).

    Medians come from one sort per block row of values (a sort of 256 values along the last axis is
    about 4x faster than ``np.median``'s partition there).
    """
    t = np.asarray(tile, np.float32)
    h, w = (t.shape[0] // b) * b, (t.shape[1] // b) * b
    t = t[:h, :w]
    lap = t[:-2, 1:-1] + t[2:, 1:-1]  # centre - mean of the 4 neighbours, in place (no temporaries)
    lap += t[1:-1, :-2]
    lap += t[1:-1, 2:]
    lap *= -0.25
    lap += t[1:-1, 1:-1]
    lap = np.pad(lap, 1, mode="edge")
    means = _block_means(t, b).ravel()
    blocks = np.sort(lap.reshape(h // b, b, w // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b), axis=1)
    med = _median_sorted(blocks)
    mad = _median_sorted(np.sort(np.abs(blocks - med[:, None]), axis=1))
    # var(lap) = (1 + 4/16) var for white noise
    return means, (1.4826 * mad.astype(np.float64)) ** 2 / 1.25


def _block_means(t: npt.NDArray[np.floating[Any]], b: int, *, rows_done: bool = False) -> _Array:
    """``b x b`` block means (float64) of ``t``, or of its block-row means ``t`` (``rows_done``).

    Rows first, then columns: a mean over axes (1, 3) of the 4-D view is several times slower.
    """
    rows = t if rows_done else t[: (t.shape[0] // b) * b].reshape(-1, b, t.shape[1]).mean(axis=1, dtype=np.float64)
    wb = rows.shape[1] // b
    out: _Array = rows[:, : wb * b].reshape(rows.shape[0], wb, b).mean(axis=2, dtype=np.float64)
    return out


def _median_sorted(rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    n = rows.shape[1]
    out: npt.NDArray[np.float64] = 0.5 * (rows[:, (n - 1) // 2].astype(np.float64) + rows[:, n // 2])
    return out
