"""TODO docstring."""

from ._distortion_fit import DistortionFit, calibration_pairs, fit_calibration_distortion
from ._estimate import Calibration, estimate_calibration, fit_distortion
from ._flat_refine import refine_flat
from ._flatfield import TileModel, apply_flat, estimate_dark, estimate_tile_model
from ._seams import SIDES, SeamOverlap, Trim, confidence_map, estimate_stray, masked_smooth, overlap_mismatch, overlapping_pairs, resampled_overlaps, trim_from_stray

__all__ = ["Calibration", "DistortionFit", "SIDES", "SeamOverlap", "TileModel", "Trim", "apply_flat", "calibration_pairs", "confidence_map", "estimate_calibration", "estimate_dark", "estimate_stray", "estimate_tile_model", "fit_calibration_distortion", "fit_distortion", "masked_smooth", "overlap_mismatch", "overlapping_pairs", "refine_flat", "resampled_overlaps", "trim_from_stray"]
