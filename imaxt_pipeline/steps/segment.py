"""Segment nuclei and cells of every plane into ``<image>/labels/{nuclei,cells}``.

The registered ``cube`` is segmented when it exists, else the ``mosaic``.
Each plane is cut into overlapping blocks segmented on the workers (tasks ask
for a ``GPU`` resource when ``gpu_resource`` is set), and block labels are
merged into unique labels per plane (the IoU matches of
:func:`imaxt_pipeline.parallel.segmentation.segment_blockwise`), written as
sample-wide uint64 ids ``plane << 32 | label``
(:func:`~imaxt_pipeline.parallel.segmentation.global_labels`): every value of
the 3-D label images is one object of one plane, and re-segmenting a plane
never renumbers another. Labels are written block by block, with their pyramid
(:func:`~imaxt_pipeline.parallel.segmentation.segment_plane_labels`, then
:func:`~imaxt_pipeline.parallel.pyramid.reduce_levels`): no task holds a plane.
Cell ``i`` is grown from nucleus ``i`` (same id).
Channel roles are resolved once from the acquisition's channel names or the
configuration (:func:`~imaxt_pipeline.steps._channels.resolve_roles`); without a
cytoplasm channel (e.g. a DAPI-only sample) cells are grown from the nuclei by
``max_expansion_um`` (``cyto_channel: null``: cells are the nuclei). What the
cells are is recorded in ``imaxt.segment.cells_from`` for the catalogue.
Each label gets a fixed colour (``image-label.colors``). A QC overlay of one
region is written to ``qc/segment_overlay.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..io import results
from ..io.ome import OmeImage
from ..qc import segment_overlay, to_png
from ._base import StepContext, StepResult
from ._channels import ChannelRoles, resolve_roles
from .params import SegmentParams as Params

__all__ = ["GrownCells", "Params", "make_segmenter", "resolved_params", "run"]


def resolved_params(params: Params, channels: list[str]) -> tuple[Params, ChannelRoles]:
    """``params`` with integer channel indices for this sample's ``channels``, and the roles.

    Raises
    ------
    ConfigError
        If a configured channel is not a channel of the sample.
    """
    roles = resolve_roles(channels, params.nuclear_channel, params.cyto_channel)
    return params.model_copy(update={"nuclear_channel": roles.nuclear, "cyto_channel": roles.cyto}), roles


@dataclass(frozen=True)
class GrownCells:
    """A segmenter whose cells are its nuclei grown by ``distance_px`` (no cytoplasm channel).

    Labels expand into the background only, never into a neighbour (each pixel goes to the nearest
    nucleus), so cell ``i`` still contains nucleus ``i``.
    """

    inner: Any
    distance_px: float

    @property
    def expected_diameter_px(self) -> float:
        return float(self.inner.expected_diameter_px)

    @property
    def growth(self) -> Any:
        return self.inner.growth

    def segment(self, image: Any) -> Any:
        from skimage.segmentation import expand_labels

        from ..algorithms.segmentation import Segmentation

        seg = self.inner.segment(image)
        cells = expand_labels(seg.nuclei, distance=self.distance_px)
        return Segmentation(nuclei=seg.nuclei, cells=np.asarray(cells, np.int32))


def make_segmenter(params: Params, *, pixel_um: float, plane_sample: np.ndarray, sample_scale: float) -> Any:
    """The configured segmenter with plane-wide thresholds/normalisation.

    ``params`` carry integer channel indices (:func:`resolved_params`).
    """
    from ..algorithms.segmentation import CellGrowth, WatershedSegmenter, plane_thresholds

    if not isinstance(params.nuclear_channel, int) or isinstance(params.cyto_channel, str):
        raise TypeError("make_segmenter needs resolved channel indices (steps.segment.resolved_params)")
    diameter = params.diameter_um / pixel_um
    t_nuc, t_cell = plane_thresholds(
        plane_sample,
        nuclear_channel=params.nuclear_channel,
        cyto_channel=params.cyto_channel,
        sigma=params.sigma_px / sample_scale,
        max_area=int(np.pi * (diameter / sample_scale) ** 2),
    )
    growth = CellGrowth(max_distance_um=params.max_expansion_um, pixel_size_um=pixel_um, threshold=t_cell)
    if params.backend == "watershed":
        return WatershedSegmenter(
            nuclear_channel=params.nuclear_channel,
            cyto_channel=params.cyto_channel,
            diameter=diameter,
            sigma=params.sigma_px,
            nuclear_threshold=t_nuc,
            growth=growth,
        )
    from ..algorithms.segmentation import CellposeSegmenter
    from ..io.weights import resolve_cellpose_model

    nuc = plane_sample[params.nuclear_channel]
    lo, hi = np.percentile(nuc, [1.0, 99.9])
    resolve_cellpose_model(params.model)  # fail here, not on a worker; workers resolve "shipped" in their own install
    return CellposeSegmenter(
        model=params.model,
        diameter=diameter,
        nuclear_channel=params.nuclear_channel,
        cyto_channel=params.cyto_channel,
        flow_threshold=params.flow_threshold,
        cellprob_threshold=params.cellprob_threshold,
        normalize_lowhigh=(float(lo), float(max(hi, lo + 1e-6))),
        threads=params.threads,
        sigma=params.sigma_px,
        growth=growth,
    )


def _sample(image: OmeImage, plane: int, max_px: int = 4_000_000) -> tuple[np.ndarray, float]:
    """The coarsest-needed pyramid level of a plane with at most ``max_px`` pixels, and its downscale."""
    level = 0
    while level + 1 < image.levels and np.prod(image.level_shape(level)[-2:]) > max_px:
        level += 1
    return image.read_plane(plane, level=level).astype(np.float32), float(2**level)


def _label_images(ctx: StepContext, name: str, block: int) -> dict[str, OmeImage]:
    """The label images of ``name``, created anew unless they exist on the image's grid with uint64 ids.

    New ones get the chunks of a kept one, else chunks dividing ``block``
    (:func:`~imaxt_pipeline.parallel.segmentation.label_chunk`), so that segmentation blocks write whole chunks.
    """
    from ..io.ome import create_labels
    from ..parallel.segmentation import LABEL_DTYPE, label_chunk

    image = ctx.output.open_image(name)
    shape = image.shape
    kept: dict[str, OmeImage] = {}
    for lab in results.LABELS:
        path = results.label_path(name, lab)
        old = ctx.output.open_image(path) if ctx.output.has(path) else None
        if old is not None and old.shape == (shape[1], *shape[2:]) and old.array(0, mode="r").dtype == LABEL_DTYPE:
            kept[lab] = old
        elif old is not None and old.shape == (shape[1], *shape[2:]):
            ctx.log.warning("segment: %s holds per-plane labels of another dtype; recreating it", path)
    chunks = (label_chunk(block), label_chunk(block))
    if kept:
        arr = next(iter(kept.values())).array(0, mode="r")
        chunks = (int(arr.chunks[-2]), int(arr.chunks[-1]))
    return {
        lab: kept.get(lab) or create_labels(image, lab, dtype=LABEL_DTYPE.name, chunks_yx=chunks)
        for lab in results.LABELS
    }


def _block(ctx: StepContext, labels: dict[str, OmeImage], block: int) -> int:
    """``block``, rounded up where existing label images have chunks it does not start on."""
    from ..parallel.segmentation import aligned_block

    arr = labels["nuclei"].array(0, mode="r")
    chunks = (int(arr.chunks[-2]), int(arr.chunks[-1]))
    aligned = aligned_block(block, chunks, (int(arr.shape[-2]), int(arr.shape[-1])))
    if aligned != block:
        ctx.log.warning(
            "segment: block %d px does not start on the label chunks %s; segmenting in blocks of %d px",
            block,
            chunks,
            aligned,
        )
    return aligned


def run(ctx: StepContext, params: Params) -> StepResult:
    from ..parallel.progress import compute_with_progress
    from ..parallel.pyramid import reduce_levels
    from ..parallel.segmentation import local_labels, segment_plane_labels, written_levels

    channels = list(ctx.raw.acquisition.channels)
    params, roles = resolved_params(params, channels)
    grow = roles.cyto is None and roles.grow and params.max_expansion_um > 0
    cells_from = roles.cells_from(channels, params.max_expansion_um if grow else 0.0)
    ctx.log.info("segment: nuclear channel %s, cells from %s", channels[roles.nuclear], cells_from)
    name = results.source_image(ctx.output)
    image = ctx.output.open_image(name)
    _, py, _ = image.scale_zyx()
    labels = _label_images(ctx, name, params.block)
    block = _block(ctx, labels, params.block)
    stack = image.to_dask()
    segmentation: list[Any] = []
    writes: list[list[Any]] = []
    segmenter: Any = None
    for _, plane in ctx.planes():
        sample, scale = _sample(image, plane)
        segmenter = make_segmenter(params, pixel_um=py, plane_sample=sample, sample_scale=scale)
        if grow:
            segmenter = GrownCells(segmenter, params.max_expansion_um / py)
        seg, write = segment_plane_labels(
            stack[:, plane],
            segmenter,
            labels["nuclei"],
            labels["cells"],
            plane,
            block=block,
            overlap=params.overlap,
            min_iou=params.min_iou,
            gpu_resource=params.gpu_resource,
        )
        segmentation += seg
        writes.append(write)
    # no graph optimisation: fusing tasks would drop the GPU resource annotation
    done = compute_with_progress(
        ctx.client,
        [*segmentation, *(w for plane_writes in writes for w in plane_writes)],
        "segment",
        unit="blocks",
        logger=ctx.log,
        optimize_graph=False,
    )[len(segmentation) :]
    counts, i = [], 0
    for plane_writes in writes:
        counts.append(max(done[i : i + len(plane_writes)], default=0))
        i += len(plane_writes)
    planes = [p for _, p in ctx.planes()]
    chunk = int(labels["nuclei"].array(0, mode="r").chunks[-1])
    for lab, img in labels.items():
        reduce_levels(ctx.client, img, planes, written=written_levels(img), chunk=chunk, label=f"segment {lab}")
    per_plane = {str(p): int(c) for p, c in zip(planes, counts, strict=True)}
    metrics: dict[str, Any] = {
        "image": name,
        "backend": params.backend,
        "nuclei_per_plane": per_plane,
        "cells_from": cells_from,
    }
    ctx.output.update_imaxt_attrs("segment", {"channels": roles.as_dict(channels), "cells_from": cells_from})
    if segmenter is not None:
        metrics["diameter_px"] = segmenter.expected_diameter_px
    _set_colours(labels, {p: int(c) for p, c in zip(planes, counts, strict=True)})
    outputs = [results.label_path(name, lab) for lab in results.LABELS]
    if counts:
        plane = planes[0]
        cells_local = local_labels(labels["cells"].read_plane(plane))  # the overlay colours labels 1..max
        fig = segment_overlay(image.read_plane(plane)[0], cells_local, plane=plane, region=params.qc_region)
        outputs.append(ctx.output.write_png("segment_overlay", to_png(fig)))
    return StepResult(inputs=[name], outputs=outputs, metrics=metrics)


def _set_colours(labels: dict[str, OmeImage], counts: dict[int, int]) -> None:
    """NGFF ``image-label.colors``: a fixed colour per id (ids of the planes segmented now, plus the
    colours already stored for other planes), while there are at most ``MAX_LABEL_METADATA`` ids."""
    from ..parallel.segmentation import global_labels, label_planes

    new = [int(v) for p, n in sorted(counts.items()) for v in global_labels(np.arange(1, n + 1), p)]
    for img in labels.values():
        meta = cast(dict[str, Any], img.group(mode="r").attrs["ome"]).get("image-label", {})
        stored = [int(c["label-value"]) for c in meta.get("colors", [])]
        kept = [v for v, p in zip(stored, label_planes(np.asarray(stored, np.uint64)), strict=True) if p not in counts]
        img.set_label_display(sorted(kept + new))
