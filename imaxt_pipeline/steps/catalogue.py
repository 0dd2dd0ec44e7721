"""Per-cell and per-nucleus catalogues (Parquet tables ``cells`` and ``nuclei``).

One row per cell per plane: position in px and µm in the frame of the
segmented image (the cube when it exists), shape, mean and integrated
intensity per channel, and the max-overlap nucleus with its own features.
One Dask task per plane; rows of planes processed earlier are kept (live
processing replaces only the slices of this run). Histograms of areas and
intensities go to ``qc/catalogue_histograms.png``.
"""

from __future__ import annotations

import pandas as pd

from ..io import results
from ..io.ome import OmeImage
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
    futures = [
        ctx.client.submit(_plane_tables, image, cells, nuclei, s, p, channels, py, z_um, pure=False)
        for s, p in ctx.planes()
    ]
    planes = ctx.client.gather(futures)
    tables = {}
    for i, table_name in enumerate((results.CELLS, results.NUCLEI)):
        new = pd.concat([r[i] for r in planes], ignore_index=True) if planes else pd.DataFrame()
        tables[table_name] = results.replace_slices(ctx.output, table_name, new, ctx.slices, sort_by=("plane", "label"))
        ctx.output.write_table(table_name, tables[table_name])
    qc = ctx.output.write_png("catalogue_histograms", to_png(catalogue_histograms(tables[results.CELLS], channels)))
    cells_table = tables[results.CELLS]
    metrics = {
        "cells": int(len(cells_table)),
        "nuclei": int(len(tables[results.NUCLEI])),
        "cells_without_nucleus": int((cells_table.get("nucleus_label", pd.Series([])) == 0).sum()),
    }
    labels = [results.label_path(name, lab) for lab in ("cells", "nuclei")]
    return StepResult(
        inputs=[name, *labels],
        outputs=[results.table_path(results.CELLS), results.table_path(results.NUCLEI), qc],
        metrics=metrics,
    )


def _plane_tables(
    image: OmeImage,
    cells: OmeImage,
    nuclei: OmeImage,
    slice_: int,
    plane: int,
    channels: list[str],
    pixel_um: float,
    z_um: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ..algorithms.measure import cell_catalogue

    return cell_catalogue(
        cells.read_plane(plane),
        nuclei.read_plane(plane),
        image.read_plane(plane),
        channel_names=channels,
        pixel_size_um=pixel_um,
        z_um=plane * z_um,
        slice_index=slice_,
        plane=plane,
    )
