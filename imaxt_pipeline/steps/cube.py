"""Build the aligned ``cube`` image (c, z, y, x) from ``mosaic`` and the slice offsets.

Each plane of slice ``k`` is moved by ``-register.slice_offsets_px[k]``
(sub-pixel, lazily, chunk by chunk) onto a canvas padded so that no shifted
content is cut off, and written with its pyramid by a Dask task. The padding
is rounded up to ``margin_px`` so that refined offsets rarely change the
canvas; when they do, the cube is recreated. Planes written earlier are
rewritten when their slice's offset moved by more than ``rewrite_tol_px``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io import results
from ..io.ome import OmeImage
from ._base import StepContext, StepResult
from .params import CubeParams as Params

__all__ = ["Params", "run"]


def _write(image: OmeImage, plane: int, data: np.ndarray) -> int:
    image.write_plane(plane, data)
    return plane


def run(ctx: StepContext, params: Params) -> StepResult:
    import dask

    from ..algorithms.registration import canvas_padding
    from ..parallel.registration import align_plane

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
    cube_meta = ctx.output.imaxt_attrs().get("cube", {})
    written = {int(k): v for k, v in cube_meta.get("written", {}).items()}
    same_canvas = (
        ctx.output.has(results.CUBE)
        and ctx.output.open_image(results.CUBE).shape == shape
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
            levels=params.levels,
            chunks_yx=(params.chunk, params.chunk),
        )
        written = {}
    todo = [
        s
        for s in slices
        if s in ctx.slices
        or s not in written
        or np.max(np.abs(np.asarray(written[s]) - offsets[s])) > params.rewrite_tol_px
    ]
    stack = mosaic.to_dask(0)
    tasks: list[Any] = []
    for s in todo:
        for z in range(acq.optical_sections):
            p = s * acq.optical_sections + z
            aligned = align_plane(
                stack[:, p],
                offsets[s],
                pad_before=before,
                out_shape=shape[2:],
                order=params.order,
                chunks=(params.chunk, params.chunk),
            )
            tasks.append(dask.delayed(_write, pure=False)(cube, p, aligned))
    ctx.client.gather(ctx.client.compute(tasks))
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
    ctx.log.info("cube: wrote %d planes of slices %s onto a %s canvas", len(tasks), todo, shape)
    return StepResult(
        inputs=[results.MOSAIC],
        outputs=[results.CUBE],
        metrics={
            "planes_written": len(tasks),
            "slices_written": todo,
            "shape": list(shape),
            "pad_before": before.tolist(),
        },
        rewritten_slices=[int(s) for s in todo],
    )
