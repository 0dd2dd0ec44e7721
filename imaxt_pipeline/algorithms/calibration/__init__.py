"""Calibration: estimating the per-tile corrections of :class:`..optics.Calibration` from the data.

Dark, flat field, stray light and trim from a sample's own tiles (:func:`estimate_calibration`), the flat
refined from the seams (:func:`refine_flat`, or from seam samples the pair tasks took: :func:`seam_samples`,
:func:`refine_flat_from_samples`; how far that moves it: :func:`flat_change`), how visible the seams are
(:func:`overlap_mismatch`), and the distortion with uncertainties from a calibration acquisition
(:func:`fit_calibration_distortion`, :class:`DistortionFit`, :func:`calibration_pairs`). One module per
concept: ``_flatfield`` (per-channel tile model), ``_stray`` (stray light, trim), ``_seams``,
``_flat_refine``, ``_basis`` (polynomial surfaces), ``_distortion_fit``, ``_estimate`` (with the estimates'
bootstrap uncertainty, :func:`calibration_estimate`), ``_summary`` (what the estimators need of a tile,
reduced where it is read: :func:`summarise_tile`, :class:`TileStats`), ``_level_fit`` (the flat/dark level
fit), ``_bootstrap`` (its replicates over tiles); ``_dark_check`` checks a dark estimate against the
photon-transfer curve and the darkest pixels (:func:`check_dark`, :func:`checked_darks`, :class:`DarkCheck`).
"""

from ._dark_check import DarkCheck, check_dark, checked_darks
from ._distortion_fit import DistortionFit, calibration_pairs, fit_calibration_distortion
from ._estimate import CalibrationEstimate, calibration_estimate, estimate_calibration
from ._flat_refine import flat_change, refine_flat, refine_flat_from_samples
from ._seams import SEAM_SAMPLE_COLUMNS, overlap_mismatch, seam_samples
from ._summary import TileStats, default_block, summarise, summarise_tile

__all__ = [
    "SEAM_SAMPLE_COLUMNS",
    "CalibrationEstimate",
    "DarkCheck",
    "DistortionFit",
    "TileStats",
    "calibration_estimate",
    "check_dark",
    "checked_darks",
    "calibration_pairs",
    "default_block",
    "estimate_calibration",
    "fit_calibration_distortion",
    "flat_change",
    "overlap_mismatch",
    "refine_flat",
    "refine_flat_from_samples",
    "seam_samples",
    "summarise",
    "summarise_tile",
]
