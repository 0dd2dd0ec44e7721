"""How much of a fitted bead's rim lies on data: discs the mosaic's edge or a no-data region cuts.

The fit of such a disc sees one side of the data's edge only, where resampling and feathering leave
the data partial, and its centre leans inwards; the bead table records the fraction
(``rim_valid``) so that the registration can weigh those fits accordingly.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._bead_fit import _near_missing

__all__ = ["rim_on_data"]


def rim_on_data(
    image: ArrayLike,
    centres: ArrayLike,
    radii: ArrayLike,
    widths: ArrayLike | None = None,
    *,
    missing_margin: int = 0,
    valid: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Fraction of each fitted disc's outer rim that lies on data.

    The rim is sampled on the circle of radius ``r + max(2 w, 2)`` (the blurred edge's outer
    2-sigma) about the fitted centre; a sample counts when it is inside the image, not missing
    (exact 0) nor within ``missing_margin`` 4-connected steps of a missing pixel, and ``valid``
    there. A disc the data's edge cuts (mosaic edge, pixels no tile covers) has part of its rim
    off the data: its fit sees one side of the edge only, where resampling and feathering leave the
    data partial, and its centre leans inwards by px, so such fits must not tie sections.

    Parameters
    ----------
    image : ndarray (H, W)
        The image the beads were fitted on.
    centres : ndarray (N, 2)
        Fitted (y, x) in image coordinates (NaN rows give 0).
    radii, widths : ndarray (N,)
        Fitted radius and edge width (px); ``widths`` default 1.
    missing_margin : int, optional
        Steps next to a missing pixel that count as missing too (as :func:`._bead_fit.fit_beads`).
    valid : ndarray (H, W) of bool, optional
        Pixels holding data; default every nonzero pixel.

    Returns
    -------
    ndarray (N,)
        In [0, 1]; 1 when the whole rim is on data.
    """
    img = np.asarray(image)
    yx = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    rad = np.asarray(radii, dtype=np.float64).ravel()
    wid = np.ones(len(rad)) if widths is None else np.nan_to_num(np.asarray(widths, np.float64).ravel(), nan=1.0)
    valid_img = None if valid is None else np.asarray(valid, bool)
    h, w = img.shape
    out = np.zeros(len(rad))
    for i, ((cy, cx), r, wd) in enumerate(zip(yx, rad, wid, strict=True)):
        if not (np.isfinite(cy) and np.isfinite(cx) and np.isfinite(r)):
            continue
        rr = r + max(2.0 * wd, 2.0)
        t = np.linspace(0.0, 2.0 * np.pi, max(64, int(np.ceil(2.0 * np.pi * rr))), endpoint=False)
        yy, xx = np.rint(cy + rr * np.sin(t)).astype(int), np.rint(cx + rr * np.cos(t)).astype(int)
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        if ok.any():
            y0, y1, x0, x1 = int(yy[ok].min()), int(yy[ok].max()) + 1, int(xx[ok].min()), int(xx[ok].max()) + 1
            near = _near_missing(img, (y0, y1, x0, x1), missing_margin)
            on = np.ones(int(ok.sum()), bool)
            if near is not None:
                on &= ~near[yy[ok] - y0, xx[ok] - x0]
            if valid_img is not None:
                on &= valid_img[yy[ok], xx[ok]]
            ok[ok] = on
        out[i] = float(ok.mean())
    return out
