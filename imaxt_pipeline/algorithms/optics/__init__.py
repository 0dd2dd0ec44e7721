"""Optics: what every concern (and the simulator) shares about a tile's detector and the mosaic frame.

Normalised tile coordinates (:func:`tile_coordinates`), the radial (cubic, quintic) distortion model
(:class:`DistortionModel`: coefficient order, evaluation, linear design; :func:`displacement_field`,
:func:`detector_coordinates`, :func:`distort`, :func:`undistort`, :func:`max_displacement`), the calibration
record applied to every tile (:class:`Calibration`, :func:`apply_flat`), border trim and tile confidence
(:class:`Trim`, :func:`confidence_map`) and the mosaic canvas (:class:`MosaicGeometry`, :func:`mosaic_geometry`).
"""

from ._calibration import Calibration, apply_flat
from ._coordinates import tile_coordinates
from ._distortion import (
    DistortionModel,
    detector_coordinates,
    displacement_field,
    distort,
    max_displacement,
    undistort,
)
from ._geometry import MosaicGeometry, mosaic_geometry
from ._trim import Trim, confidence_map

__all__ = [
    "Calibration",
    "DistortionModel",
    "MosaicGeometry",
    "Trim",
    "apply_flat",
    "confidence_map",
    "detector_coordinates",
    "displacement_field",
    "distort",
    "max_displacement",
    "mosaic_geometry",
    "tile_coordinates",
    "undistort",
]
