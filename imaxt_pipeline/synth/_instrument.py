"""The simulated microscope: stage, optics (distortion, vignetting, stray light) and detector.

A raw tile of slice ``k`` at grid (row, col) is::

    scene(q)   = slice plane (counts) at mosaic position q, cubic-spline interpolated
    expected   = flat(p) * scene(T + p + D(p)) + stray(p)
    raw(p)     = gain * Poisson(expected / gain) + dark + Normal(0, read_noise)

for every detector pixel ``p = (y, x)``, with ``T`` the true top-left of the
tile in the slice's mosaic frame and ``D`` the distortion displacement of
:mod:`imaxt_pipeline.algorithms.optics` (a detector pixel sees the scene at
``p + D(p)``). The result is rounded and clipped to uint16. Shot noise is
drawn exactly where fewer than 50 photons are expected and by its normal
approximation (shot and read noise together, same mean and variance) above,
which is indistinguishable there.

The recorded stage position is the nominal grid position; the true one adds
a per-tile, per-slice error drawn from a normal law truncated at 3 sigma.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from ..algorithms.optics import displacement_field, max_displacement

if TYPE_CHECKING:
    from ._params import SynthParams

__all__ = ["Instrument", "flat_field", "render_pad", "stray_light"]

EXACT_POISSON_BELOW = 50.0


def render_pad(params: SynthParams) -> int:
    """Pixels rendered around the mosaic frame so every sampled point has spline support."""
    return int(math.ceil(max_displacement(params.tile_shape, params.resolved_distortion()))) + 8


def flat_field(params: SynthParams) -> np.ndarray:
    """Multiplicative vignetting ``1 - v * (u**2 + w**2) / 2`` with u, w in [-1, 1] across the tile.

    Equal to 1 at the tile centre and ``1 - flat_vignetting`` at the corners.
    """
    h, w = params.tile_shape
    v = (np.arange(h) - (h - 1) / 2.0) / ((h - 1) / 2.0)
    u = (np.arange(w) - (w - 1) / 2.0) / ((w - 1) / 2.0)
    return 1.0 - params.flat_vignetting * (v[:, None] ** 2 + u[None, :] ** 2) / 2.0


def stray_light(params: SynthParams) -> np.ndarray:
    """Additive stray light ``S * exp(-x / scale)`` entering at the tile edge x = 0 (every row alike)."""
    h, w = params.tile_shape
    profile = params.stray_light * np.exp(-np.arange(w) / params.stray_light_scale_px)
    return np.broadcast_to(profile[None, :], (h, w)).copy()


class Instrument:
    """Stage, optics and detector of one simulated acquisition.

    Parameters
    ----------
    params : SynthParams
        Sample parameters.
    rng : numpy.random.Generator
        Source of the stage errors (drawn at construction).
    pad : int
        Padding of the rendered planes (see :func:`render_pad`).
    """

    def __init__(self, params: SynthParams, rng: np.random.Generator, *, pad: int) -> None:
        self.params, self.pad = params, pad
        self.distortion = params.resolved_distortion()
        (sy, sx), m = params.step_px, params.margin_px
        rr, cc = np.meshgrid(np.arange(params.rows), np.arange(params.cols), indexing="ij")
        self.nominal = np.stack([m + rr * sy, m + cc * sx], axis=-1).astype(np.float64)
        err = _truncated_normal(rng, params.stage_error_px, (params.slices, params.rows, params.cols, 2))
        self.true = self.nominal[None] + err
        self.flat = flat_field(params)
        self.stray = stray_light(params)
        dy, dx = displacement_field(params.tile_shape, self.distortion)
        yy, xx = np.indices(params.tile_shape, dtype=np.float64)
        self._base = (yy + dy + pad, xx + dx + pad)

    @property
    def recorded_um(self) -> np.ndarray:
        """Recorded (y, x) stage positions in µm, shape (rows, cols, 2): the nominal grid."""
        return self.nominal * self.params.pixel_size_um

    def prepare(self, plane: np.ndarray) -> np.ndarray:
        """Cubic B-spline coefficients of one padded plane (computed once, sampled per tile)."""
        return ndi.spline_filter(plane, order=3, mode="mirror")

    def sample(self, coeffs: np.ndarray, k: int, row: int, col: int) -> np.ndarray:
        """Scene seen by each detector pixel (distorted, before flat, stray light and noise).

        Parameters
        ----------
        coeffs : ndarray
            Output of :meth:`prepare` for slice ``k``'s padded plane.
        k, row, col : int
            Slice and tile grid position.

        Returns
        -------
        ndarray (tile_shape) of float64
        """
        ty, tx = self.true[k, row, col]
        coords = (self._base[0] + ty, self._base[1] + tx)
        return ndi.map_coordinates(coeffs, coords, order=3, prefilter=False, mode="mirror")

    def expected(self, scene: np.ndarray) -> np.ndarray:
        """Noise-free signal above the dark level: ``flat * scene + stray``."""
        return np.maximum(self.flat * scene + self.stray, 0.0)

    def expose(self, scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Detector read-out of a sampled scene: flat, stray light, dark, shot and read noise.

        Parameters
        ----------
        scene : ndarray
            Output of :meth:`sample`.
        rng : numpy.random.Generator
            Noise source.

        Returns
        -------
        ndarray (tile_shape) of uint16
        """
        p = self.params
        photons = self.expected(scene) / p.gain
        # shot + read noise as one normal law of the same mean and variance ...
        sigma = np.sqrt(p.gain * p.gain * photons + p.read_noise * p.read_noise)
        out = rng.standard_normal(photons.shape)
        out *= sigma
        out += p.gain * photons + p.dark_offset
        # ... and exactly (Poisson + Gaussian) where few photons are expected
        low = photons < EXACT_POISSON_BELOW
        n_low = int(low.sum())
        if n_low:
            out[low] = p.gain * rng.poisson(photons[low]) + p.dark_offset + p.read_noise * rng.standard_normal(n_low)
        return np.clip(np.rint(out), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _truncated_normal(rng: np.random.Generator, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
    out = rng.normal(0.0, sigma, shape)
    bad = np.abs(out) > 3 * sigma
    while bad.any():
        out[bad] = rng.normal(0.0, sigma, int(bad.sum()))
        bad = np.abs(out) > 3 * sigma
    return out
