"""The 3-D specimen: agarose block, an irregular tissue blob, nuclei and beads.

Frames
------
*World* coordinates are slice 0's mosaic pixels (y, x) plus depth ``z`` in µm
below the top of the block. The content of slice ``k`` is the world displaced
by the slice drift ``offsets[k] = (dy, dx)``: world point (y, x) appears at
(y + dy, x + dx) in slice ``k``'s mosaic frame (``offsets[0] == (0, 0)``).

Slice ``k`` images one thin optical plane at depth ``z_k = (k + 0.5) *
slice_thickness_um``. A bead (sphere of radius ``R`` centred at ``z_c``) cut by
that plane is a uniformly bright disc of radius ``sqrt(R**2 - (z_k - z_c)**2)``
(rendered when at least 1 px). The tissue outline evolves slowly with depth;
its texture and nuclei are drawn independently for every slice (15 µm apart,
a nucleus is rarely cut twice and the 8 µm texture is not shared), nuclei as
non-overlapping ellipses inside the tissue: only the beads persist from one
section to the next, so registration cannot rest on tissue texture.

Rendered planes carry a 1 px soft edge on every object and are blurred by a
Gaussian PSF, so that they are smooth enough for sub-pixel resampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import fft
from scipy import ndimage as ndi

from ._objects import place_beads, place_nuclei, render_nuclei

if TYPE_CHECKING:
    from ._params import SynthParams

__all__ = ["Scene", "SlicePlane"]

AGAROSE = 50.0
_COARSE = 8  # down-sampling of the smooth outline fields used for placement


@dataclass(frozen=True)
class SlicePlane:
    """One rendered slice in its mosaic frame.

    Attributes
    ----------
    planes : ndarray (C, H + 2 pad, W + 2 pad) of float64
        Noise-free, undistorted, flat-free signal in counts; mosaic pixel
        (y, x) is at index (y + pad, x + pad).
    labels : ndarray (H, W) of int32
        Nucleus labels (0 background).
    tissue : ndarray (H, W) of bool
        Tissue mask.
    detections : DataFrame
        ``slice, bead_id, y_px, x_px, radius_px`` of the bead discs.
    """

    planes: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    detections: pd.DataFrame


class Scene:
    """Random specimen fixed at construction; :meth:`render` draws one slice.

    Parameters
    ----------
    params : SynthParams
        Sample parameters.
    rng : numpy.random.Generator
        Source of the specimen's randomness (outline, textures, drift, beads).
    pad : int
        Extra pixels rendered around the mosaic frame on every side.
    """

    def __init__(self, params: SynthParams, rng: np.random.Generator, *, pad: int) -> None:
        self.params, self.pad = params, pad
        h, w = params.mosaic_shape
        self.shape = (h, w)
        self.padded = (h + 2 * pad, w + 2 * pad)
        self.fft_shape = tuple(fft.next_fast_len(-(-n // _COARSE)) * _COARSE for n in self.padded)
        self.offsets = _drift(params, rng)
        px = params.pixel_size_um
        corr = 0.1 * min(h, w)
        self._outline = [_spectrum(rng, self.fft_shape, corr) for _ in range(2)]
        _spectrum(rng, self.fft_shape, 8.0 / px)  # was a texture shared by all sections; drawn to keep seeds' beads
        self._x_empty = w * (1.0 - params.empty_fraction)
        # the blob envelope: centred in the non-empty part of the frame
        self._centre = (h / 2.0, self._x_empty / 2.0)
        self._half_axes = (0.5 * h, 0.5 * self._x_empty)
        self._threshold, self._ramp, union = self._calibrate_outline()
        self.beads = place_beads(params, union, _COARSE, pad, self._x_empty, rng)

    # -- depth-dependent outline ------------------------------------------------

    def _mix(self, k: int) -> tuple[float, float]:
        theta = 0.15 * k
        return float(np.cos(theta)), float(np.sin(theta))

    def _outline_coarse(self, k: int) -> np.ndarray:
        """Outline field of slice ``k`` in the world frame on the coarse grid (no drift)."""
        c, s = self._mix(k)
        spec = c * self._outline[0] + s * self._outline[1]
        noise = _irfft_coarse(spec, self.fft_shape, _COARSE)
        step = _COARSE
        yy = np.arange(noise.shape[0]) * step - self.pad
        xx = np.arange(noise.shape[1]) * step - self.pad
        return self._envelope(yy, xx, 0.0, 0.0) + 0.2 * noise

    def _envelope(self, yy: np.ndarray, xx: np.ndarray, dy: float, dx: float) -> np.ndarray:
        """Cone ``-rho`` (rho = 1 on the ellipse inscribed in the non-empty field) centred on the blob."""
        (cy, cx), (sy, sx) = self._centre, self._half_axes
        env = -np.hypot(((yy - cy - dy) / sy)[:, None], ((xx - cx - dx) / sx)[None, :])
        if self.params.empty_fraction > 0:
            env -= 10.0 * np.clip((xx - dx - self._x_empty + 8.0) / 4.0, 0, 1)[None, :]
        return env

    def _calibrate_outline(self) -> tuple[np.ndarray, float, np.ndarray]:
        """Per-slice thresholds giving the tissue fraction, edge ramp width, union of outlines."""
        h = self.shape[0]
        fields = [self._outline_coarse(k) for k in range(self.params.slices)]
        ys = np.arange(fields[0].shape[0]) * _COARSE - self.pad
        xs = np.arange(fields[0].shape[1]) * _COARSE - self.pad
        inside = np.outer((ys >= 0) & (ys < h), (xs >= 0) & (xs < self._x_empty))
        q = 1.0 - self.params.tissue_fraction
        thr = np.array([np.quantile(f[inside], q) for f in fields])
        gy, gx = np.gradient(fields[0], _COARSE)
        edge = np.abs(fields[0] - thr[0]) < 0.05
        slope = float(np.median(np.hypot(gy, gx)[edge])) if edge.any() else 1e-3
        union = np.any([f > t for f, t in zip(fields, thr, strict=True)], axis=0)
        return thr, 1.5 * slope, union

    # -- rendering --------------------------------------------------------------

    def render(self, k: int, rng: np.random.Generator, *, first_label: int = 1) -> SlicePlane:
        """Render slice ``k``; nucleus labels start at ``first_label``.

        Parameters
        ----------
        k : int
            Slice index.
        rng : numpy.random.Generator
            Randomness of this slice only (nuclei, fine texture).
        first_label : int
            Label id of the first nucleus of this slice.

        Returns
        -------
        SlicePlane
        """
        p, pad = self.params, self.pad
        (h, w), (hp, wp) = self.shape, self.padded
        dy, dx = self.offsets[k]
        c, s = self._mix(k)
        shift = _shift_phase(self.fft_shape, dy, dx)
        noise = _irfft(shift * (c * self._outline[0] + s * self._outline[1]), self.fft_shape, self.padded)
        yy = np.arange(hp, dtype=np.float64) - pad
        xx = np.arange(wp, dtype=np.float64) - pad
        field = self._envelope(yy, xx, dy, dx) + 0.2 * noise
        wt = np.clip((field - self._threshold[k]) / self._ramp + 0.5, 0.0, 1.0)
        tex_hi = _irfft(_spectrum(rng, self.fft_shape, 1.5 / p.pixel_size_um), self.fft_shape, self.padded)
        agarose = AGAROSE * (1.0 + 0.04 * noise)
        tissue = wt[pad : pad + h, pad : pad + w] >= 0.5

        centres, axes, angles, bright = place_nuclei(p, tissue, rng)
        # the 8 µm texture is this section's own (drawn after the nuclei, so that a seed's nuclei are those
        # it always had): sections 15 µm apart share no texture, only the slowly changing outline and the beads
        tex_lo = _irfft(_spectrum(rng, self.fft_shape, 8.0 / p.pixel_size_um), self.fft_shape, self.padded)
        cyto = 550.0 + 220.0 * np.tanh(0.5 * (0.8 * tex_lo + 0.6 * tex_hi))
        nuclear = 130.0 + 25.0 * tex_lo + 10.0 * tex_hi
        cover, signal, labels = render_nuclei(
            self.padded, pad, self.shape, centres, axes, angles, bright, first_label=first_label
        )
        planes = np.empty((len(p.channels), hp, wp))
        for ch in range(len(p.channels)):
            base = (nuclear if ch == 0 else cyto * (1.0 - 0.15 * (ch - 1))) * wt + agarose * (1.0 - wt)
            if ch == 0:
                base = base * (1.0 - cover) + signal * (0.92 + 0.08 * np.tanh(tex_hi))
            else:
                base = base + 0.1 * signal
            planes[ch] = base
        detections = self._draw_beads(planes, k)
        if p.psf_sigma_px > 0:
            for ch in range(planes.shape[0]):
                planes[ch] = ndi.gaussian_filter(planes[ch], p.psf_sigma_px, mode="nearest")
        return SlicePlane(planes=planes, labels=labels, tissue=tissue, detections=detections)

    def _draw_beads(self, planes: np.ndarray, k: int) -> pd.DataFrame:
        rows = []
        for row, (y0, y1, x0, x1), wb in self._bead_discs(k):
            view = planes[:, y0:y1, x0:x1]
            view *= 1.0 - wb
            view += self.params.bead_intensity * wb
            rows.append(row)
        return pd.DataFrame(rows, columns=["slice", "bead_id", "y_px", "x_px", "radius_px"])

    def bead_cover(self, k: int) -> np.ndarray:
        """Fractional cover of the padded plane of slice ``k`` by bead discs (before the PSF).

        A slice rendered with ``bead_intensity=0`` plus ``I * cover`` (both blurred
        alike) is the slice with beads of brightness ``I`` (see :meth:`render`).
        """
        cover = np.zeros(self.padded)
        for _row, (y0, y1, x0, x1), wb in self._bead_discs(k):
            cover[y0:y1, x0:x1] += wb
        return np.minimum(cover, 1.0)

    def _bead_discs(self, k: int) -> Iterator[tuple[tuple[int, int, float, float, float], tuple[int, ...], np.ndarray]]:
        """Truth row, padded-plane box and 1 px soft-edged cover of every bead disc cut by slice ``k``."""
        p, pad = self.params, self.pad
        dy, dx = self.offsets[k]
        z_k = (k + 0.5) * p.slice_thickness_um
        hp, wp = self.padded
        for bead in self.beads.itertuples(index=False):
            dz = z_k - bead.z_um
            if abs(dz) >= bead.radius_um:
                continue
            r = np.sqrt(bead.radius_um**2 - dz**2) / p.pixel_size_um
            if r < 1.0:
                continue
            cy, cx = bead.y_px + dy, bead.x_px + dx
            y0, x0 = int(np.floor(cy - r - 2)) + pad, int(np.floor(cx - r - 2)) + pad
            y1, x1 = int(np.ceil(cy + r + 2)) + pad + 1, int(np.ceil(cx + r + 2)) + pad + 1
            y0, x0 = max(y0, 0), max(x0, 0)
            y1, x1 = min(y1, hp), min(x1, wp)
            if y1 <= y0 or x1 <= x0:
                continue
            gy, gx = np.ogrid[y0 - pad : y1 - pad, x0 - pad : x1 - pad]
            wb = np.clip(r - np.hypot(gy - cy, gx - cx) + 0.5, 0.0, 1.0)
            yield (k, int(bead.bead_id), float(cy), float(cx), float(r)), (y0, y1, x0, x1), wb


def _drift(params: SynthParams, rng: np.random.Generator) -> np.ndarray:
    steps = rng.normal(0.0, params.drift_walk_px, (params.slices, 2)) + np.asarray(params.drift_px_per_slice)
    steps[0] = 0.0
    return np.cumsum(steps, axis=0)


def _spectrum(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """rfft2 of white noise smoothed by a Gaussian of ``sigma`` px, scaled to unit std in space."""
    fy, fx = _freqs(shape)
    k = -2.0 * np.pi**2 * sigma**2
    gain = np.outer(np.exp(k * fy**2), np.exp(k * fx**2))
    half = (shape[0], shape[1] // 2 + 1)
    noise = rng.standard_normal((2, *half), dtype=np.float32)
    spec = (noise[0] + 1j * noise[1]) * gain
    spec[0, 0] = 0.0
    mod2 = spec.real**2 + spec.imag**2
    power = 2.0 * float(mod2.sum()) - float(mod2[:, 0].sum())
    return spec * (shape[0] * shape[1] / np.sqrt(power))


def _freqs(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return fft.fftfreq(shape[0]), fft.rfftfreq(shape[1])


def _shift_phase(shape: tuple[int, int], dy: float, dx: float) -> np.ndarray:
    """Fourier factor that moves content by (+dy, +dx)."""
    fy, fx = _freqs(shape)
    return np.outer(np.exp(-2j * np.pi * fy * dy), np.exp(-2j * np.pi * fx * dx))


def _irfft(spec: np.ndarray, shape: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    return fft.irfft2(spec, s=shape)[: out[0], : out[1]]


def _irfft_coarse(spec: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """The field of ``spec`` sampled every ``factor`` px (exact for a band-limited field)."""
    hc, wc = shape[0] // factor, shape[1] // factor
    small = np.concatenate([spec[: hc // 2, : wc // 2 + 1], spec[-(hc - hc // 2) :, : wc // 2 + 1]])
    return fft.irfft2(small, s=(hc, wc)) * (hc * wc) / (shape[0] * shape[1])
