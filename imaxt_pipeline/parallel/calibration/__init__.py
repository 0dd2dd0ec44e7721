"""Dask layer of calibration: the sampled tiles are read and reduced on the workers.

Public API: :func:`tile_statistics` (one task per tile, each returning the tile's
:class:`...algorithms.calibration.TileStats` per channel, gathered into one record per channel).
The estimators run on the client on those statistics (:func:`...algorithms.calibration.calibration_estimate`).
"""

from ._statistics import tile_statistics

__all__ = ["tile_statistics"]
