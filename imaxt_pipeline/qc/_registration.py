"""QC of slice registration: offsets with their errors, bead radii."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def register_figure(offsets: np.ndarray, errors: np.ndarray, radii: np.ndarray) -> Figure:
    """Dx, Dy vs slice with 1-sigma bands, and the histogram of bead radii.

    Parameters
    ----------
    offsets, errors : ndarray (S, 2)
        ``[dy, dx]`` per slice and their 1-sigma errors (NaN: unknown, drawn as 0).
    radii : ndarray (n,)
        Fitted bead radii (px); non-finite values are left out.
    """
    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, 3)
    s = np.arange(len(offsets))
    for ax, k, name in ((axes[0], 1, "Dx"), (axes[1], 0, "Dy")):
        e = np.nan_to_num(errors[:, k], nan=0.0)
        ax.fill_between(s, offsets[:, k] - e, offsets[:, k] + e, color="C0", alpha=0.3, label="1σ")
        ax.plot(s, offsets[:, k], "o-", color="C0", ms=3)
        ax.set_xlabel("slice")
        ax.set_ylabel(f"{name} (px)")
        ax.legend(loc="best", fontsize=8)
    axes[2].hist(radii[np.isfinite(radii)], bins=30, color="C1")
    axes[2].set_xlabel("bead radius (px)")
    axes[2].set_ylabel("detections")
    fig.tight_layout()
    return fig
