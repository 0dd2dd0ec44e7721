"""Blockwise bead detection and fitting over a Dask array.

The image is cut into blocks; each task reads its block plus a margin wide
enough to hold the largest bead and its fit cutout, detects candidates
(classical or U-Net), fits them, and keeps those whose centre lies in the
block's core, so every bead is reported once. The result is a lazy
``pandas.DataFrame`` (one ``dask.delayed``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = ["BEAD_COLUMNS", "find_beads", "find_beads_numpy"]

BEAD_COLUMNS = ("y_px", "x_px", "radius_px", "y_err", "x_err", "radius_err", "width_px", "amplitude",
                "background", "chi2", "snr", "fit_ok", "det_y", "det_x", "det_radius")


@lru_cache(maxsize=4)
def _model(source: str | None, device: str | None):
    from ...algorithms.registration import load_bead_unet

    return load_bead_unet(source, device=device)


def find_beads_numpy(image: np.ndarray, *, detector: str = "classical", origin: tuple[int, int] = (0, 0),
                     core: tuple[int, int, int, int] | None = None, min_radius: float = 4.0,
                     max_radius: float = 80.0, sigma: float = 2.0, nsigma: float = 5.0, rel: float = 0.5,
                     threshold: float | None = None, model_source: str | None = None,
                     device: str | None = None) -> pd.DataFrame:
    """Detect and fit the beads of one numpy region (the per-block kernel).

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel region.
    detector : {"classical", "unet"}, optional
        Candidate detector.
    origin : (int, int), optional
        Position of the region's pixel (0, 0) in the full image.
    core : (y0, y1, x0, x1), optional
        Keep only beads whose fitted (else detected) centre lies here, in
        full-image coordinates; default everything.
    min_radius, max_radius : float, optional
        Radius range of candidates in px.
    sigma, nsigma, rel : float, optional
        Classical detector smoothing and threshold rules
        (:func:`~imaxt_pipeline.algorithms.registration.bead_threshold`).
    threshold : float, optional
        Absolute classical threshold shared by all blocks of a plane
        (default: computed from ``image``).
    model_source : str, optional
        U-Net checkpoint path/URL (default: packaged weights).
    device : str, optional
        Torch device for the U-Net (default: CUDA when available).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`BEAD_COLUMNS`, centres in full-image coordinates.
    """
    from ...algorithms.registration import fit_beads
    from ...algorithms.registration import detect_beads

    img = np.asarray(image, dtype=np.float32)
    if detector == "classical":
        cands = detect_beads(img, sigma=sigma, nsigma=nsigma, rel=rel, threshold=threshold, min_radius=min_radius,
                             max_radius=max_radius)
    elif detector == "unet":
        from ...algorithms.registration import detect_beads_unet

        model, config = _model(model_source, device)
        cands = detect_beads_unet(img, model, downsample=int(config.get("downsample", 2)),
                                  threshold=float(config.get("threshold", 0.5)), min_radius=min_radius,
                                  max_radius=max_radius)
    else:
        raise ValueError(f"detector must be 'classical' or 'unet', got {detector!r}")
    # Only the candidates whose centre lies in the core are fitted; pixels outside the tiles (exact 0) are masked.
    if core is not None and len(cands):
        cy, cx = cands.centres[:, 0] + origin[0], cands.centres[:, 1] + origin[1]
        pad = 2.0
        inner = (cy >= core[0] - pad) & (cy < core[1] + pad) & (cx >= core[2] - pad) & (cx < core[3] + pad)
        cands = _subset(cands, inner)
    valid = ndi.binary_erosion(img != 0, iterations=2, border_value=1)  # resampled data edges are partial
    fits = fit_beads(img, cands.centres, cands.radii, labels=cands.labels, valid=valid)
    rows = []
    for (dy, dx), dr, f in zip(cands.centres, cands.radii, fits):
        rows.append((f.y + origin[0], f.x + origin[1], f.radius, f.y_err, f.x_err, f.radius_err, f.width,
                     f.amplitude, f.background, f.chi2, f.snr, bool(f.success), dy + origin[0], dx + origin[1],
                     dr))
    df = pd.DataFrame(rows, columns=list(BEAD_COLUMNS))
    df["fit_ok"] = df["fit_ok"].astype(bool)
    if core is not None and len(df):
        y = np.where(df["fit_ok"], df["y_px"], df["det_y"])
        x = np.where(df["fit_ok"], df["x_px"], df["det_x"])
        keep = (y >= core[0]) & (y < core[1]) & (x >= core[2]) & (x < core[3])
        df = df[keep].reset_index(drop=True)
    return df


def _subset(cands, keep: np.ndarray):
    from ...algorithms.registration import BeadCandidates

    idx = np.flatnonzero(keep)
    lut = np.zeros(len(cands) + 1, np.int32)
    lut[idx + 1] = np.arange(1, len(idx) + 1)
    return BeadCandidates(lut[cands.labels], cands.centres[idx], cands.radii[idx])


def find_beads(image: Any, *, block: int = 1024, depth: int | None = None, **options: Any) -> Any:
    """Lazy blockwise :func:`find_beads_numpy` over a 2-D Dask array.

    Parameters
    ----------
    image : dask.array.Array (H, W)
        Bead-channel plane (any chunking; blocks are cut independently).
    block : int, optional
        Core block edge in px.
    depth : int, optional
        Margin read around each block (default ``2 * max_radius + 16``, so
        a bead centred in the core and its fit cutout are fully inside).
    **options
        Passed to :func:`find_beads_numpy` (``detector``, ``max_radius``...).

    Returns
    -------
    dask.delayed.Delayed
        A ``pandas.DataFrame`` of all beads, ordered by block.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``block`` is not positive.
    """
    import dask

    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    max_radius = float(options.get("max_radius", 80.0))
    if depth is None:
        depth = int(np.ceil(2 * max_radius + 16))
    h, w = image.shape
    parts = []
    kernel = dask.delayed(find_beads_numpy, pure=True)
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            ry0, rx0 = max(y0 - depth, 0), max(x0 - depth, 0)
            region = image[ry0:min(y1 + depth, h), rx0:min(x1 + depth, w)]
            parts.append(kernel(region, origin=(ry0, rx0), core=(y0, y1, x0, x1), **options))
    return dask.delayed(_concat)(parts)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "fit_ok" else float) for c in BEAD_COLUMNS})
    return pd.concat(parts, ignore_index=True)
