"""Detect and fit the beads of one image region into a table (the per-block kernel of bead finding).

Candidates come from the classical detector (by size and shape in µm on a
block-averaged image, :func:`~imaxt_pipeline.algorithms.registration.detect_beads`)
or the U-Net (a loaded model is passed in); each candidate whose centre lies in
the region's core is fitted at full resolution on a ring around its rim
(:func:`~imaxt_pipeline.algorithms.registration.fit_beads`) and the fits are
returned in full-image coordinates, one row per bead. The blockwise Dask
layout over a whole plane is :func:`imaxt_pipeline.parallel.registration.find_beads`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ._bead_detect import BeadSpec, detect_beads
from ._bead_fit import fit_beads
from ._bead_rim import rim_on_data
from ._beads import BeadCandidates

if TYPE_CHECKING:
    from ._bead_unet import BeadUNet

__all__ = ["BEAD_COLUMNS", "find_beads_numpy", "good_beads"]

BEAD_COLUMNS = (
    "y_px",
    "x_px",
    "radius_px",
    "y_err",
    "x_err",
    "radius_err",
    "width_px",
    "amplitude",
    "background",
    "chi2",
    "snr",
    "fit_ok",
    "det_y",
    "det_x",
    "det_radius",
    "rim_valid",
)
"""Columns of a bead table: the fit (centre, radius, their errors, profile), its quality, the detection, and the
fraction of the fitted disc's rim on data (:func:`~imaxt_pipeline.algorithms.registration._bead_rim.rim_on_data`)."""


def find_beads_numpy(
    image: ArrayLike,
    spec: BeadSpec,
    *,
    detector: str = "classical",
    origin: tuple[int, int] = (0, 0),
    core: tuple[int, int, int, int] | None = None,
    nsigma: float = 5.0,
    rel: float = 0.5,
    threshold: float | None = None,
    model: BeadUNet | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Detect and fit the beads of one numpy region.

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel region.
    spec : BeadSpec
        Bead diameter (µm) and the image's pixel size: the radii searched.
    detector : {"classical", "unet"}, optional
        Candidate detector.
    origin : (int, int), optional
        Position of the region's pixel (0, 0) in the full image.
    core : (y0, y1, x0, x1), optional
        Keep only beads whose fitted (else detected) centre lies here, in
        full-image coordinates; default everything.
    nsigma, rel : float, optional
        Classical detector threshold rules
        (:func:`~imaxt_pipeline.algorithms.registration.bead_threshold`).
    threshold : float, optional
        Absolute classical threshold shared by all blocks of a plane
        (default: computed from ``image``).
    model : BeadUNet, optional
        Loaded U-Net (:func:`imaxt_pipeline.io.weights.load_bead_unet`);
        required by ``detector="unet"``. It runs on its own device.
    model_config : mapping, optional
        The checkpoint's ``config`` (``downsample``, probability ``threshold``).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`BEAD_COLUMNS`, centres in full-image coordinates.

    Raises
    ------
    ValueError
        If ``detector`` is unknown, or ``"unet"`` without a ``model``.
    """
    img = np.asarray(image, dtype=np.float32)
    if detector == "classical":
        cands = detect_beads(img, spec, threshold=threshold, nsigma=nsigma, rel=rel)
        grow = spec.factor + 3  # labels are block-quantised
    elif detector == "unet":
        if model is None:
            raise ValueError("detector='unet' needs a loaded model (imaxt_pipeline.io.weights.load_bead_unet)")
        from ._bead_unet import detect_beads_unet  # imports torch: only the U-Net path pays for it

        config = model_config or {}
        cands = detect_beads_unet(
            img,
            model,
            downsample=int(config.get("downsample", 2)),
            threshold=float(config.get("threshold", 0.5)),
            min_radius=spec.min_radius_px,
            max_radius=spec.max_radius_px,
        )
        grow = 4
    else:
        raise ValueError(f"detector must be 'classical' or 'unet', got {detector!r}")
    # Only the candidates whose centre lies in the core are fitted; pixels outside the tiles (exact 0) are masked.
    if core is not None and len(cands):
        cy, cx = cands.centres[:, 0] + origin[0], cands.centres[:, 1] + origin[1]
        pad = 2.0
        inner = (cy >= core[0] - pad) & (cy < core[1] + pad) & (cx >= core[2] - pad) & (cx < core[3] + pad)
        cands = _subset(cands, inner)
    # resampled data edges are partial: 2 px next to missing data (exact 0) are masked, looked at per cutout
    fits = fit_beads(
        img,
        cands.centres,
        cands.radii,
        labels=cands.labels,
        label_factor=cands.label_factor,
        missing_margin=2,
        grow=grow,
        ring=8.0,
    )
    rows = []
    for (dy, dx), dr, f in zip(cands.centres, cands.radii, fits, strict=True):
        rows.append(
            (
                f.y + origin[0],
                f.x + origin[1],
                f.radius,
                f.y_err,
                f.x_err,
                f.radius_err,
                f.width,
                f.amplitude,
                f.background,
                f.chi2,
                f.snr,
                bool(f.success),
                dy + origin[0],
                dx + origin[1],
                dr,
            )
        )
    df = pd.DataFrame(rows, columns=list(BEAD_COLUMNS[:-1]))
    df["fit_ok"] = df["fit_ok"].astype(bool)
    # the rim of the disc as fitted (the detection's where the fit failed), on the data of this region: a
    # region cut by the plane's edge ends where the data do, an inner one holds every core bead's rim whole
    ok = df["fit_ok"].to_numpy(bool)
    centre = np.where(ok[:, None], df[["y_px", "x_px"]].to_numpy(float), df[["det_y", "det_x"]].to_numpy(float))
    df["rim_valid"] = rim_on_data(
        img,
        centre - np.asarray(origin, np.float64),
        np.where(ok, df["radius_px"].to_numpy(float), df["det_radius"].to_numpy(float)),
        np.where(ok, df["width_px"].to_numpy(float), 1.0),
        missing_margin=2,
    )
    if core is not None and len(df):
        y = np.where(df["fit_ok"], df["y_px"], df["det_y"])
        x = np.where(df["fit_ok"], df["x_px"], df["det_x"])
        keep = (y >= core[0]) & (y < core[1]) & (x >= core[2]) & (x < core[3])
        df = df[keep].reset_index(drop=True)
    return df


def good_beads(
    df: pd.DataFrame,
    spec: BeadSpec,
    *,
    min_snr: float = 3.0,
    max_chi2_ratio: float = 20.0,
    min_amplitude_ratio: float = 0.3,
    max_radius_change: float = 0.5,
    min_rim_valid: float = 0.0,
) -> NDArray[np.bool_]:
    """Good fits of one section: converged, fitted radius a cut of the bead and the detected one's, bright, chi2 and
    amplitude near the median (and, if asked, enough of the rim on data).

    Parameters
    ----------
    df : pandas.DataFrame
        Bead table of one section (:data:`BEAD_COLUMNS`).
    spec : BeadSpec
        The radius range of a cut bead (``min_radius_px`` to ``max_radius_px``).
    min_snr : float, optional
        Least fitted S/N.
    max_chi2_ratio : float, optional
        Largest chi2 over the section's median (a bead of the wrong shape).
    min_amplitude_ratio : float, optional
        Least amplitude over the section's median (beads are alike; a faint disc is not one).
    max_radius_change : float, optional
        Largest ``|fitted - detected radius|`` as a fraction of the detected radius, plus the
        detection's block size (``spec.factor`` px). The detected region is the part of the object
        above the threshold, half-way up a bead's plateau, where a bead's blurred rim is: its radius
        is the bead's to a few px. A fit that settled on a disc twice as wide (a faint halo of tissue
        around a bright patch) does not describe the object found.
    min_rim_valid : float, optional
        Least fraction of the fitted rim on data (column ``rim_valid``; a table without it counts as whole);
        default 0 keeps every cut. A disc the mosaic's edge or a no-data region cuts is fitted from one side
        of that edge, where the data are partial, and its centre leans inwards by px (measured 1.7-3.5 px on
        the randomised instruments' sweep): the ``register`` step does not count them as ties (and weighs them
        by that error when ``steps.register.edge_sigma_px`` is set), rather than lose the only beads a small or
        bead-poor section has.

    Returns
    -------
    ndarray of bool
    """
    ok: NDArray[np.bool_] = df["fit_ok"].to_numpy(bool) & np.isfinite(df["y_err"].to_numpy(float))
    if "rim_valid" in df:
        ok &= df["rim_valid"].to_numpy(float) >= min_rim_valid
    r = df["radius_px"].to_numpy(float)
    # the erfc edge's half height lies ~w^2 / 2r inside the rim of a blurred disc (its curvature): the cut's
    # radius, compared with the range searched, is the fitted one plus that (a cut just above the smallest
    # one searched is not lost to it)
    width = np.nan_to_num(df["width_px"].to_numpy(float), nan=0.0)
    cut = r + width**2 / (2.0 * np.maximum(r, 1e-9))
    ok &= (cut >= spec.min_radius_px) & (cut <= spec.max_radius_px)
    det = df["det_radius"].to_numpy(float)
    ok &= np.abs(r - det) <= max_radius_change * det + spec.factor
    if not ok.any():
        return ok
    chi2 = df["chi2"].to_numpy(float)
    amp = df["amplitude"].to_numpy(float)
    med, med_amp = float(np.median(chi2[ok])), float(np.median(amp[ok]))
    good: NDArray[np.bool_] = (
        ok
        & (df["snr"].to_numpy(float) >= min_snr)
        & (chi2 <= max_chi2_ratio * max(med, 1e-12))
        & (amp >= min_amplitude_ratio * med_amp)
    )
    return good


def _subset(cands: BeadCandidates, keep: NDArray[np.bool_]) -> BeadCandidates:
    """The candidates where ``keep``, relabelled 1..n in order."""
    idx = np.flatnonzero(keep)
    lut = np.zeros(len(cands) + 1, np.int32)
    lut[idx + 1] = np.arange(1, len(idx) + 1)
    return BeadCandidates(lut[cands.labels], cands.centres[idx], cands.radii[idx], label_factor=cands.label_factor)
