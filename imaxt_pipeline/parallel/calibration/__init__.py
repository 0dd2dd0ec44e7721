"""Dask layer of calibration: the sampled tiles are read and reduced on the workers.

Public API: :func:`tile_statistics` (one task per tile, each returning the tile's
:class:`...algorithms.calibration.TileStats` per channel, gathered into one record per channel).
The estimators run on those statistics (:func:`...algorithms.calibration.calibration_estimate`), their
independent per-channel fits on the workers through :func:`cluster_starmap`.
"""

from ._statistics import cluster_starmap, tile_statistics

__all__ = ["cluster_starmap", "tile_statistics"]
