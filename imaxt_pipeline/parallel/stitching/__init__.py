"""Dask layer of stitching: one lazy task per pair of neighbouring tiles.

Public API: :func:`match_pairs` (lazy tasks for every pair) and :func:`match_tiles` (the kernel each task
runs: read, calibrate and register one pair). The global solve is small and runs on the client
(:func:`...algorithms.stitching.solve_positions`).
"""

from ._match import match_pairs, match_tiles

__all__ = ["match_pairs", "match_tiles"]
