"""TODO docstring."""

from ._fuse import FusedRegion, downsample_mean, fuse_region, tiles_touching

__all__ = ["FusedRegion", "downsample_mean", "fuse_region", "tiles_touching"]
