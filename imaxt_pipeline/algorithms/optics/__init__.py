"""TODO docstring."""

from ._distortion import DistortionModel, detector_coordinates, displacement_field, distort, max_displacement, undistort
from ._geometry import MosaicGeometry, mosaic_geometry

__all__ = ["DistortionModel", "MosaicGeometry", "detector_coordinates", "displacement_field", "distort", "max_displacement", "mosaic_geometry", "undistort"]
