"""QC figure of a slide registered onto the STPT cube: N(z) with its fit, beads over the section, residual CDF."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..algorithms.federation import gaussian_profile

__all__ = ["federation_figure"]


def federation_figure(
    counts: np.ndarray,
    fit: tuple[float, float, float, float] | None,
    section: int | None,
    section_image: np.ndarray | None,
    reference_xy: np.ndarray,
    mapped_xy: np.ndarray,
    residual_px: np.ndarray,
    *,
    title: str = "",
    image_scale: float = 1.0,
) -> Figure:
    """Three panels: bead matches N(z) per reference section with the Gaussian fit; the slide's beads
    mapped into the cube (crosses) over the section and its beads (circles); the CDF of held-out residuals.

    ``fit`` is ``(amplitude, mu, sigma, background)`` or ``None``; ``section_image`` a plane of the section,
    down-sampled by ``image_scale`` (cube level-0 px per image px): the axes stay in level-0 cube px, the
    frame the points are given in.
    """
    fig = Figure(figsize=(13, 4.2))
    a, b, c = fig.subplots(1, 3)
    z = np.arange(len(counts))
    a.bar(z, counts, color="0.6", label="matched beads")
    if fit is not None and np.all(np.isfinite(fit)):
        zz = np.linspace(-0.5, len(counts) - 0.5, 200)
        a.plot(zz, gaussian_profile(zz, fit[0], fit[1], fit[2], fit[3]), "C3", label=f"Gaussian, mu = {fit[1]:.2f}")
    if section is not None:
        a.axvline(section, color="C0", ls="--", label=f"section {section}")
    a.set(xlabel="reference section z", ylabel="N(z)", title="slice identification")
    a.legend(fontsize=8)
    if section_image is not None:
        h, w = section_image.shape
        lo, hi = np.percentile(section_image, [1, 99.5])
        f = float(image_scale)
        extent = (-0.5 * f, (w - 0.5) * f, (h - 0.5) * f, -0.5 * f)
        b.imshow(section_image, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    b.scatter(reference_xy[:, 0], reference_xy[:, 1], s=30, facecolors="none", edgecolors="C1", label="STPT beads")
    b.scatter(mapped_xy[:, 0], mapped_xy[:, 1], s=14, marker="x", color="C2", label="slide beads, mapped")
    b.set(title="beads over the section (cube level-0 px)", xlabel="x", ylabel="y")
    b.legend(fontsize=8, loc="lower right")
    r = np.sort(np.asarray(residual_px, np.float64)[np.isfinite(residual_px)])
    if len(r):
        c.step(r, np.arange(1, len(r) + 1) / len(r), where="post")
        c.axvline(float(np.median(r)), color="C3", ls=":", label=f"median {np.median(r):.2f} px")
        c.legend(fontsize=8)
    c.set(xlabel="held-out residual (cube px)", ylabel="fraction of beads", title="residual CDF", ylim=(0, 1.02))
    if title:
        fig.suptitle(title)
    return fig
