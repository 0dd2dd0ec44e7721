"""Fuse each slice's tiles into the ``mosaic`` OME-Zarr image.

Tiles go where ``imaxt.stitch.tile_positions_px`` says when the stitch step
has run, else at their recorded stage positions. One Dask task per plane;
each task fuses its plane region by region, so memory stays at one plane's
tiles plus one output region.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..algorithms.mosaic import MosaicGeometry, fuse_region, mosaic_geometry
from ._base import StepContext, StepParams, StepResult


class Params(StepParams):
    levels: int = Field(default=3, ge=1, le=8, description="pyramid levels incl. full resolution")
    chunk: int = Field(default=512, ge=64, description="output chunk edge in px")
    dark: float = Field(default=0.0, description="dark offset subtracted when no calibration exists")


def geometry(ctx: StepContext) -> MosaicGeometry:
    """The sample's mosaic canvas (shared by every slice)."""
    acq = ctx.raw.acquisition
    return mosaic_geometry(ctx.raw.stage_px(0, 0), rows=acq.rows, cols=acq.cols, tile_shape=acq.tile_shape,
                           overlap=acq.overlap)


def tile_positions(ctx: StepContext, geom: MosaicGeometry, slice_: int) -> np.ndarray:
    """Mosaic-frame (y, x) of each tile of a slice: stitched if known, else nominal."""
    acq = ctx.raw.acquisition
    stitched = ctx.output.imaxt_attrs().get("stitch", {}).get("tile_positions_px", {})
    nominal = geom.to_mosaic(ctx.raw.stage_px(slice_, 0))
    out = nominal.copy()
    for t in range(acq.n_tiles):
        r, c = acq.tile_grid(t)
        key = f"{slice_}/{r}/{c}"
        if key in stitched:
            out[t] = stitched[key]
    return out


def run(ctx: StepContext, params: Params) -> StepResult:
    acq = ctx.raw.acquisition
    geom = geometry(ctx)
    shape = (len(acq.channels), acq.n_planes, *geom.shape)
    z_um = acq.slice_thickness_um / acq.optical_sections
    if ctx.output.has("mosaic") and ctx.output.open_image("mosaic").shape == shape:
        image = ctx.output.open_image("mosaic")
    else:
        image = ctx.output.create_image("mosaic", channel_names=acq.channels, shape_czyx=shape, dtype="float32",
                                        scale_zyx_um=(z_um, acq.pixel_size_um, acq.pixel_size_um),
                                        levels=params.levels, chunks_yx=(params.chunk, params.chunk))
    futures = []
    for s in ctx.slices:
        positions = tile_positions(ctx, geom, s)
        for z in range(acq.optical_sections):
            plane = s * acq.optical_sections + z
            futures.append(ctx.client.submit(_fuse_plane, ctx.raw, image, s, z, plane, positions, geom.shape,
                                             params.chunk, params.dark, pure=False))
    ctx.client.gather(futures)
    return StepResult(outputs=["mosaic"], metrics={"canvas": list(geom.shape), "planes": len(futures)})


def _fuse_plane(raw, image, slice_: int, z: int, plane: int, positions: np.ndarray, shape: tuple[int, int],
                chunk: int, dark: float) -> int:
    tiles = raw.read_tiles(slice_, z).astype(np.float32) - dark
    out = np.zeros((tiles.shape[0], *shape), np.float32)
    for y0 in range(0, shape[0], chunk):
        for x0 in range(0, shape[1], chunk):
            region = (y0, min(y0 + chunk, shape[0]), x0, min(x0 + chunk, shape[1]))
            out[:, region[0]:region[1], region[2]:region[3]], _ = fuse_region(tiles, positions, region)
    image.write_plane(plane, out)
    return plane
