"""The bead fits of a drawn sample against its true beads: why a registration is off.

A bead of the specimen at ``P`` (:attr:`SampleTruth.beads`, cut by section ``k`` into a disc of radius
``sqrt(R**2 - dz**2)``) is at ``P + drift_k - a_k`` in section ``k``'s canvas (``a_k``: true minus stitched
tile positions, canvas frame). :func:`bead_view` sums up a sample: the bias the fits of a section share
(what a perfect solve on them would still be off by: the stitching's local error plus the fits' bias), the
fits' scatter, how many discs the data's edge cuts (their fits lean inwards) and the recall of the discs the
tiles hold whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ._sweep_registration import MemoryMosaic, SampleTruth

__all__ = ["BeadView", "bead_truth_errors", "bead_view", "clipped_beads", "true_cuts"]


@dataclass(frozen=True)
class BeadView:
    """``bias``: rms over sections of the mean fitted-minus-true centre, common part removed; ``scatter``: median
    over sections of the fits' rms scatter about that mean; ``clipped``: good beads whose disc the data's edge
    cuts; ``found``/``whole``: true discs held whole by the data and searched (cut >= ``min_cut_fraction`` of R)
    that a good fit matches, and how many there are."""

    bias: float
    scatter: float
    clipped: int
    found: int
    whole: int


def bead_truth_errors(
    beads: pd.DataFrame, truth: SampleTruth, positions: np.ndarray, mosaic: MemoryMosaic, *, gate_px: float = 5.0
) -> np.ndarray:
    """(N, 4) ``slice, dy, dx, matched`` of each good bead: its fitted centre minus where the truth puts it.

    The truth: specimen bead ``P`` at ``P + drift_k - a_k`` in section ``k``'s canvas, ``a_k`` the translation
    of true minus stitched positions over all tiles (canvas frame). The mean of a section's rows is the
    offset its beads see (the stitching's local error plus the fits' bias); their scatter is the fits' noise.
    Beads without a true one within ``gate_px`` get ``matched`` 0 (and NaN errors).
    """
    world = truth.beads[["y_px", "x_px"]].to_numpy(np.float64)
    rows = []
    for k in np.unique(beads["slice"].to_numpy(int)):
        sub = beads[(beads["slice"] == k) & beads["good"]]
        if not len(sub):
            continue
        a = (truth.true_px[k] - mosaic.to_mosaic(positions[k])).mean(axis=0)
        expect = world + truth.drift_px[k] - a
        fit = sub[["y_px", "x_px"]].to_numpy(np.float64)
        dist = np.hypot(*(fit[:, None] - expect[None]).transpose(2, 0, 1))
        j = np.argmin(dist, axis=1)
        hit = dist[np.arange(len(fit)), j] <= gate_px
        d = np.where(hit[:, None], fit - expect[j], np.nan)
        rows.append(np.column_stack([np.full(len(fit), k), d, hit]))
    return np.concatenate(rows) if rows else np.zeros((0, 4))


def true_cuts(truth: SampleTruth, positions: np.ndarray, mosaic: MemoryMosaic, pixel_size_um: float) -> pd.DataFrame:
    """``slice, y_px, x_px, radius_px`` of every disc the sections cut, in the canvas (truth of the search:
    cuts down to the ``beads`` step's ``min_cut_fraction`` of its nominal radius)."""
    from imaxt_pipeline.steps.params import BeadsParams
    from imaxt_pipeline.synth import SynthParams

    p, thick = BeadsParams(), SynthParams().slice_thickness_um  # the drawn scenes keep the default thickness
    b = truth.beads
    rows = []
    for k in range(len(truth.drift_px)):
        a = (truth.true_px[k] - mosaic.to_mosaic(positions[k])).mean(axis=0)
        dz = (k + 0.5) * thick - b["z_um"].to_numpy(np.float64)
        r2 = b["radius_um"].to_numpy(np.float64) ** 2 - dz**2
        cut = r2 > (p.min_cut_fraction * p.bead_diameter_um / 2) ** 2
        yx = b[["y_px", "x_px"]].to_numpy(np.float64)[cut] + truth.drift_px[k] - a
        rows += [(k, y, x, math.sqrt(r) / pixel_size_um) for (y, x), r in zip(yx, r2[cut], strict=True)]
    return pd.DataFrame(rows, columns=["slice", "y_px", "x_px", "radius_px"])


def bead_view(
    beads: pd.DataFrame,
    truth: SampleTruth,
    positions: np.ndarray,
    mosaic: MemoryMosaic,
    channel: int,
    pixel_size_um: float,
) -> BeadView:
    """:class:`BeadView` of the bead table ``beads`` (with ``good``) of ``mosaic`` fused at ``positions``."""
    errs = bead_truth_errors(beads, truth, positions, mosaic)
    means, scatter = [], []
    for k in np.unique(errs[:, 0]).astype(int):
        r = errs[(errs[:, 0] == k) & (errs[:, 3] > 0), 1:3]
        if len(r):
            means.append(r.mean(axis=0))
            scatter.append(float(np.sqrt(np.mean(np.sum((r - r.mean(axis=0)) ** 2, axis=1)))))
    m = np.asarray(means).reshape(-1, 2)
    bias = float(np.sqrt(np.mean(np.sum((m - m.mean(axis=0)) ** 2, axis=1)))) if len(m) >= 2 else math.nan
    planes = mosaic.data[0][channel]
    good = beads[beads["good"]]
    cuts = true_cuts(truth, positions, mosaic, pixel_size_um)
    whole = cuts[~clipped_beads(cuts, planes)] if len(cuts) else cuts
    found = 0
    fits = good[["slice", "y_px", "x_px"]].to_numpy(np.float64)
    for k, y, x in whole[["slice", "y_px", "x_px"]].to_numpy(np.float64):
        g = fits[fits[:, 0] == k]
        found += bool(len(g) and np.min(np.hypot(g[:, 1] - y, g[:, 2] - x)) <= 5.0)
    return BeadView(
        bias=bias,
        scatter=float(np.median(scatter)) if scatter else math.nan,
        clipped=int(clipped_beads(good, planes).sum()) if len(good) else 0,
        found=int(found),
        whole=len(whole),
    )


def clipped_beads(beads: pd.DataFrame, planes: np.ndarray, *, margin_px: float = 2.0, n: int = 64) -> np.ndarray:
    """Whether each bead's fitted disc (radius + ``margin_px``) reaches past the data: off the canvas, or onto
    pixels no tile covers (exact 0 in the fused ``planes`` (Z, H, W) of the bead channel)."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    out = np.zeros(len(beads), bool)
    for i, (k, y, x, r) in enumerate(beads[["slice", "y_px", "x_px", "radius_px"]].to_numpy(np.float64)):
        yy = np.rint(y + (r + margin_px) * np.sin(t)).astype(int)
        xx = np.rint(x + (r + margin_px) * np.cos(t)).astype(int)
        inside = (yy >= 0) & (yy < planes.shape[1]) & (xx >= 0) & (xx < planes.shape[2])
        out[i] = not inside.all() or bool(np.any(planes[int(k), yy[inside], xx[inside]] == 0))
    return out
