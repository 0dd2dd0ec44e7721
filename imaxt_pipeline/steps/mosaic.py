"""Step `mosaic`: fuse each slice's calibrated tiles into OME-Zarr images.

Tiles go where ``imaxt.stitch.tile_positions_px`` says when the stitch step
has run, else at their recorded stage positions; they are dark/flat
corrected and resampled through the inverse distortion of the stored
calibration (identity when `calibrate` did not run), and blended as
``Σ tile·confidence / Σ confidence``.

Outputs: ``mosaic`` (c, z, y, x) float32 and ``confidence`` (Σ confidence,
one channel) on the same canvas for every slice, with pyramids; and
``qc/stitch.png`` (thumbnails, confidence, pair residual histogram). Each
plane is fused block by block (one Dask task per block, reading only the
tiles that touch it, writing its first ``BLOCK_LEVELS`` pyramid levels with
:meth:`OmeImage.write_region`); the coarser levels of the full pyramid (down to
~512 px, unless ``levels`` is given) are reduced block by block afterwards
(:mod:`...parallel.pyramid`), so a slice never has to fit in memory.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from ..algorithms.optics import MosaicGeometry
from ..io import results
from ..io.ome import BLOCK_LEVELS, OmeImage, check_shard, pyramid_levels
from ..parallel.fusion import MAX_CHAIN, fuse_blocks
from ..parallel.progress import compute_with_progress
from ..parallel.pyramid import reduce_levels
from ..qc import StitchPanel, stitch_figure, to_png
from ._base import StepContext, StepResult
from .params import MosaicParams as Params

__all__ = ["Params", "run", "tile_positions", "write_block"]


def tile_positions(ctx: StepContext, geom: MosaicGeometry, slice_: int, stitched: dict[str, list[float]]) -> np.ndarray:
    """Mosaic-frame (y, x) of each tile of a slice: from ``stitched`` (the
    ``imaxt.stitch.tile_positions_px`` table) where known, else nominal."""
    acq = ctx.raw.acquisition
    nominal = geom.to_mosaic(ctx.raw.stage_px(slice_, 0))
    out = nominal.copy()
    for t in range(acq.n_tiles):
        r, c = acq.tile_grid(t)
        key = results.position_key(slice_, r, c)
        if key in stitched:
            out[t] = stitched[key]
    return out


def write_block(
    mosaic: OmeImage,
    confidence: OmeImage,
    plane: int,
    level: int,
    region: tuple[int, int, int, int],
    image: np.ndarray,
    weight: np.ndarray,
) -> None:
    """Write one fused block at one level into both images (picklable via partial)."""
    y0, _, x0, _ = region
    mosaic.write_region(plane, level, (y0, x0), image)
    confidence.write_region(plane, level, (y0, x0), weight[None])


def _image(
    ctx: StepContext, name: str, channels: list[str], shape: tuple[int, ...], params: Params, levels: int
) -> OmeImage:
    acq = ctx.raw.acquisition
    if ctx.output.has(name):
        img = ctx.output.open_image(name)
        if img.shape == shape and img.levels == levels:  # an image kept keeps its shard layout
            return img
    z_um = acq.slice_thickness_um / acq.optical_sections
    return ctx.output.create_image(
        name,
        channel_names=channels,
        shape_czyx=shape,
        dtype="float32",
        scale_zyx_um=(z_um, acq.pixel_size_um, acq.pixel_size_um),
        levels=levels,
        chunks_yx=(params.chunk, params.chunk),
        shard_yx=params.shard,
    )


def run(ctx: StepContext, params: Params) -> StepResult:
    acq = ctx.raw.acquisition
    geom = results.mosaic_canvas(ctx.raw)
    n_ch = len(acq.channels)
    cal = results.read_calibration(ctx.output, n_ch)
    if cal.source.get("dark") == "none" and params.dark:
        cal = replace(cal, dark=np.full(n_ch, params.dark), source={**cal.source, "dark": "given"})
    levels = params.levels or pyramid_levels(geom.shape)
    check_shard(params.shard, params.chunk, levels)
    mosaic = _image(ctx, results.MOSAIC, list(acq.channels), (n_ch, acq.n_planes, *geom.shape), params, levels)
    confidence = _image(ctx, results.CONFIDENCE, ["confidence"], (1, acq.n_planes, *geom.shape), params, levels)
    in_block = min(levels, BLOCK_LEVELS)
    lazy: list[Any] = []
    stitched = results.read_tile_positions(ctx.output)
    scattered = ctx.client.scatter(cal, broadcast=True)  # flat fields: sent once, not in every graph
    chain = _chain_length(ctx, geom.shape, params.chunk * 2 ** (in_block - 1))
    for s in ctx.slices:
        positions = tile_positions(ctx, geom, s, stitched)
        for z in range(acq.optical_sections):
            plane = s * acq.optical_sections + z
            lazy += fuse_blocks(
                partial(ctx.raw.read_tile, s, z),
                partial(write_block, mosaic, confidence, plane),
                positions,
                acq.tile_shape,
                geom.shape,
                scattered,
                chunk=params.chunk,
                levels=in_block,
                feather=params.feather,
                n_channels=n_ch,
                max_chain=chain,
            )
    compute_with_progress(ctx.client, lazy, "mosaic", unit="blocks", logger=ctx.log)
    planes = [s * acq.optical_sections + z for s in ctx.slices for z in range(acq.optical_sections)]
    for image in (mosaic, confidence):
        reduce_levels(ctx.client, image, planes, written=in_block, chunk=params.chunk, label=f"mosaic {image.path}")
    outputs = [results.MOSAIC, results.CONFIDENCE]
    if params.qc and ctx.slices:
        done = sorted(set(results.slices_done(ctx.output)) | set(ctx.slices))
        outputs.append(ctx.output.write_png("stitch", to_png(_stitch_qc(ctx, mosaic, confidence, done))))
    return StepResult(
        outputs=outputs,
        metrics={"canvas": list(geom.shape), "blocks": len(lazy), "levels": levels, "calibration": cal.source},
    )


def _chain_length(ctx: StepContext, canvas: tuple[int, int], block: int) -> int:
    """Blocks of a row one task fuses (:func:`...parallel.fusion.block_chains`): as many as
    :data:`...parallel.fusion.MAX_CHAIN` while every worker still gets two tasks or more, fewer when a
    section or two land on a large cluster (a chain saves tile reads, not parallelism)."""
    blocks = len(ctx.planes()) * -(-canvas[0] // block) * -(-canvas[1] // block)
    workers = max(1, sum(ctx.client.nthreads().values()))
    return max(1, min(MAX_CHAIN, blocks // (2 * workers)))


def _stitch_qc(
    ctx: StepContext, mosaic: OmeImage, confidence: OmeImage, slices: list[int], *, max_slices: int = 6
) -> Any:
    """QC figure of the last ``max_slices`` slices, from the coarsest pyramid level."""
    acq = ctx.raw.acquisition
    level = mosaic.levels - 1
    pairs = results.read_table_or_none(ctx.output, results.STITCH_PAIRS)
    flags = results.stitch_record(ctx.output).get("flags", {})  # "slice/row/col" -> plain words
    panels = []
    for s in slices[-max_slices:]:
        plane = s * acq.optical_sections
        res = (
            pairs[(pairs["slice"] == s) & pairs["used"]]["residual"].to_numpy(float)
            if pairs is not None
            else np.zeros(0)
        )
        panels.append(
            StitchPanel(
                s,
                mosaic.read_plane(plane, level=level).sum(axis=0),
                confidence.read_plane(plane, level=level)[0],
                res,
                flags=[words for key, words in flags.items() if key.split("/")[0] == str(s)],
            )
        )
    return stitch_figure(panels, level=level)
