"""Per-cell and per-nucleus catalogues (Parquet tables ``cells`` and ``nuclei``).

One row per cell per plane: its sample-wide ``cell_id`` (the value of the
cell in the label image, ``plane << 32 | label``; ``label`` holds the same
value), position in px and µm in the frame of the segmented image (the cube
when it exists), shape, mean and integrated intensity per channel, and the
max-overlap nucleus (``nucleus_id``, 0: none) with its own features. The nuclei
table links back: ``cell_id`` of the cell grown from each nucleus (0: none).
Every column is described in ``docs/tables.md``. The label images get each
id's colour and properties (slice, plane, area, linked id) in ``image-label``.
Planes are measured in blocks of ``block`` px (one Dask task each: its labels with a 2-px
halo and its intensities, never a whole plane), whose partial sums merge by label into the
plane's tables (:func:`~imaxt_pipeline.algorithms.measure.catalogue_parts`,
:func:`~imaxt_pipeline.algorithms.measure.catalogue_from_parts`); rows of planes processed
earlier are kept (live processing replaces only the slices of this run). Histograms of areas and
intensities go to ``qc/catalogue_histograms.png``. What the cells are (grown
into a cytoplasm channel, grown from the nuclei without one, or the nuclei
themselves; ``imaxt.segment.cells_from``) is recorded in both tables' metadata
(``DataFrame.attrs["cells_from"]``, kept by Parquet) and ``imaxt.catalogue.cells_from``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from dask import delayed

from ..algorithms.measure import CatalogueParts
from ..io import results
from ..io.ome import OmeImage
from ..parallel.fusion import block_regions
from ..parallel.progress import compute_with_progress
from ..qc import catalogue_histograms, to_png
from ._base import StepContext, StepResult
from .params import CatalogueParams as Params

__all__ = ["Params", "run"]


def run(ctx: StepContext, params: Params) -> StepResult:
    name = results.source_image(ctx.output)
    image = ctx.output.open_image(name)
    nuclei, cells = results.open_label_images(ctx.output, name)
    z_um, py, _ = image.scale_zyx()
    channels = list(ctx.raw.acquisition.channels)
    tasks = [
        delayed(_plane_tables)(
            [
                delayed(_block_parts)(image, cells, nuclei, p, region)
                for region in block_regions((image.shape[-2], image.shape[-1]), params.block)
            ],
            s,
            p,
            channels,
            py,
            z_um,
        )
        for s, p in ctx.planes()
    ]
    planes = compute_with_progress(ctx.client, tasks, "catalogue", unit="planes", logger=ctx.log)
    cells_from = (ctx.output.imaxt_attrs().get("segment") or {}).get("cells_from")
    if cells_from is not None:
        ctx.output.update_imaxt_attrs("catalogue.cells_from", cells_from)
    tables = {}
    for i, table_name in enumerate((results.CELLS, results.NUCLEI)):
        new = pd.concat([r[i] for r in planes], ignore_index=True) if planes else pd.DataFrame()
        tables[table_name] = results.replace_slices(ctx.output, table_name, new, ctx.slices, sort_by=("plane", "label"))
        if cells_from is not None:
            tables[table_name].attrs["cells_from"] = cells_from
        ctx.output.write_table(table_name, tables[table_name])
    _label_display(cells, tables[results.CELLS], link="nucleus_id")
    _label_display(nuclei, tables[results.NUCLEI], link="cell_id")
    qc = ctx.output.write_png("catalogue_histograms", to_png(catalogue_histograms(tables[results.CELLS], channels)))
    cells_table = tables[results.CELLS]
    metrics = {
        "cells": int(len(cells_table)),
        "nuclei": int(len(tables[results.NUCLEI])),
        "cells_without_nucleus": int((cells_table.get("nucleus_id", pd.Series([])) == 0).sum()),
        "cells_from": cells_from,
    }
    labels = [results.label_path(name, lab) for lab in ("cells", "nuclei")]
    return StepResult(
        inputs=[name, *labels],
        outputs=[results.table_path(results.CELLS), results.table_path(results.NUCLEI), qc],
        metrics=metrics,
    )


def _label_display(image: OmeImage, table: pd.DataFrame, *, link: str) -> None:
    """``image-label`` colours and properties of every id of ``table`` (see ``OmeImage.set_label_display``)."""
    if "label" not in table.columns:
        return
    props = [
        {"slice": int(s), "plane": int(p), "area_um2": round(float(a), 3), link: int(n)}
        for s, p, a, n in zip(table["slice"], table["plane"], table["area_um2"], table[link], strict=True)
    ]
    image.set_label_display(table["label"].to_numpy(np.uint64).tolist(), props)


def _block_parts(
    image: OmeImage, cells: OmeImage, nuclei: OmeImage, plane: int, region: tuple[int, int, int, int]
) -> CatalogueParts:
    """One block's parts: its labels (plane-local) with a ``HALO``-px margin, its intensities."""
    from ..algorithms.measure import HALO, catalogue_parts
    from ..parallel.segmentation import local_labels

    y0, y1, x0, x1 = region
    h, w = cells.shape[-2:]
    ry0, ry1, rx0, rx1 = max(0, y0 - HALO), min(h, y1 + HALO), max(0, x0 - HALO), min(w, x1 + HALO)
    pad = ((ry0 - (y0 - HALO), y1 + HALO - ry1), (rx0 - (x0 - HALO), x1 + HALO - rx1))
    windows = [np.pad(local_labels(lab.array(0, mode="r")[plane, ry0:ry1, rx0:rx1]), pad) for lab in (cells, nuclei)]
    pixels = np.asarray(image.array(0, mode="r")[:, plane, y0:y1, x0:x1])
    return catalogue_parts(windows[0], windows[1], pixels, offset_yx=(y0, x0))


def _plane_tables(
    parts: list[CatalogueParts],
    slice_: int,
    plane: int,
    channels: list[str],
    pixel_um: float,
    z_um: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ..algorithms.measure import catalogue_from_parts
    from ..parallel.segmentation import LABEL_DTYPE, global_labels

    cell_t, nuc_t = catalogue_from_parts(
        parts,
        channel_names=channels,
        pixel_size_um=pixel_um,
        z_um=plane * z_um,
        slice_index=slice_,
        plane=plane,
    )
    # per-plane labels -> the ids of the label images (sample-wide, uint64)
    for table, column in ((cell_t, "label"), (cell_t, "nucleus_label"), (nuc_t, "label")):
        table[column] = global_labels(table[column].to_numpy(np.int64), plane)
    cell_t.insert(0, "cell_id", cell_t["label"].to_numpy(LABEL_DTYPE))
    cell_t.insert(list(cell_t.columns).index("nucleus_label") + 1, "nucleus_id", cell_t["nucleus_label"].to_numpy())
    grown = cell_t[cell_t["nucleus_id"] > 0].drop_duplicates("nucleus_id").set_index("nucleus_id")["cell_id"]
    nuc_t.insert(0, "nucleus_id", nuc_t["label"].to_numpy(LABEL_DTYPE))
    nuc_t.insert(1, "cell_id", grown.reindex(nuc_t["label"].to_numpy()).fillna(0).to_numpy(LABEL_DTYPE))
    return cell_t, nuc_t
