"""Measure: per-object tables and image crops from segmented planes.

:func:`cell_catalogue` gives the cell and nucleus tables of one plane (shape and per-channel intensity
features, each cell's nucleus); :func:`masked_crops` cuts fixed-size, mask-limited crops around objects;
:func:`representative_ranking` ranks slices by how representative they are.
"""

from ._crops import masked_crops, representative_ranking
from ._features import cell_catalogue

__all__ = ["cell_catalogue", "masked_crops", "representative_ranking"]
