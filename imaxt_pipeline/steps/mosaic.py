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
tiles that touch it), so a slice never has to fit in memory.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
from pydantic import Field

from ..algorithms.optics import MosaicGeometry, mosaic_geometry
from ..parallel.fusion import fuse_blocks
from ._base import StepContext, StepParams, StepResult
from .calibrate import load_calibration
from .stitch import read_tile


class Params(StepParams):
    levels: int = Field(default=3, ge=1, le=8, description="pyramid levels incl. full resolution")
    chunk: int = Field(default=512, ge=16, description="output chunk edge in px")
    dark: float = Field(default=0.0, description="dark offset subtracted when no calibration exists")
    feather: float = Field(default=0.0, ge=0, description="px of linear confidence ramp at tile borders")
    qc: bool = Field(default=True, description="write qc/stitch.png")


def geometry(ctx: StepContext) -> MosaicGeometry:
    """The sample's mosaic canvas (shared by every slice)."""
    acq = ctx.raw.acquisition
    return mosaic_geometry(ctx.raw.stage_px(0, 0), rows=acq.rows, cols=acq.cols, tile_shape=acq.tile_shape,
                           overlap=acq.overlap)


def tile_positions(ctx: StepContext, geom: MosaicGeometry, slice_: int, stitched: dict[str, list[float]]
                   ) -> np.ndarray:
    """Mosaic-frame (y, x) of each tile of a slice: from ``stitched`` (the
    ``imaxt.stitch.tile_positions_px`` table) where known, else nominal."""
    acq = ctx.raw.acquisition
    nominal = geom.to_mosaic(ctx.raw.stage_px(slice_, 0))
    out = nominal.copy()
    for t in range(acq.n_tiles):
        r, c = acq.tile_grid(t)
        key = f"{slice_}/{r}/{c}"
        if key in stitched:
            out[t] = stitched[key]
    return out


def write_block(mosaic, confidence, plane: int, level: int, region: tuple[int, int, int, int], image: np.ndarray,
                weight: np.ndarray) -> None:
    """Write one fused block at one level into both images (picklable via partial)."""
    y0, y1, x0, x1 = region
    mosaic.array(level)[:, plane, y0:y1, x0:x1] = image.astype(np.float32)
    confidence.array(level)[0, plane, y0:y1, x0:x1] = weight.astype(np.float32)


def _image(ctx: StepContext, name: str, channels: list[str], shape: tuple[int, ...], params: Params):
    acq = ctx.raw.acquisition
    if ctx.output.has(name):
        img = ctx.output.open_image(name)
        if img.shape == shape and img.levels == params.levels:
            return img
    z_um = acq.slice_thickness_um / acq.optical_sections
    return ctx.output.create_image(name, channel_names=channels, shape_czyx=shape, dtype="float32",
                                   scale_zyx_um=(z_um, acq.pixel_size_um, acq.pixel_size_um),
                                   levels=params.levels, chunks_yx=(params.chunk, params.chunk))


def run(ctx: StepContext, params: Params) -> StepResult:
    acq = ctx.raw.acquisition
    geom = geometry(ctx)
    n_ch = len(acq.channels)
    cal = load_calibration(ctx.output, n_ch)
    if cal.source.get("dark") == "none" and params.dark:
        cal = replace(cal, dark=np.full(n_ch, params.dark), source={**cal.source, "dark": "given"})
    mosaic = _image(ctx, "mosaic", list(acq.channels), (n_ch, acq.n_planes, *geom.shape), params)
    confidence = _image(ctx, "confidence", ["confidence"], (1, acq.n_planes, *geom.shape), params)
    lazy = []
    stitched = ctx.output.imaxt_attrs().get("stitch", {}).get("tile_positions_px", {})
    for s in ctx.slices:
        positions = tile_positions(ctx, geom, s, stitched)
        for z in range(acq.optical_sections):
            plane = s * acq.optical_sections + z
            lazy += fuse_blocks(partial(read_tile, ctx.raw, s, z), partial(write_block, mosaic, confidence, plane),
                                positions, tuple(acq.tile_shape), geom.shape, cal, chunk=params.chunk,
                                levels=params.levels, feather=params.feather, n_channels=n_ch)
    ctx.client.gather(ctx.client.compute(lazy))
    outputs = ["mosaic", "confidence"]
    if params.qc and ctx.slices:
        done = sorted(set(ctx.output.imaxt_attrs().get("slices_done", [])) | set(ctx.slices))
        import matplotlib.pyplot as plt

        fig = stitch_figure(ctx, mosaic, confidence, done)
        outputs.append(ctx.output.write_png("stitch", fig))
        plt.close(fig)
    return StepResult(outputs=outputs, metrics={"canvas": list(geom.shape), "blocks": len(lazy),
                                                "calibration": cal.source})


def stitch_figure(ctx: StepContext, mosaic, confidence, slices: list[int], *, max_slices: int = 6):
    """QC figure: mosaic thumbnail and confidence per slice, pair residual histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acq = ctx.raw.acquisition
    shown = slices[-max_slices:]
    level = mosaic.levels - 1
    fig, axes = plt.subplots(len(shown), 3, figsize=(11, 3.2 * len(shown)), squeeze=False)
    pairs = ctx.output.read_table("stitch_pairs") if ctx.output.has_table("stitch_pairs") else None
    for row, s in zip(axes, shown):
        plane = s * acq.optical_sections
        img = mosaic.read_plane(plane, level=level).sum(axis=0)
        lo, hi = np.percentile(img[img > 0], [1, 99.5]) if np.any(img > 0) else (0.0, 1.0)
        row[0].imshow(img, cmap="gray", vmin=lo, vmax=hi)
        row[0].set_title(f"slice {s}: mosaic (level {level})")
        im = row[1].imshow(confidence.read_plane(plane, level=level)[0], cmap="viridis")
        row[1].set_title("confidence (sum of weights)")
        fig.colorbar(im, ax=row[1], fraction=0.046)
        for ax in row[:2]:
            ax.set_axis_off()
        res = pairs[(pairs["slice"] == s) & pairs["used"]]["residual"].to_numpy(float) if pairs is not None else []
        if len(res):
            row[2].hist(res, bins=20, color="tab:blue")
            row[2].set_title(f"pair residuals: median {np.median(res):.2f} px, max {np.max(res):.2f} px")
        else:
            row[2].text(0.5, 0.5, "no stitch residuals", ha="center", va="center")
            row[2].set_title("pair residuals")
        row[2].set_xlabel("px")
    fig.tight_layout()
    return fig
