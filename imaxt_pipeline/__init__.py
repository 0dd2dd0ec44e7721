"""imaxt-pipeline: serial-section microscopy to registered OME-Zarr cubes with cells."""

from . import _compat

__version__ = "0.1.0"

# One release of the 0.1 module paths (see _compat); importing them warns.
_compat.install()
