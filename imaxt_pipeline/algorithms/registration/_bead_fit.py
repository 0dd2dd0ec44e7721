"""Maximum-likelihood profile fit of beads cut by the imaged layer.

Each bead's cutout is fitted with :func:`._bead_model.disc_model` (a soft-edged disc on a flat background)
by Poisson maximum likelihood (:func:`._bead_model.poisson_scoring`), started from the cutout's moments;
standard errors come from the Fisher information, scaled by the Pearson dispersion so that data in arbitrary
units (flat-fielded, gain != 1) still get honest errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi

# disc_model: the 0.1 path ``algorithms.bead_fit`` (:mod:`imaxt_pipeline._compat`) answers with this module
from ._bead_model import disc_model, model_and_jacobian, poisson_scoring  # noqa: F401

__all__ = ["BeadFit", "fit_bead", "fit_beads", "radius_outliers"]

_DISC3 = ndi.generate_binary_structure(2, 1)  # 4-connected steps: grown by ~grow px


@dataclass(frozen=True)
class BeadFit:
    """Result of fitting one bead cutout.

    Attributes
    ----------
    y, x : float
        Centre in the coordinates of the full image the cutout came from.
    radius, width, amplitude, background : float
        Projected radius and edge width (px), disc amplitude and background.
    y_err, x_err, radius_err : float
        One-sigma standard errors (px).
    chi2 : float
        Pearson chi-square per degree of freedom (about 1 for a good fit
        with Poisson counts in photon units; compare beads relative to each
        other otherwise).
    snr : float
        Amplitude over the noise of the background, ``A / sqrt(b)`` scaled
        by the dispersion.
    success : bool
        The optimiser converged to a physical solution inside the cutout.
    """

    y: float
    x: float
    radius: float
    width: float
    amplitude: float
    background: float
    y_err: float
    x_err: float
    radius_err: float
    chi2: float
    snr: float
    success: bool

    def __bool__(self) -> bool:
        return bool(self.success)


def fit_bead(
    cutout: ArrayLike,
    *,
    y0: float,
    x0: float,
    r0: float,
    origin: tuple[float, float] = (0.0, 0.0),
    width0: float = 1.5,
    mask: ArrayLike | None = None,
    max_radius: float | None = None,
    ring: float | None = None,
) -> BeadFit:
    """Fit one bead by Poisson maximum likelihood.

    Parameters
    ----------
    cutout : ndarray (H, W)
        Image region holding the bead and some background around it, in
        counts (background-subtracted data with a few negative values are
        clipped at zero).
    y0, x0, r0 : float
        Starting centre (cutout coordinates) and radius.
    origin : (float, float), optional
        Position of the cutout's pixel (0, 0) in the full image; added to the
        returned centre.
    width0 : float, optional
        Starting edge width in px.
    mask : ndarray of bool, optional
        Pixels to use (e.g. excluding a neighbouring bead); default all.
    max_radius : float, optional
        Upper bound of the radius (default: half the cutout diagonal).
    ring : float, optional
        Use only the pixels within this many px of the starting rim
        (``|rho - r0| <= ring``); default the whole cutout. The centre and
        radius come from the rim, so a start good to a px or two and a ring
        a few edge widths wide give the same fit in a fraction of the time.

    Returns
    -------
    BeadFit
        Falsy when the fit failed.

    Raises
    ------
    ValueError
        If ``cutout`` is not 2-D or has fewer than 16 usable pixels.
    """
    data = np.asarray(cutout, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"cutout must be 2-D, got shape {data.shape}")
    yy, xx = np.indices(data.shape, dtype=np.float64)
    sel = np.ones(data.shape, bool) if mask is None else np.asarray(mask, bool)
    sel &= np.isfinite(data)
    if ring is not None:
        # only the rim locates the disc: the plateau and the far background add nothing but time
        sel &= np.abs(np.hypot(yy - y0, xx - x0) - r0) <= ring
    if sel.sum() < 16:
        raise ValueError(f"cutout has {int(sel.sum())} usable pixels; need at least 16")
    d, yy, xx = np.clip(data[sel], 0.0, None), yy[sel], xx[sel]
    h, w = data.shape
    rmax = float(max_radius) if max_radius is not None else 0.5 * float(np.hypot(h, w))
    inside = np.hypot(yy - y0, xx - x0) < r0
    b0 = float(np.median(d[~inside])) if (~inside).sum() > 8 else float(np.percentile(d, 10))
    a0 = max(float(np.median(d[inside])) - b0 if inside.any() else 1.0, 1e-3)
    start = np.array([y0, x0, r0, width0, a0, max(b0, 1e-3 * a0)])
    lower = np.array([-0.25 * h, -0.25 * w, 0.5, 0.3, 1e-6 * a0, 1e-9 * a0])
    upper = np.array([1.25 * h, 1.25 * w, rmax, max(3.0, 0.3 * r0), np.inf, np.inf])
    p, converged = poisson_scoring(d, yy, xx, np.clip(start, lower, upper), lower, upper)
    m, jac = model_and_jacobian(p, yy, xx)
    m = np.maximum(m, 1e-12)
    dof = max(d.size - 6, 1)
    chi2 = float(np.sum((d - m) ** 2 / m) / dof)
    fisher = (jac / m) @ jac.T
    try:
        cov = np.linalg.inv(fisher) * max(chi2, 1e-12)
        err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:
        err = np.full(6, np.inf)
    snr = float(p[4] / np.sqrt(max(p[5], 1e-12) * max(chi2, 1e-12)))
    ok = converged and bool(np.all(np.isfinite(err)))
    ok = ok and 0 <= p[0] < h and 0 <= p[1] < w and p[2] < 0.999 * rmax and p[4] > 0
    return BeadFit(
        y=float(p[0] + origin[0]),
        x=float(p[1] + origin[1]),
        radius=float(p[2]),
        width=float(p[3]),
        amplitude=float(p[4]),
        background=float(p[5]),
        y_err=float(err[0]),
        x_err=float(err[1]),
        radius_err=float(err[2]),
        chi2=chi2,
        snr=snr,
        success=bool(ok),
    )


def fit_beads(
    image: ArrayLike,
    centres: ArrayLike,
    radii: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    label_factor: int = 1,
    margin: float = 1.25,
    min_margin: int = 8,
    valid: ArrayLike | None = None,
    missing_margin: int | None = None,
    grow: int = 4,
    ring: float | None = None,
) -> list[BeadFit]:
    """Fit every candidate of an image (see :func:`fit_bead`).

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image.
    centres : ndarray (N, 2)
        Starting (y, x) of each candidate.
    radii : ndarray (N,)
        Starting radius of each candidate.
    labels : ndarray (H, W) of int, optional
        Label image of the candidates (label ``i + 1`` for candidate ``i``);
        pixels of other candidates, grown by ``grow`` px to cover their
        blurred rims, are masked out of each cutout.
    label_factor : int, optional
        Image px per ``labels`` px: pixel ``(y, x)`` has label
        ``labels[y // label_factor, x // label_factor]`` (0 past its end).
    margin : float, optional
        Cutout half-size as a multiple of the radius.
    min_margin : int, optional
        Minimum background border around the disc, in px.
    valid : ndarray (H, W) of bool, optional
        Pixels holding data (e.g. ``image != 0`` in a mosaic whose area
        outside the tiles is 0); others are masked out of every cutout.
    missing_margin : int, optional
        Also mask the exact zeros of ``image`` (missing data) and the pixels
        within this many 4-connected steps of one (a resampled data edge is
        partial), found in each cutout only: the same pixels as
        ``~ndimage.binary_erosion(image != 0, iterations=missing_margin, border_value=1)``.
    ring : float, optional
        Fit only the pixels within ``max(ring, 0.1 * radius)`` px of the rim
        (see :func:`fit_bead`), after refining each start from the
        cutout's intensity moments (a coarse detection is good to a few px);
        default the whole cutout from the given start.

    Returns
    -------
    list of BeadFit
        One per candidate, in input order, centres in image coordinates.
    """
    img = np.asarray(image)
    lab_img = None if labels is None else np.asarray(labels)
    valid_img = None if valid is None else np.asarray(valid, bool)
    yx = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    rad = np.asarray(radii, dtype=np.float64).ravel()
    out = []
    for i, ((cy, cx), r) in enumerate(zip(yx, rad, strict=True)):
        band = None if ring is None else max(ring, 0.1 * r)
        pad = min_margin if band is None else max(min_margin, int(np.ceil(band)) + 2)
        half = int(np.ceil(max(r * margin, r + pad))) if band is None else int(np.ceil(r + pad))
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, img.shape[0])
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, img.shape[1])
        cut = img[y0:y1, x0:x1]
        mask = None if valid_img is None else valid_img[y0:y1, x0:x1]
        if missing_margin is not None:
            near = _near_missing(img, (y0, y1, x0, x1), missing_margin)
            if near is not None:
                mask = ~near if mask is None else mask & ~near
        if lab_img is not None:
            # other candidates, grown over their blurred rims, in this cutout only (a whole-image
            # label expansion costs more than all the fits)
            lab = _label_window(lab_img, label_factor, y0, y1, x0, x1)
            other = (lab != 0) & (lab != i + 1)
            if grow > 0 and other.any():
                other = ndi.binary_dilation(other, structure=_DISC3, iterations=grow)
            mask = ~other if mask is None else mask & ~other
        sy, sx, sr = cy - y0, cx - x0, max(r, 1.0)
        if band is not None:
            sy, sx, sr = _moment_start(cut, mask, sy, sx, sr, slack=band)
        try:
            fit = fit_bead(
                cut,
                y0=sy,
                x0=sx,
                r0=sr,
                origin=(y0, x0),
                mask=mask,
                max_radius=2.0 * max(r, 2.0) + min_margin,
                ring=band,
            )
        except ValueError:
            fit = BeadFit(*(np.nan,) * 11, success=False)
        out.append(fit)
    return out


def _near_missing(img: NDArray[Any], box: tuple[int, int, int, int], margin: int) -> NDArray[np.bool_] | None:
    """Pixels of the cutout ``box`` that are missing (0) or within ``margin`` steps of a missing pixel; None if none."""
    y0, y1, x0, x1 = box
    py0, px0 = max(y0 - margin, 0), max(x0 - margin, 0)  # a pixel's neighbours up to margin steps away
    zero = img[py0 : y1 + margin, px0 : x1 + margin] == 0
    if not zero.any():
        return None
    if margin > 0:
        zero = ndi.binary_dilation(zero, structure=_DISC3, iterations=margin)
    out: NDArray[np.bool_] = zero[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
    return out


def _label_window(labels: NDArray[Any], factor: int, y0: int, y1: int, x0: int, x1: int) -> NDArray[Any]:
    """Image-resolution labels of ``[y0:y1, x0:x1]`` from labels at 1/``factor`` resolution (0 past their end)."""
    if factor <= 1:
        return labels[y0:y1, x0:x1]
    ry, rx = np.arange(y0, y1) // factor, np.arange(x0, x1) // factor
    inside = (ry < labels.shape[0])[:, None] & (rx < labels.shape[1])[None, :]
    lab = labels[np.minimum(ry, labels.shape[0] - 1)[:, None], np.minimum(rx, labels.shape[1] - 1)[None, :]]
    out: NDArray[Any] = np.where(inside, lab, 0)
    return out


def _moment_start(
    cut: NDArray[Any], mask: NDArray[np.bool_] | None, cy: float, cx: float, r: float, *, slack: float
) -> tuple[float, float, float]:
    """Centre and radius from the fill fraction of the pixels near a disc (start within ``slack`` px)."""
    data = np.asarray(cut, dtype=np.float64)
    own = np.ones(data.shape, bool) if mask is None else mask
    yy, xx = np.indices(data.shape, dtype=np.float64)
    rho = np.hypot(yy - cy, xx - cx)
    out, inn = own & (rho > r + slack), own & (rho < max(r - slack, 0.5 * r))
    if out.sum() < 8 or inn.sum() < 8:
        return cy, cx, r
    b, top = float(np.median(data[out])), float(np.median(data[inn]))
    if not top > b:
        return cy, cx, r
    near = rho < r + slack
    if not np.all(own[near]):  # a masked neighbour or data edge would bias the moments
        return cy, cx, r
    fill = np.clip((data - b) / (top - b), 0.0, 1.0) * near
    area = float(fill.sum())
    if area < 8:
        return cy, cx, r
    return float((fill * yy).sum() / area), float((fill * xx).sum() / area), float(np.sqrt(area / np.pi))


def radius_outliers(
    radius: ArrayLike, *, nsigma: float = 5.0, rel_floor: float = 0.15, min_count: int = 10
) -> NDArray[np.bool_]:
    """Flag radii beyond ``nsigma`` robust standard deviations of the median.

    The cut radius of a bead varies with the depth of the cut (``sqrt(R**2 - dz**2)``) and beads
    differ in size, so honest radii spread by a good fraction of the radius: the spread used is
    1.4826 x MAD but at least ``rel_floor`` x the median (and 0.5 px), and with fewer than
    ``min_count`` finite radii a MAD says nothing (three cuts at three depths can agree to a px by
    chance), so only non-finite radii are flagged then.

    Parameters
    ----------
    radius : ndarray (N,)
        Fitted radii of the sample's beads.
    nsigma : float, optional
        Rejection threshold.
    rel_floor : float, optional
        Least spread as a fraction of the median radius (the bead size tolerance,
        :attr:`BeadSpec.size_tolerance <imaxt_pipeline.algorithms.registration.BeadSpec>`).
    min_count : int, optional
        Fewest finite radii the test is made on.

    Returns
    -------
    ndarray of bool
        True for outliers (also for non-finite radii).
    """
    r = np.asarray(radius, dtype=np.float64)
    good = np.isfinite(r)
    if good.sum() < max(min_count, 3):
        return ~good
    med = np.median(r[good])
    sigma = max(1.4826 * np.median(np.abs(r[good] - med)), rel_floor * abs(med), 0.5)
    flags: NDArray[np.bool_] = ~good | (np.abs(r - med) > nsigma * sigma)
    return flags
