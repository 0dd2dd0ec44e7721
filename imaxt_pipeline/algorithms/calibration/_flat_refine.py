"""Flat-field refinement from the tile overlaps: the seams pin what tile statistics cannot.

A flat estimated from tile statistics (:mod:`._flatfield`) cannot tell the
scene's large-scale variation from vignetting. The overlaps can: a scene
point ``x`` seen by tile ``a`` at detector pixel ``p`` and by tile ``b`` at
``q`` gives, after the current calibration, ``A = G(p) S(x)`` and
``B = G(q) S(x)`` with ``G`` the flat's remaining error, so::

    log G(p) - log G(q) = log A - log B

:func:`refine_flat` fits ``log G`` as a low-degree Legendre polynomial in
normalised detector coordinates (no constant: the overlaps see only
differences) by weighted linear least squares over subsampled, smoothed
overlap pixels, with a prior towards 0 so that what the overlaps do not see
stays at the current flat. Each tile of a pair is resampled onto the mosaic
by :func:`..fusion.fuse_region`, as :func:`._seams.overlap_mismatch` does, so
the seams it fits are those that measure scores.

The overlaps are narrow bands at the tile borders: they see a term's
difference across the tile well, but a term symmetric about the tile
centre (the vignetting bowl) only through its slope across the band, and
the tile interior not at all. The prior on a term of total degree ``n`` therefore tightens as
``1 / n**3``, scaled by the fit's own residual noise: precise overlaps fit
high orders, noisy ones leave them at the current flat.

Nothing here reads or writes storage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ..optics import Calibration, DistortionModel, detector_coordinates, tile_coordinates
from ._basis import polynomial_basis, polynomial_surface, polynomial_terms
from ._seams import SEAM_SAMPLE_COLUMNS, masked_smooth, resampled_overlaps

__all__ = ["flat_change", "refine_flat", "refine_flat_from_samples"]

_Array = npt.NDArray[np.float64]
#: Seam samples further than this many sigma (MAD) from the fit are left out (:func:`refine_flat_from_samples`).
_CLIP = 2.0


def flat_change(gain: npt.ArrayLike) -> float:
    """How far a refinement's gain ``G`` (:func:`refine_flat`) moves the flat: the rms of ``log G`` over the detector.

    0 means not at all; 0.02 is a 2 % rms change. Matches taken under a flat this far off the refined one
    are worth retaking (the stitch step re-matches above its ``flat_rematch_tol``).
    """
    g = np.asarray(gain, np.float64)
    if g.size == 0 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError("a flat gain must be finite and positive")
    return float(np.sqrt(np.mean(np.log(g) ** 2)))


def refine_flat(
    tiles: npt.ArrayLike | Callable[[int], npt.ArrayLike],
    positions: npt.ArrayLike,
    pairs: Sequence[tuple[int, int]] | None = None,
    *,
    distortion: DistortionModel | None = None,
    confidence: npt.ArrayLike | None = None,
    degree: int = 4,
    prior: float = 0.02,
    sigma: float = 4.0,
    step: int = 2,
    min_signal: float = 0.2,
    min_support: float = 0.5,
) -> _Array:
    """Multiplicative correction ``G`` of the flat field that equalises the overlaps of the tiles.

    Parameters
    ----------
    tiles : ndarray (C, T, H, W) or (T, H, W), or callable ``i -> (C, H, W)``
        Tiles corrected by the current calibration (dark, stray light and
        flat removed); a callable lets the caller read one pair at a time.
    positions : ndarray (T, 2)
        Top-left (y, x) of each undistorted tile in the mosaic frame.
    pairs : sequence of (int, int), optional
        Overlapping tiles to compare; default every pair whose footprints
        overlap. Pairs of several slices (each in its own frame, indices
        global) can be fitted together: only the pairs given are used.
    distortion : DistortionModel, optional
        Distortion of every tile.
    confidence : ndarray (H, W), optional
        Tile confidence; pixels of weight 0 (trimmed borders) are not used.
    degree : int
        Total degree of the Legendre polynomial ``log G``.
    prior : float
        Prior standard deviation of a first-degree coefficient of ``log G``
        (a term of degree ``n``: ``prior / n**3``), against the residual
        noise of the fit.
    sigma : float
        Gaussian smoothing of both resampled tiles, in px (averages out
        shot noise and residual misregistration of the texture).
    step : int
        Subsampling of the smoothed overlap pixels.
    min_signal : float
        Pixels where either tile is dimmer than this fraction of the
        channel's median overlap level are left out (residual dark and
        stray light dominate the ratio there).
    min_support : float
        As in :func:`._seams.overlap_mismatch`.

    Returns
    -------
    ndarray (H, W) float64
        ``G`` with mean 1: use ``flat * G`` as the flat (equivalently,
        divide the corrected tiles by ``G``). One ``G`` serves every
        channel: vignetting belongs to the shared optics, and pooling the
        channels' overlaps (each weighted by its signal relative to its
        median) fits it better than any channel alone.

    Raises
    ------
    ValueError
        On mismatched shapes or when no overlap pixel is usable.

    Examples
    --------
    Refine a :class:`..optics.Calibration` ``cal`` from one slice's
    raw tiles (C, T, H, W) at their stitched positions::

        gain = refine_flat(cal.apply(raw), positions, pairs, distortion=cal.distortion,
                           confidence=cal.confidence(raw.shape[-2:]))
        cal = dataclasses.replace(cal, flat=cal.flat * gain)
    """
    pos = np.asarray(positions, np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must be (T, 2), got shape {pos.shape}")
    get: Callable[[int], npt.ArrayLike]
    if callable(tiles):
        get = tiles
    else:
        arr = np.asarray(tiles, np.float32)
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4 or arr.shape[1] != len(pos):
            raise ValueError(f"tiles (C, T, H, W) and positions (T, 2) do not match: {arr.shape}, {pos.shape}")
        get = list(np.moveaxis(arr, 1, 0)).__getitem__  # i -> (C, H, W) view
    h, w = np.shape(confidence) if confidence is not None else np.shape(get(0))[-2:]
    design, values, channel = _samples(
        get, pos, pairs, (int(h), int(w)), distortion or DistortionModel(), confidence, degree, sigma, step, min_support
    )
    # Smoothed samples 2 sigma apart and closer are not independent: the noise the prior weighs against
    # counts the samples one smoothing kernel spans.
    return _fit_gain(design, values, channel, (int(h), int(w)), degree, prior, min_signal, (2 * sigma / step) ** 2)


def refine_flat_from_samples(
    samples: npt.ArrayLike,
    calibration: Calibration,
    shape: tuple[int, int],
    *,
    degree: int = 4,
    prior: float = 0.02,
    min_signal: float = 0.2,
) -> _Array:
    """:func:`refine_flat` from seam samples the pair tasks took (:func:`._seams.seam_samples`): the same fit.

    Each sample (a row, columns :data:`._seams.SEAM_SAMPLE_COLUMNS`) is one small block of a seam, seen
    by tile ``a`` at one detector position and by tile ``b`` at another, as block means of the tiles
    corrected by the calibration of its run; it is re-expressed here under ``calibration``'s flat and
    dark (the flat and dark it was corrected with are in the row), so that samples stored with earlier
    sections fit together with new ones: the flat belongs to the optics, not to a section. Blocks do not
    overlap: each counts as one independent sample. Returns ``G`` (H, W) with mean 1 for
    ``calibration.flat``, as :func:`refine_flat`.
    """
    arr = np.asarray(samples, np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(SEAM_SAMPLE_COLUMNS):
        raise ValueError(f"seam samples must be (N, {len(SEAM_SAMPLE_COLUMNS)}), got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError("no seam samples: nothing to fit")
    col = {c: arr[:, k] for k, c in enumerate(SEAM_SAMPLE_COLUMNS)}
    ch = col["channel"].astype(np.int_)
    pa, pb = arr[:, 1:3], arr[:, 3:5]
    values = np.stack(
        [
            _reexpressed(calibration, ch, at, col[f"value_{side}"], col[f"flat_{side}"], col["dark"], shape)
            for at, side in ((pa, "ref"), (pb, "mov"))
        ],
        axis=1,
    )
    design = _log_gain_basis(pa[:, 0], pa[:, 1], shape, degree) - _log_gain_basis(pb[:, 0], pb[:, 1], shape, degree)
    return _fit_gain(design, values, ch, shape, degree, prior, min_signal, 1.0, robust=True)


def _reexpressed(
    cal: Calibration,
    ch: npt.NDArray[np.int_],
    at: _Array,
    value: _Array,
    flat_then: _Array,
    dark_then: _Array,
    shape: tuple[int, int],
) -> _Array:
    """A block mean corrected with ``flat_then``/``dark_then``, corrected with ``cal``'s flat and dark instead.

    Both flats are smooth, so their values at the block's centre (nearest pixel) stand for the block.
    """
    now = np.ones(len(value))
    if cal.flat is not None:
        iy = np.clip(np.rint(at[:, 0]).astype(np.int_), 0, shape[0] - 1)
        ix = np.clip(np.rint(at[:, 1]).astype(np.int_), 0, shape[1] - 1)
        now = np.asarray(cal.flat, np.float64)[ch, iy, ix]
    same = (flat_then == now) & (dark_then == np.asarray(cal.dark, np.float64)[ch])
    out = (value * flat_then + dark_then - np.asarray(cal.dark, np.float64)[ch]) / now
    return np.where(same, value, out)  # samples of this run stay exactly as taken


def _fit_gain(
    design: _Array,
    values: _Array,
    channel: npt.NDArray[np.int_],
    shape: tuple[int, int],
    degree: int,
    prior: float,
    min_signal: float,
    correlated: float,
    *,
    robust: bool = False,
) -> _Array:
    """Weighted least squares of ``log A - log B`` on ``design``, with the degree prior; ``G`` on the tile."""
    h, w = shape
    level = values.mean(axis=1)
    present = range(int(channel.max()) + 1)
    med = np.array([np.median(level[channel == ch]) if np.any(channel == ch) else 0.0 for ch in present])[channel]
    ok = (values.min(axis=1) > min_signal * med) & (med > 0)
    if ok.sum() < design.shape[1]:
        raise ValueError(f"only {int(ok.sum())} overlap pixels above {min_signal} of the median level: nothing to fit")
    # Weight by signal (relative to the channel's level, so channels count alike): shot noise and
    # residual additive errors weigh less, relative to the signal, where it is bright.
    d, wt, r = design[ok], level[ok] / med[ok], np.log(values[ok, 0] / values[ok, 1])
    normal, rhs = d.T @ (d * wt[:, None]), d.T @ (wt * r)
    floor = 1e-9 * np.trace(normal) / len(rhs) * np.eye(len(rhs))
    coef = np.linalg.solve(normal + floor, rhs)
    for _ in range(3 if robust else 0):
        # Unsmoothed blocks on a sharp edge (a bead) misregistered by a tenth of a px are off by percents,
        # and bright ones weigh most: leave out samples beyond ``_CLIP`` sigma (MAD) of the fit, and fit again.
        res = r - d @ coef
        inlier = np.abs(res - np.median(res)) <= _CLIP * 1.4826 * np.median(np.abs(res - np.median(res))) + 1e-12
        d, wt, r = d[inlier], wt[inlier], r[inlier]
        normal, rhs = d.T @ (d * wt[:, None]), d.T @ (wt * r)
        coef = np.linalg.solve(normal + floor, rhs)
    # Residual variance per unit weight, times the samples that are not independent of each other
    # (``correlated``): the noise the prior is weighed against.
    noise = np.sum(wt * (r - d @ coef) ** 2) / np.sum(wt) * max(1.0, correlated)
    order = np.array([i + j for i, j in polynomial_terms(degree, constant=False)], np.float64)
    coef = np.linalg.solve(normal + floor + np.diag(noise * order**6 / prior**2), rhs)
    v, u = tile_coordinates(np.arange(h), np.arange(w), (h, w))
    # ``log G`` is a Legendre surface without constant: the overlaps see differences only.
    gain: _Array = np.exp(polynomial_surface(coef, v, u, degree, kind="legendre", constant=False))
    out: _Array = gain / gain.mean()
    return out


def _samples(
    get: Callable[[int], npt.ArrayLike],
    pos: _Array,
    pairs: Sequence[tuple[int, int]] | None,
    shape: tuple[int, int],
    model: DistortionModel,
    confidence: npt.ArrayLike | None,
    degree: int,
    sigma: float,
    step: int,
    min_support: float,
) -> tuple[_Array, _Array, npt.NDArray[np.int_]]:
    """Design rows ``phi(p) - phi(q)``, smoothed values ``(A, B)`` and channel of every overlap sample."""
    rows: list[_Array] = []
    values: list[_Array] = []
    channel: list[npt.NDArray[np.int_]] = []
    for ov in resampled_overlaps(get, pos, shape, pairs, distortion=model, weights=confidence, sigma=sigma):
        a, b, region, both, support = ov.a, ov.b, ov.region, ov.both, ov.support
        keep = np.zeros(both.shape, bool)
        keep[::step, ::step] = True
        keep &= (both > 0) & (support >= min_support)
        if not keep.any():
            continue
        my, mx = np.mgrid[region[0] : region[1], region[2] : region[3]].astype(np.float64)
        pa, pb = (
            _log_gain_basis(*detector_coordinates(my - pos[k, 0], mx - pos[k, 1], shape, model), shape, degree)
            for k in (a, b)
        )
        diff = pa - pb  # (rows, cols, terms)
        for ch in range(ov.image_a.shape[0]):
            # The model is smoothed as the data are, signal-weighted: near the ends of the band the
            # kernel is one-sided, and the slope across the band is what pins the even terms.
            sw = both * np.maximum(ov.image_a[ch] + ov.image_b[ch], 0.0)
            den = ndi.gaussian_filter(sw, sigma, mode="constant") if sigma > 0 else sw
            num = (
                ndi.gaussian_filter(diff * sw[..., None], (sigma, sigma, 0), mode="constant")
                if sigma > 0
                else diff * sw[..., None]
            )
            rows.append(num[keep] / np.maximum(den[keep], 1e-12)[:, None])
            values.append(
                np.stack([masked_smooth(img[ch], both, support, sigma)[keep] for img in (ov.image_a, ov.image_b)], 1)
            )
            channel.append(np.full(int(keep.sum()), ch))
    if not rows:
        raise ValueError("no pixel is seen by two tiles: nothing to fit")
    return np.concatenate(rows), np.concatenate(values), np.concatenate(channel)


def _log_gain_basis(py: _Array, px: _Array, shape: tuple[int, int], degree: int) -> _Array:
    """Terms of ``log G`` (Legendre ``P_i(v) P_j(u)``, ``0 < i + j <= degree``) at detector pixels (..., terms)."""
    return polynomial_basis(*tile_coordinates(py, px, shape), degree, kind="legendre", constant=False)
