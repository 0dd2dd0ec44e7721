"""Measure: per-object tables and image crops from segmented planes.

:func:`cell_catalogue` gives the cell and nucleus tables of one plane (shape and per-channel intensity
features, each cell's nucleus), also block by block (:func:`catalogue_parts` of each block, with a
:data:`HALO` of labels, merged by :func:`catalogue_from_parts`); :func:`masked_crops` cuts fixed-size,
mask-limited crops around objects; :func:`representative_ranking` ranks slices by how representative they are.
"""

from ._crops import masked_crops, representative_ranking
from ._features import CatalogueParts, catalogue_from_parts, catalogue_parts, cell_catalogue
from ._parts import HALO

__all__ = [
    "HALO",
    "CatalogueParts",
    "catalogue_from_parts",
    "catalogue_parts",
    "cell_catalogue",
    "masked_crops",
    "representative_ranking",
]
