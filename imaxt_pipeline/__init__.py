"""imaxt-pipeline: serial-section microscopy to registered OME-Zarr cubes with cells."""

__version__ = "0.1.0"
