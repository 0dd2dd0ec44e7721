"""Seam helpers of :func:`._overlap.match_pair`: the overlap's information, and coarse-to-fine block shifts."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._subpixel import MovingSpline, ShiftEstimate

__all__ = ["information", "refine_blocks"]

_Array = npt.NDArray[np.float64]


def information(raw: npt.ArrayLike, smoothed: _Array, weights: _Array, smooth: float) -> float:
    """``Σ w |∇a|² / σ²`` of the smoothed strip less what smoothed noise alone gives; σ from the raw strip (MAD).

    The gradient of white noise smoothed by a Gaussian of ``s`` px has variance ``σ² / (4 π s⁴)`` (both
    axes): that floor is subtracted, so empty agarose gives ~0.
    """
    r = np.asarray(raw, np.float64)
    if r.shape[0] < 3 or r.shape[1] < 3:
        return 0.0
    # second differences cancel smooth structure; for white noise their std is sqrt(6) sigma
    d2 = r[:, 2:] - 2 * r[:, 1:-1] + r[:, :-2]
    sigma = 1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / np.sqrt(6.0)
    gy, gx = np.gradient(smoothed)
    energy = float(np.sum(weights * (gy * gy + gx * gx))) / max(sigma * sigma, 1e-12)
    floor = float(np.sum(weights)) / (4 * np.pi * max(smooth, 0.5) ** 4)
    return float(max(energy - floor, 0.0))


def refine_blocks(
    mov: MovingSpline,
    a: _Array,
    wa: _Array,
    box: tuple[slice, slice],
    regions: list[tuple[slice, slice]],
    start: tuple[float, float],
    max_shift: int,
    min_ncc: float = -1.0,
) -> list[ShiftEstimate]:
    """Block shifts: every block from the seam's shift, then coarse to fine where that failed.

    Strong distortion (tens of px at the corners of large tiles) makes the local shift vary by many px
    along one seam; Gauss-Newton from the seam's mean shift would leave its ends outside its basin. So
    blocks that do not converge (or correlate below ``min_ncc``) from the seam's shift are fitted again
    from the shift of their quarter of the seam (four quarters fitted first, from the seam's shift), and
    keep whichever fit correlates better. On a weakly distorted seam every block converges at once and
    the quarters cost nothing (they were a third of a pair's time).
    """
    first = mov.refine(a, wa, regions, start, max_step=4.0, tol=1e-2)
    failed = [i for i, e in enumerate(first) if not e or e.ncc < min_ncc]
    if not failed:
        return first
    long_axis = 0 if box[0].stop - box[0].start > box[1].stop - box[1].start else 1
    sl = box[long_axis]
    cuts = np.linspace(sl.start, sl.stop, 5).astype(int)
    groups: dict[int, list[int]] = {}
    for i in failed:
        centre = 0.5 * (regions[i][long_axis].start + regions[i][long_axis].stop)
        groups.setdefault(int(np.clip(np.searchsorted(cuts, centre) - 1, 0, 3)), []).append(i)
    quarters = []
    for g in sorted(groups):
        q = [box[0], box[1]]
        q[long_axis] = slice(int(cuts[g]), int(cuts[g + 1]))
        quarters.append((q[0], q[1]))
    coarse = dict(
        zip(
            sorted(groups), mov.refine(a, wa, quarters, start, max_step=float(max(4, max_shift)), tol=1e-2), strict=True
        )
    )
    out = list(first)
    for g, idx in groups.items():
        c = coarse[g]
        if not c or abs(c.shift[0] - start[0]) + abs(c.shift[1] - start[1]) >= 2 * max(4, max_shift):
            continue  # the quarter gives no better start than the seam
        for i, est in zip(
            idx, mov.refine(a, wa, [regions[i] for i in idx], c.shift, max_step=4.0, tol=1e-2), strict=True
        ):
            if est and (not out[i] or est.ncc > out[i].ncc):
                out[i] = est
    return out
