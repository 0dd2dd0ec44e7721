"""Maximum-likelihood profile fit of beads cut by the imaged layer.

A fluorescent sphere of radius ``R`` cut by a thin imaged layer at height
``dz`` from its centre shows as a disc of radius ``sqrt(R**2 - dz**2)``; the
optics blur its edge. The model of one cutout is

.. math::

    m(y, x) = b + A \\, \\tfrac12 \\operatorname{erfc}\\!\\left(
        \\frac{\\rho - r}{\\sqrt 2\\, w}\\right),\\qquad
    \\rho = \\sqrt{(y - y_c)^2 + (x - x_c)^2}

with background ``b``, amplitude ``A``, projected radius ``r`` and edge
width ``w``. The six parameters are found by minimising the Poisson negative
log-likelihood with an analytic gradient (L-BFGS-B); standard errors come
from the Fisher information, scaled by the Pearson dispersion so that data
in arbitrary units (flat-fielded, gain != 1) still get honest errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from scipy.special import erfc

__all__ = ["BeadFit", "disc_model", "fit_bead", "fit_beads", "radius_outliers"]

_SQRT2 = np.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
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


def disc_model(params: ArrayLike, yy: NDArray[Any], xx: NDArray[Any]) -> NDArray[np.floating[Any]]:
    """Soft-edged disc on a flat background (see module docstring).

    Parameters
    ----------
    params : array-like of 6 floats
        ``(y, x, radius, width, amplitude, background)``.
    yy, xx : ndarray
        Pixel coordinates (broadcastable).

    Returns
    -------
    ndarray
        Expected counts per pixel.
    """
    yc, xc, r, w, a, b = (float(p) for p in np.asarray(params).ravel())
    rho = np.hypot(yy - yc, xx - xc)
    out: NDArray[np.floating[Any]] = b + a * 0.5 * erfc((rho - r) / (_SQRT2 * w))
    return out


def _model_and_jacobian(
    p: NDArray[np.float64], yy: NDArray[np.float64], xx: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    yc, xc, r, w, a, b = p
    dy, dx = yy - yc, xx - xc
    rho = np.maximum(np.hypot(dy, dx), 1e-9)
    u = (rho - r) / w
    s = 0.5 * erfc(u / _SQRT2)
    phi = _INV_SQRT_2PI * np.exp(-0.5 * u * u) / w  # -dS/drho
    model = b + a * s
    jac = np.empty((6, rho.size))
    jac[0] = a * phi * dy / rho  # dm/dyc = a * (-phi) * (-(dy)/rho)
    jac[1] = a * phi * dx / rho
    jac[2] = a * phi
    jac[3] = a * phi * u
    jac[4] = s
    jac[5] = 1.0
    return model, jac


def _poisson_scoring(
    d: NDArray[np.float64],
    yy: NDArray[np.float64],
    xx: NDArray[np.float64],
    start: NDArray[np.float64],
    lower: NDArray[np.float64],
    upper: NDArray[np.float64],
    *,
    max_iter: int = 100,
) -> tuple[NDArray[np.float64], bool]:
    """Poisson maximum likelihood by damped Fisher scoring (Levenberg-Marquardt on the Fisher matrix).

    Each step solves ``(F + lam diag F) dp = J (d / m - 1)`` with ``F = J diag(1/m) J^T``,
    accepted when the negative log-likelihood drops (then ``lam`` shrinks), refused otherwise
    (``lam`` grows); parameters stay inside ``[lower, upper]``. A handful of steps suffice from a
    start within a px of the rim, where quasi-Newton needed hundreds of function evaluations.
    """

    def nll(m: NDArray[np.float64]) -> float:
        return float(np.sum(m - d * np.log(m)))

    p = start.copy()
    m, jac = _model_and_jacobian(p, yy, xx)
    m = np.maximum(m, 1e-12)
    cost, lam = nll(m), 1e-3
    for _ in range(max_iter):
        grad = jac @ (d / m - 1.0)
        fisher = (jac / m) @ jac.T
        diag = np.maximum(np.diag(fisher), 1e-300)
        try:
            step = np.linalg.solve(fisher + lam * np.diag(diag), grad)
        except np.linalg.LinAlgError:
            return p, False
        trial = np.clip(p + step, lower, upper)
        m_t, jac_t = _model_and_jacobian(trial, yy, xx)
        m_t = np.maximum(m_t, 1e-12)
        cost_t = nll(m_t)
        if np.isfinite(cost_t) and cost_t <= cost:
            moved = np.abs(trial - p)
            p, m, jac, cost, lam = trial, m_t, jac_t, cost_t, max(lam * 0.2, 1e-9)
            if np.all(moved[:4] < 1e-5) and np.all(moved[4:] <= 1e-7 * np.maximum(np.abs(p[4:]), 1e-12)):
                return p, True
        else:
            lam *= 10.0
            if lam > 1e8:  # no downhill step left: at the optimum to numerical precision
                return p, bool(np.isfinite(cost))
    return p, False


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
    p, converged = _poisson_scoring(d, yy, xx, np.clip(start, lower, upper), lower, upper)
    m, jac = _model_and_jacobian(p, yy, xx)
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
