"""Segment nuclei and cells of every plane into ``<image>/labels/{nuclei,cells}``.

The registered ``cube`` is segmented when it exists, else the ``mosaic``.
Each plane is cut into overlapping blocks segmented on the workers (tasks ask
for a ``GPU`` resource when ``gpu_resource`` is set), and block labels are
merged into globally unique labels per plane
(:func:`imaxt_pipeline.parallel.segmentation.segment_blockwise`). Cell ``i``
is grown from nucleus ``i``. A QC overlay of one region is written to
``qc/segment_overlay.png``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..errors import StoreError
from ._base import StepContext, StepParams, StepResult

LABELS = ("nuclei", "cells")


class Params(StepParams):
    backend: Literal["watershed", "cellpose"] = Field(default="watershed", description="segmentation backend")
    nuclear_channel: int = Field(default=0, ge=0)
    cyto_channel: int | None = Field(default=1, ge=0, description="None: cells are the nuclei")
    diameter_um: float = Field(default=10.0, gt=0, description="expected nucleus diameter")
    sigma_px: float = Field(default=1.0, ge=0, description="Gaussian smoothing before thresholds")
    max_expansion_um: float = Field(default=6.0, ge=0, description="cell growth beyond the nucleus")
    block: int = Field(default=1024, ge=64, description="core block edge, px")
    overlap: int | None = Field(default=None, ge=0, description="block margin px; default 2 x diameter + growth")
    min_iou: float = Field(default=0.5, gt=0, le=1, description="IoU that merges labels across blocks")
    gpu_resource: bool = Field(default=False, description="segmentation tasks need a worker resource GPU=1")
    model: str = Field(default="shipped", description="cellpose: 'shipped', a built-in name or a weights path")
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    threads: int = Field(default=1, ge=1, description="torch threads per cellpose task")
    qc_region: int = Field(default=256, ge=32, description="edge of the QC overlay region, px")


def source_image(ctx: StepContext) -> str:
    """``"cube"`` when the registered cube exists, else ``"mosaic"``."""
    for name in ("cube", "mosaic"):
        if ctx.output.has(name):
            return name
    raise StoreError(f"{ctx.output.url}: neither 'cube' nor 'mosaic' exists; run the mosaic step first")


def image_scale(image: Any) -> tuple[float, float, float]:
    """(z, y, x) µm per pixel of level 0 of an NGFF image."""
    ome = image.group(mode="r").attrs["ome"]
    scale = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    return float(scale[-3]), float(scale[-2]), float(scale[-1])


def planes_of(ctx: StepContext) -> list[tuple[int, int]]:
    """(slice, plane) pairs to process now."""
    n = ctx.raw.acquisition.optical_sections
    return [(s, s * n + z) for s in ctx.slices for z in range(n)]


def make_segmenter(params: Params, *, pixel_um: float, plane_sample: np.ndarray, sample_scale: float) -> Any:
    """The configured segmenter with plane-wide thresholds/normalisation."""
    from ..algorithms.segmentation import WatershedSegmenter, plane_thresholds

    diameter = params.diameter_um / pixel_um
    expansion = params.max_expansion_um / pixel_um
    t_nuc, t_cell = plane_thresholds(plane_sample, nuclear_channel=params.nuclear_channel,
                                     cyto_channel=params.cyto_channel, sigma=params.sigma_px / sample_scale,
                                     max_area=int(np.pi * (diameter / sample_scale) ** 2))
    if params.backend == "watershed":
        return WatershedSegmenter(nuclear_channel=params.nuclear_channel, cyto_channel=params.cyto_channel,
                                  diameter=diameter, sigma=params.sigma_px, nuclear_threshold=t_nuc,
                                  cell_threshold=t_cell, max_expansion=expansion)
    from ..algorithms.segmentation import CellposeSegmenter, resolve_model

    nuc = plane_sample[params.nuclear_channel]
    lo, hi = np.percentile(nuc, [1.0, 99.9])
    resolve_model(params.model)  # fail here, not on a worker; workers resolve "shipped" in their own install
    return CellposeSegmenter(model=params.model, diameter=diameter,
                             nuclear_channel=params.nuclear_channel, cyto_channel=params.cyto_channel,
                             flow_threshold=params.flow_threshold, cellprob_threshold=params.cellprob_threshold,
                             normalize_lowhigh=(float(lo), float(max(hi, lo + 1e-6))), threads=params.threads,
                             sigma=params.sigma_px, cell_threshold=t_cell, max_expansion=expansion)


def _sample(image: Any, plane: int, max_px: int = 4_000_000) -> tuple[np.ndarray, float]:
    """The coarsest-needed pyramid level of a plane with at most ``max_px`` pixels, and its downscale."""
    level = 0
    while level + 1 < image.levels and np.prod(image.array(level, mode="r").shape[-2:]) > max_px:
        level += 1
    return image.read_plane(plane, level=level).astype(np.float32), float(2**level)


def _label_images(ctx: StepContext, name: str) -> dict[str, Any]:
    out = {}
    shape = ctx.output.open_image(name).shape
    for lab in LABELS:
        path = f"{name}/labels/{lab}"
        if ctx.output.has(path) and ctx.output.open_image(path).shape == (shape[1], *shape[2:]):
            out[lab] = ctx.output.open_image(path)
        else:
            out[lab] = ctx.output.create_labels(name, lab, dtype="uint32")
    return out


def run(ctx: StepContext, params: Params) -> StepResult:
    import dask

    from ..parallel.segmentation import segment_blockwise

    name = source_image(ctx)
    image = ctx.output.open_image(name)
    _, py, px = image_scale(image)
    labels = _label_images(ctx, name)
    stack = image.to_dask()
    tasks, segmenter = [], None
    for _, plane in planes_of(ctx):
        sample, scale = _sample(image, plane)
        segmenter = make_segmenter(params, pixel_um=py, plane_sample=sample, sample_scale=scale)
        lab = segment_blockwise(stack[:, plane], segmenter, block=params.block, overlap=params.overlap,
                                min_iou=params.min_iou, gpu_resource=params.gpu_resource)
        tasks.append(dask.delayed(_write_plane)(lab, labels["nuclei"], labels["cells"], plane))
    # no graph optimisation: fusing tasks would drop the GPU resource annotation
    counts = ctx.client.gather(ctx.client.compute(tasks, optimize_graph=False))
    metrics: dict[str, Any] = {"image": name, "backend": params.backend,
                               "nuclei_per_plane": {str(p): int(c) for (_, p), c in zip(planes_of(ctx), counts)}}
    if segmenter is not None:
        metrics["diameter_px"] = segmenter.expected_diameter_px
    _set_colours(labels, max(counts, default=0))
    outputs = [f"{name}/labels/{lab}" for lab in LABELS]
    if counts:
        outputs.append(_qc_overlay(ctx, image, labels["cells"], planes_of(ctx)[0][1], params.qc_region))
    return StepResult(inputs=[name], outputs=outputs, metrics=metrics)


def _write_plane(lab: np.ndarray, nuclei: Any, cells: Any, plane: int) -> int:
    nuclei.write_plane(plane, lab[0])
    cells.write_plane(plane, lab[1])
    return int(lab[0].max(initial=0))


def _set_colours(labels: dict[str, Any], n: int, limit: int = 5000) -> None:
    """NGFF ``image-label.colors``: a seeded random RGBA per label (first ``limit`` labels)."""
    rgba = np.random.default_rng(0).integers(40, 256, size=(min(n, limit), 3))
    colours = [{"label-value": i + 1, "rgba": [*map(int, c), 255]} for i, c in enumerate(rgba)]
    for img in labels.values():
        group = img.group()
        ome = dict(group.attrs["ome"])
        ome["image-label"] = {**ome["image-label"], "colors": colours}
        group.attrs["ome"] = ome


def _qc_overlay(ctx: StepContext, image: Any, cells: Any, plane: int, region: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import label2rgb

    lab = cells.read_plane(plane)
    ys, xs = np.nonzero(lab)
    cy, cx = (int(np.median(ys)), int(np.median(xs))) if len(ys) else (lab.shape[0] // 2, lab.shape[1] // 2)
    y0, x0 = max(0, cy - region // 2), max(0, cx - region // 2)
    sl = (slice(y0, y0 + region), slice(x0, x0 + region))
    img = image.read_plane(plane)[0][sl]
    lo, hi = np.percentile(img, [1, 99.5])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.2, 1.0, size=(int(lab[sl].max()) + 1, 3))
    overlay = label2rgb(lab[sl], image=grey, colors=list(colours[1:]) or None, alpha=0.35, bg_label=0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].imshow(grey, cmap="gray")
    axes[1].imshow(overlay)
    for ax, title in zip(axes, ("nuclear channel", "cells (random colours)")):
        ax.set_title(f"{title}, plane {plane}, y{y0} x{x0}")
        ax.axis("off")
    path = ctx.output.write_png("segment_overlay", fig)
    plt.close(fig)
    return path
