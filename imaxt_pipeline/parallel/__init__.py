"""Dask layer: thin wrappers mapping algorithms over tiles, chunks and slices."""
