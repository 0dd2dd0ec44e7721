"""Calibration: estimating the per-tile corrections of :class:`..optics.Calibration` from the data.

Dark, flat field, stray light and trim from a sample's own tiles (:func:`estimate_calibration`), the flat
refined from the seams (:func:`refine_flat`), how visible the seams are (:func:`overlap_mismatch`), and the
distortion with uncertainties from a calibration acquisition (:func:`fit_calibration_distortion`,
:class:`DistortionFit`, :func:`calibration_pairs`). One module per concept: ``_flatfield`` (per-channel tile
model), ``_stray`` (stray light, trim), ``_seams``, ``_flat_refine``, ``_basis`` (polynomial surfaces),
``_distortion_fit``, ``_estimate``.
"""

from ._distortion_fit import DistortionFit, calibration_pairs, fit_calibration_distortion
from ._estimate import estimate_calibration
from ._flat_refine import refine_flat
from ._seams import overlap_mismatch

__all__ = [
    "DistortionFit",
    "calibration_pairs",
    "estimate_calibration",
    "fit_calibration_distortion",
    "overlap_mismatch",
    "refine_flat",
]
