"""QC of stitching and fusion: mosaic thumbnail, confidence and pair residuals per slice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


@dataclass(frozen=True)
class StitchPanel:
    """One row of :func:`stitch_figure`.

    Attributes
    ----------
    slice_index : int
    mosaic : ndarray (h, w)
        Thumbnail of the fused slice (channels summed).
    confidence : ndarray (h, w)
        Thumbnail of the sum of fusion weights.
    residuals : ndarray (n,)
        Residuals (px) of the pairs used by the position solve.
    flags : sequence of str
        Plain-words lines of the tiles the stitch step flagged (``imaxt.stitch.flags``); printed
        under the mosaic, every one of them (a count when more than fit).
    """

    slice_index: int
    mosaic: np.ndarray
    confidence: np.ndarray
    residuals: np.ndarray
    flags: Sequence[str] = field(default_factory=tuple)


def stitch_figure(panels: Sequence[StitchPanel], *, level: int) -> Figure:
    """Mosaic thumbnail and confidence of each slice, with its pair residual histogram."""
    fig = Figure(figsize=(11, 3.2 * len(panels)))
    axes = fig.subplots(len(panels), 3, squeeze=False)
    for row, panel in zip(axes, panels, strict=True):
        img = panel.mosaic
        lo, hi = np.percentile(img[img > 0], [1, 99.5]) if np.any(img > 0) else (0.0, 1.0)
        row[0].imshow(img, cmap="gray", vmin=lo, vmax=hi)
        row[0].set_title(f"slice {panel.slice_index}: mosaic (level {level})")
        im = row[1].imshow(panel.confidence, cmap="viridis")
        row[1].set_title("confidence (sum of weights)")
        fig.colorbar(im, ax=row[1], fraction=0.046)
        for ax in row[:2]:
            ax.set_axis_off()
        res = np.asarray(panel.residuals, float)
        if len(res):
            row[2].hist(res, bins=20, color="tab:blue")
            row[2].set_title(f"pair residuals: median {np.median(res):.2f} px, max {np.max(res):.2f} px")
        else:
            row[2].text(0.5, 0.5, "no stitch residuals", ha="center", va="center")
            row[2].set_title("pair residuals")
        row[2].set_xlabel("px")
        _flag_text(row[0], list(panel.flags))
    fig.tight_layout()
    return fig


MAX_FLAG_LINES = 8


def _flag_text(ax: Axes, flags: list[str]) -> None:
    """Flagged tiles in plain words under the mosaic thumbnail (red), or that none were flagged."""
    if not flags:
        ax.text(0.0, -0.04, "all tiles placed from their overlaps", transform=ax.transAxes, va="top", fontsize=7)
        return
    lines = flags[:MAX_FLAG_LINES]
    if len(flags) > MAX_FLAG_LINES:
        lines.append(f"... and {len(flags) - MAX_FLAG_LINES} more flagged tiles (imaxt.stitch.flags)")
    ax.text(0.0, -0.04, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7, color="tab:red")
