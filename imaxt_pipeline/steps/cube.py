"""Build the aligned ``cube`` image (c, z, y, x) from ``mosaic`` and the slice offsets.

Each plane of slice ``k`` is moved by ``-register.slice_offsets_px[k]``
(sub-pixel) onto a canvas padded so that no shifted content is cut off, block
by block: one task per block reads the mosaic window it needs and moves every
channel (order 1: the compiled bilinear shift
:func:`~imaxt_pipeline.algorithms.registration.shift_linear`; other orders scipy's
spline; :func:`~imaxt_pipeline.parallel.registration.aligned_plane`), and writes its
first pyramid levels where it ran
(:func:`~imaxt_pipeline.parallel.registration.write_blocks`); coarser levels of
the full pyramid are reduced block by block afterwards. The padding
is rounded up to ``margin_px`` so that refined offsets rarely change the
canvas; when they do, the cube is recreated. Planes written earlier are
rewritten when their slice's offset moved by more than ``rewrite_tol_px``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io import results
from ..io.ome import BLOCK_LEVELS, block_edge, check_shard, pyramid_levels
from ._base import StepContext, StepResult
from .params import CubeParams as Params

__all__ = ["Params", "run"]


def run(ctx: StepContext, params: Params) -> StepResult:
    from ..algorithms.registration import canvas_padding
    from ..parallel.progress import compute_with_progress
    from ..parallel.pyramid import reduce_levels
    from ..parallel.registration import aligned_plane, write_blocks

    acq = ctx.raw.acquisition
    registered = results.read_slice_offsets(ctx.output, acq.slices)
    if registered is None:
        ctx.log.warning("cube: no register.slice_offsets_px; building an unregistered cube")
    offsets = np.zeros((acq.slices, 2)) if registered is None else registered
    done = set(results.slices_done(ctx.output)) | set(ctx.slices)
    slices = sorted(s for s in done if s < acq.slices)
    before, after = canvas_padding(offsets[slices])
    m = params.margin_px
    before = (-(-before // m) * m).astype(int)
    after = (-(-after // m) * m).astype(int)
    mosaic = ctx.output.open_image(results.MOSAIC)
    c, n_planes, h, w = mosaic.shape
    shape = (c, n_planes, h + before[0] + after[0], w + before[1] + after[1])
    levels = params.levels or pyramid_levels(shape[2:])
    check_shard(params.shard, params.chunk, levels)
    cube_meta = ctx.output.imaxt_attrs().get("cube", {})
    written = {int(k): v for k, v in cube_meta.get("written", {}).items()}
    same_canvas = (
        ctx.output.has(results.CUBE)
        and ctx.output.open_image(results.CUBE).shape == shape
        and ctx.output.open_image(results.CUBE).levels == levels
        and cube_meta.get("pad_before") == before.tolist()
    )
    if same_canvas:
        cube = ctx.output.open_image(results.CUBE)
    else:
        z_um = acq.slice_thickness_um / acq.optical_sections
        cube = ctx.output.create_image(
            results.CUBE,
            channel_names=acq.channels,
            shape_czyx=shape,
            dtype="float32",
            scale_zyx_um=(z_um, acq.pixel_size_um, acq.pixel_size_um),
            levels=levels,
            chunks_yx=(params.chunk, params.chunk),
            shard_yx=params.shard,
        )
        written = {}
    todo = [
        s
        for s in slices
        if s in ctx.slices
        or s not in written
        or np.max(np.abs(np.asarray(written[s]) - offsets[s])) > params.rewrite_tol_px
    ]
    in_block = min(levels, BLOCK_LEVELS)
    planes = [s * acq.optical_sections + z for s in todo for z in range(acq.optical_sections)]
    tasks: list[Any] = []
    for p in planes:
        moved = aligned_plane(
            mosaic,
            p,
            offsets[p // acq.optical_sections],
            pad_before=before,
            out_shape=shape[2:],
            block=block_edge(params.chunk, levels),
            order=params.order,
        )
        tasks += write_blocks(cube, p, moved, levels=in_block)
    compute_with_progress(ctx.client, tasks, "cube", unit="blocks", logger=ctx.log)
    reduce_levels(ctx.client, cube, planes, written=in_block, chunk=params.chunk, label="cube")
    for s in todo:
        written[s] = offsets[s].round(4).tolist()
    ctx.output.update_imaxt_attrs(
        "cube",
        {
            "pad_before": before.tolist(),
            "pad_after": after.tolist(),
            "written": {str(k): v for k, v in sorted(written.items())},
        },
    )
    ctx.log.info("cube: wrote %d planes of slices %s onto a %s canvas", len(planes), todo, shape)
    return StepResult(
        inputs=[results.MOSAIC],
        outputs=[results.CUBE],
        metrics={
            "planes_written": len(planes),
            "blocks": len(tasks),
            "levels": levels,
            "slices_written": todo,
            "shape": list(shape),
            "pad_before": before.tolist(),
        },
        rewritten_slices=[int(s) for s in todo],
    )
