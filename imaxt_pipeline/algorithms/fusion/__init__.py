"""Fusion: calibrated tiles blended into mosaic regions, and the image pyramid built from them.

Confidence-weighted resampling of every tile through the inverse distortion at its stitched position
(:func:`fuse_region` -> :class:`FusedRegion`; :func:`tiles_touching` names the tiles a region needs) and
pyramid downsampling (:func:`downsample_mean`, :func:`downsample_labels`, :func:`downsample`).
"""

from ._fuse import FusedRegion, fuse_region, tiles_touching
from ._pyramid import downsample, downsample_labels, downsample_mean

__all__ = ["FusedRegion", "downsample", "downsample_labels", "downsample_mean", "fuse_region", "tiles_touching"]
