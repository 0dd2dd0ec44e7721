"""Coarse orientation of a slide against a reference section from heavily down-sampled images.

Method: exhaustive search, over both flips, every rotation (4 degree steps, refined to 1) and a
small scale range around the nominal pixel-size ratio, of the cross-correlation of *foreground
fractions* (the share of each coarse pixel that differs from the background), translation by FFT.

Why this one: the modalities share no intensities (fluorescence vs bright field, contrast even
inverted), only where there is something, the tissue outline and the beads, so both images are
reduced to foreground maps first. Image moments give the orientation of an elongated blob but not
of a round one and cannot tell a flip reliably; Fourier-Mellin phase correlation needs comparable
textures; mutual information on two binary maps is the overlap again at many times the cost. The
search is small (~1000 FFTs of ~100 px images, well under a second) and has no local minima.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import fft
from scipy import ndimage as ndi

from ._affine import compose_affine

__all__ = ["CoarseMatch", "block_mean", "coarse_orientation", "foreground_fraction"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class CoarseMatch:
    """Best coarse hypothesis: ``affine`` (2, 3) maps full-resolution slide (x, y) to reference (x, y).

    ``score`` is the normalised overlap of the foreground maps (1 = identical), ``runner_up`` the
    best score of the other flip (how clearly the flip was decided).
    """

    affine: Array
    flip: bool
    rotation_deg: float
    scale: float
    score: float
    runner_up: float
    reference_index: int = 0
    """Which of several references (:func:`coarse_orientation`) the pose is on."""


def block_mean(image: Array, factor: int) -> Array:
    """Mean over ``factor`` x ``factor`` blocks (edges padded by reflection)."""
    img = np.asarray(image, np.float64)
    if factor <= 1:
        return img.copy()
    h, w = img.shape
    ph, pw = -h % factor, -w % factor
    img = np.pad(img, ((0, ph), (0, pw)), mode="reflect") if ph or pw else img
    out: Array = img.reshape(img.shape[0] // factor, factor, img.shape[1] // factor, factor).mean(axis=(1, 3))
    return out


def foreground_fraction(image: Array, factor: int) -> Array:
    """Share of each ``factor`` x ``factor`` block that is foreground (Otsu on the log distance to the background).

    The background level is the median of the image border (agarose or bare glass), so bright-on-dark
    and dark-on-bright images give the same map.
    """
    # smooth over ~ a quarter block: texture inside the tissue (nuclei) must not split it
    img = ndi.gaussian_filter(np.asarray(image, np.float64), max(1.0, factor / 4.0))
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    dist = np.abs(img - float(np.median(border)))
    # Otsu on a log scale: beads far brighter than the tissue (fluorescent beads in STPT) must not take the
    # threshold for themselves and leave the tissue as background
    scale = float(np.median(dist)) + 1e-12
    fg = dist > scale * np.expm1(_otsu(np.log1p(dist / scale)))
    return block_mean(fg.astype(np.float64), factor)


def _otsu(values: Array, bins: int = 256) -> float:
    v = values.ravel()
    hist, edges = np.histogram(v, bins=bins)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    mids = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * mids)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = 0.0
    return float(mids[int(np.argmax(between))])


def _coarse_to_full(factor: float) -> Array:
    """Affine from coarse (x, y) to full-resolution (x, y): block centres."""
    return np.array([[factor, 0.0, 0.5 * (factor - 1)], [0.0, factor, 0.5 * (factor - 1)]])


def _rotation(flip: bool, angle_deg: float, scale: float) -> Array:
    t = np.radians(angle_deg)
    m = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return m @ np.diag([-1.0, 1.0]) if flip else m


def _warp(moving: Array, m: Array, shape: tuple[int, int]) -> tuple[Array, Array, float]:
    """Warp ``moving`` by the linear map ``m`` (about the canvas origin) onto a canvas; its spectrum, offset, norm."""
    h, w = moving.shape
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64) @ m.T
    lo = np.floor(corners.min(axis=0))
    out_w, out_h = (np.ceil(corners.max(axis=0)) - lo + 1).astype(int)
    inv = np.linalg.inv(m)
    # ndimage works in (row, col): output (r, c) samples input at inv @ ((c, r) + lo), swapped to (y, x)
    mat_yx = inv[::-1, ::-1]
    off_xy = inv @ lo
    warped = ndi.affine_transform(moving, mat_yx, offset=off_xy[::-1], output_shape=(out_h, out_w), order=1)
    return fft.rfft2(warped, s=shape), lo, float(np.sqrt(np.sum(warped**2)))


def _score(
    warped: tuple[Array, Array, float],
    ref_spec: Array,
    ref_norm: float,
    ref_shape: tuple[int, int],
    shape: tuple[int, int],
    m: Array,
) -> tuple[float, Array]:
    """Correlate a warped slide (:func:`_warp`) with one reference (its spectrum on the canvas ``shape``).

    Returns the normalised peak and the (2, 3) affine moving-coarse (x, y) -> reference-coarse (x, y).
    """
    spec, lo, w_norm = warped
    corr = fft.irfft2(ref_spec * np.conj(spec), s=shape)
    k = int(np.argmax(corr))
    dy, dx = divmod(k, shape[1])
    # shifts run from -(out - 1) to ref - 1; the FFT canvas holds both without aliasing
    dy = dy - shape[0] if dy >= ref_shape[0] else dy
    dx = dx - shape[1] if dx >= ref_shape[1] else dx
    norm = w_norm * ref_norm
    peak = float(corr.ravel()[k]) / norm if norm > 0 else 0.0
    # canvas pixel (x, y) = m @ p - lo; reference pixel = canvas pixel + (dx, dy)
    affine = np.hstack([m, (np.array([dx, dy], np.float64) - lo)[:, None]])
    return peak, affine


def coarse_orientation(
    slide: Array,
    slide_factor: int,
    reference: Array | Sequence[Array],
    reference_factor: int,
    *,
    nominal_scale: float,
    scale_range: float = 0.08,
    angle_step_deg: float = 4.0,
    flips: tuple[bool, ...] = (False, True),
    max_rotation_deg: float = 180.0,
) -> list[CoarseMatch]:
    """Search flips, rotations and scales for the slide's pose on a reference section (or the best of several).

    Parameters
    ----------
    slide : ndarray (H, W)
        Full-resolution image (any contrast).
    reference : ndarray (H, W) or sequence of them
        Reference section(s), all of one shape: each warped slide is correlated with every one
        (the warp and its FFT, most of the cost, are shared), the best one's pose refined.
    slide_factor, reference_factor : int
        Down-sampling of each to a common coarse pixel (the same physical size).
    nominal_scale : float
        Expected slide-px -> reference-px scale (slide pixel size / reference pixel size).
    scale_range : float
        Relative scale range searched (three scales: -range, 0, +range; the bead fit refines it).
    angle_step_deg : float
        Step of the full-turn sweep (refined to 1 degree around the best).
    flips : tuple of bool
        Flips tried (``(False,)`` for an acquisition of the same slide, e.g. IMC on an Axioscan slide).
    max_rotation_deg : float
        Rotations searched: -max..+max (180: the full turn).

    Returns
    -------
    list of CoarseMatch
        The best pose of each flip, best first (the bead matches decide a close call), each with the
        index of the reference it is on.
    """
    refs_in = [reference] if isinstance(reference, np.ndarray) and reference.ndim == 2 else list(reference)
    refs = [foreground_fraction(r, reference_factor) for r in refs_in]
    if len({r.shape for r in refs}) != 1:
        raise ValueError(f"references of different shapes: {sorted({r.shape for r in refs})}")
    mov = foreground_fraction(slide, slide_factor)
    coarse_scale = nominal_scale * slide_factor / reference_factor
    diag = int(np.ceil(float(np.hypot(mov.shape[0], mov.shape[1])) * coarse_scale * (1 + scale_range)))
    ref_shape = (int(refs[0].shape[0]), int(refs[0].shape[1]))
    shape = (fft.next_fast_len(ref_shape[0] + diag), fft.next_fast_len(ref_shape[1] + diag))
    specs = [fft.rfft2(r, s=shape) for r in refs]
    norms = [float(np.sqrt(np.sum(r**2))) for r in refs]
    best: dict[bool, tuple[float, Array, float, float, int]] = {}
    step = min(angle_step_deg, max(max_rotation_deg / 4.0, 0.5))
    sweep = (
        np.arange(-180.0, 180.0, step)
        if max_rotation_deg >= 180
        else np.arange(-max_rotation_deg, max_rotation_deg + 1e-9, step)
    )
    for flip in flips:
        top = (-np.inf, np.zeros((2, 3)), 0.0, coarse_scale, 0)
        for a in sweep:
            m = _rotation(flip, a, coarse_scale)
            warped = _warp(mov, m, shape)
            for i, (spec, norm) in enumerate(zip(specs, norms, strict=True)):
                sc, aff = _score(warped, spec, norm, ref_shape, shape, m)
                if sc > top[0]:
                    top = (sc, aff, a, coarse_scale, i)
        # refine angle (1 degree) and scale around the best step, on the best reference
        a0, i = top[2], top[4]
        for s in coarse_scale * np.array([1 - scale_range, 1.0, 1 + scale_range]):
            for a in a0 + np.arange(-step, step + 1e-9, min(1.0, step / 2)):
                m = _rotation(flip, a, s)
                sc, aff = _score(_warp(mov, m, shape), specs[i], norms[i], ref_shape, shape, m)
                if sc > top[0]:
                    top = (sc, aff, a, s, i)
        best[flip] = top
    alternatives = []
    from_full = np.array([[1 / slide_factor, 0, -0.5 * (slide_factor - 1) / slide_factor],
                          [0, 1 / slide_factor, -0.5 * (slide_factor - 1) / slide_factor]])  # fmt: skip
    for flip in sorted(best, key=lambda f: -best[f][0]):
        score, aff_c, angle, s, i = best[flip]
        affine = compose_affine(compose_affine(_coarse_to_full(reference_factor), aff_c), from_full)
        alternatives.append(
            CoarseMatch(
                affine=affine,
                flip=bool(flip),
                rotation_deg=float((angle + 180.0) % 360.0 - 180.0),
                scale=float(s * reference_factor / slide_factor),
                score=float(score),
                runner_up=float(best[not flip][0]) if (not flip) in best else 0.0,
                reference_index=int(i),
            )
        )
    return alternatives
