"""Which reference section a slide is: a Gaussian fitted to the bead-match counts N(z).

A bead is cut by several sections, so a slide matches its own section best and its neighbours
less; N(z) is a peak over background. The peak's centre (a Poisson maximum-likelihood fit of
``b + A exp(-(z - mu)^2 / 2 s^2)``: a grid over (mu, s), the linear A, b solved exactly by EM)
gives the section, the likelihood ratio against a flat N(z) (Wilks: chi-square with 3 degrees
of freedom) its significance. A slide cut outside the imaged stack (above the first section)
shares only some beads with the end section: the chosen section must also show most of the
reference beads that section holds inside the slide's field (recall), which a neighbour or an
orphan does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = ["SectionFit", "gaussian_profile", "identify_section"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class SectionFit:
    """Result of :func:`identify_section`; ``section`` is ``None`` when there is no partner (``reason`` says why)."""

    section: int | None
    mu: float
    sigma: float
    amplitude: float
    background: float
    p_value: float
    reason: str


def gaussian_profile(z: Array, amplitude: float, mu: float, sigma: float, background: float) -> Array:
    out: Array = background + amplitude * np.exp(-0.5 * ((np.asarray(z, np.float64) - mu) / sigma) ** 2)
    return out


def _deviance(n: Array, m: Array) -> float:
    m = np.maximum(m, 1e-9)
    term = np.where(n > 0, n * np.log(np.maximum(n, 1e-300) / m), 0.0)
    return float(2.0 * np.sum(term - (n - m)))


def _ml_linear(n: Array, g: Array, iters: int = 60) -> tuple[Array, Array, Array]:
    """Poisson maximum likelihood of ``b + A g`` (A, b >= 0) for every row of ``g`` (EM updates)."""
    s = n.size
    total = max(float(n.sum()), 1e-9)
    amp = np.full(len(g), 0.5 * total / np.maximum(g.sum(axis=1), 1e-9))
    bg = np.full(len(g), 0.5 * total / s)
    gs = g.sum(axis=1)
    for _ in range(iters):
        ratio = n / np.maximum(bg[:, None] + amp[:, None] * g, 1e-12)
        amp = amp * (ratio * g).sum(axis=1) / np.maximum(gs, 1e-12)
        bg = bg * ratio.sum(axis=1) / s
    m = bg[:, None] + amp[:, None] * g
    term = np.where(n > 0, n * np.log(np.maximum(n, 1e-300) / np.maximum(m, 1e-12)), 0.0)
    return 2.0 * np.sum(term - (n - m), axis=1), amp, bg


def _fit_profile(n: Array, z: Array, min_sigma: float) -> tuple[float, float, float, float, float]:
    """Grid search of (mu, sigma) with the linear parameters solved exactly, then a finer grid around the best."""
    lo, hi = -3.0, len(n) + 2.0
    sig_grid = min_sigma * np.geomspace(1.0, max(2.0, len(n) / (2 * min_sigma)), 12)
    # half-section steps first (a peak is at least a section wide), then 0.02 around the best
    mu_grid = np.arange(lo, hi + 1e-9, 0.5)
    for _ in range(2):
        mm, ss = (a.ravel() for a in np.meshgrid(mu_grid, sig_grid, indexing="ij"))
        g = np.exp(-0.5 * ((z[None, :] - mm[:, None]) / ss[:, None]) ** 2)
        dev, amp, bg = _ml_linear(n, g)
        i = int(np.argmin(dev))
        mu_grid = np.clip(mm[i] + np.arange(-0.5, 0.5001, 0.02), lo, hi)
        sig_grid = np.clip(ss[i] * np.geomspace(0.8, 1.25, 9), min_sigma, None)
    return float(dev[i]), float(amp[i]), float(mm[i]), float(ss[i]), float(bg[i])


def identify_section(
    counts: Array,
    expected: Array | None = None,
    *,
    min_matches: int = 6,
    min_recall: float = 0.5,
    alpha: float = 1e-3,
    min_sigma: float = 0.5,
) -> SectionFit:
    """Fit N(z) and decide the partner section.

    Parameters
    ----------
    counts : ndarray (S,)
        Bead matches of the slide against reference section ``z = 0 .. S-1``.
    expected : ndarray (S,), optional
        Reference beads of each section inside the slide's field: every bead the STPT plane of
        section k cuts lies in physical section k, so its slide must show most of them (recall);
        a neighbour, or an orphan next to the end section, shares only some.
    min_matches : int
        The chosen section must match at least this many beads.
    min_recall : float
        ... and at least this share of ``expected``.
    alpha : float
        Largest p-value (flat N(z)) accepted as a peak.
    min_sigma : float
        Narrowest peak fitted, in sections (a bead spans at least its own).
    """
    n = np.asarray(counts, np.float64)
    z = np.arange(len(n), dtype=np.float64)
    if len(n) == 0 or n.max() < min_matches:
        top = int(n.max(initial=0))
        return SectionFit(None, np.nan, np.nan, 0.0, 0.0, 1.0, f"at most {top} beads match any section")
    flat = _deviance(n, np.full_like(n, n.mean()))
    dev, amp, mu, sig, bg = _fit_profile(n, z, min_sigma)
    pval = float(stats.chi2.sf(max(flat - dev, 0.0), 3)) if len(n) > 3 else 0.0
    # a peak beyond an end of the stack: the end section, if the recall test below accepts it
    section = int(np.clip(np.rint(mu), 0, len(n) - 1))
    fit = (mu, sig, amp, bg, pval)
    if pval > alpha:
        return SectionFit(None, *fit, f"no significant N(z) peak (p = {pval:.2g})")
    if n[section] < min_matches:
        return SectionFit(None, *fit, f"only {int(n[section])} beads match section {section}")
    if expected is not None:
        want = float(np.asarray(expected, np.float64)[section])
        if want > 0 and n[section] < min_recall * want:
            where = "" if -0.5 <= mu <= len(n) - 0.5 else f", the N(z) peak lies outside the stack (z = {mu:.1f})"
            return SectionFit(
                None, *fit, f"section {section} shows {int(want)} beads here, the slide only {int(n[section])}{where}"
            )
    return SectionFit(section, *fit, "")
