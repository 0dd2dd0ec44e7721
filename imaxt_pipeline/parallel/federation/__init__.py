"""Reprojection between a registered slide (Axioscan, IMC) and the STPT cube, and back.

The federation affine (``attrs["imaxt"]["federation"]["affine_px"]``) maps slide pixels (x, y)
to the cube's level-0 pixels (x, y) of one section. :func:`map_points` and :func:`map_table`
move coordinates and cell tables either way (``inverse=True``: cube -> slide);
:func:`reproject_image` resamples a (lazy) image or label image into the other frame chunk by
chunk with ``dask_image.ndinterp.affine_transform`` (nearest neighbour for labels).
"""

from ._reproject import map_points, map_table, reproject_image

__all__ = ["map_points", "map_table", "reproject_image"]
