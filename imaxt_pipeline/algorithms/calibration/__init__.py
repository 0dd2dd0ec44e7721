"""Calibration: estimating the per-tile corrections of :class:`..optics.Calibration` from the data.

Dark, flat field, stray light and trim from a sample's own tiles (:func:`estimate_calibration`), the flat
refined from the seams (:func:`refine_flat`), how visible the seams are (:func:`overlap_mismatch`), and the
distortion with uncertainties from a calibration acquisition (:func:`fit_calibration_distortion`,
:class:`DistortionFit`, :func:`calibration_pairs`). One module per concept: ``_flatfield`` (per-channel tile
model), ``_stray`` (stray light, trim), ``_seams``, ``_flat_refine``, ``_basis`` (polynomial surfaces),
``_distortion_fit``, ``_estimate``; ``_dark_check`` checks a dark estimate against the photon-transfer curve
and the darkest pixels (:func:`check_dark`, :func:`checked_darks`, :class:`DarkCheck`).
"""

from ._dark_check import DarkCheck, check_dark, checked_darks
from ._distortion_fit import DistortionFit, calibration_pairs, fit_calibration_distortion
from ._estimate import estimate_calibration
from ._flat_refine import refine_flat
from ._seams import overlap_mismatch

__all__ = [
    "DarkCheck",
    "DistortionFit",
    "check_dark",
    "checked_darks",
    "calibration_pairs",
    "estimate_calibration",
    "fit_calibration_distortion",
    "overlap_mismatch",
    "refine_flat",
]
