"""TODO docstring."""

from ._crops import masked_crops, representative_ranking
from ._features import SHAPE_PROPERTIES, cell_catalogue, match_nuclei, region_features

__all__ = ["SHAPE_PROPERTIES", "cell_catalogue", "masked_crops", "match_nuclei", "region_features", "representative_ranking"]
