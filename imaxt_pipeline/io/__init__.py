"""Storage layer: raw readers, Zarr/OME-Zarr writing, tables, fsspec URLs."""
