"""Per-cell and per-nucleus catalogues (Parquet tables ``cells`` and ``nuclei``).

One row per cell per plane: position in px and µm in the frame of the
segmented image (the cube when it exists), shape, mean and integrated
intensity per channel, and the max-overlap nucleus with its own features.
One Dask task per plane; rows of planes processed earlier are kept (live
processing replaces only the slices of this run). Histograms of areas and
intensities go to ``qc/catalogue_histograms.png``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from ._base import StepContext, StepParams, StepResult
from .segment import LABELS, image_scale, planes_of, source_image


class Params(StepParams):
    pass


def run(ctx: StepContext, params: Params) -> StepResult:
    name = source_image(ctx)
    image = ctx.output.open_image(name)
    for lab in LABELS:
        if not ctx.output.has(f"{name}/labels/{lab}"):
            raise StoreError(f"{ctx.output.url}: {name}/labels/{lab} is missing; run the segment step first")
    nuclei, cells = (ctx.output.open_image(f"{name}/labels/{lab}") for lab in LABELS)
    z_um, py, _ = image_scale(image)
    channels = list(ctx.raw.acquisition.channels)
    futures = [ctx.client.submit(_plane_tables, image, cells, nuclei, s, p, channels, py, z_um, pure=False)
               for s, p in planes_of(ctx)]
    results = ctx.client.gather(futures)
    tables = {}
    for i, table_name in enumerate(("cells", "nuclei")):
        new = pd.concat([r[i] for r in results], ignore_index=True) if results else pd.DataFrame()
        tables[table_name] = _merge_previous(ctx, table_name, new)
        ctx.output.write_table(table_name, tables[table_name])
    qc = _qc_histograms(ctx, tables["cells"], channels)
    metrics = {"cells": int(len(tables["cells"])), "nuclei": int(len(tables["nuclei"])),
               "cells_without_nucleus": int((tables["cells"].get("nucleus_label", pd.Series([])) == 0).sum())}
    return StepResult(inputs=[name, f"{name}/labels/cells", f"{name}/labels/nuclei"],
                      outputs=["tables/cells.parquet", "tables/nuclei.parquet", qc], metrics=metrics)


def _plane_tables(image: Any, cells: Any, nuclei: Any, slice_: int, plane: int, channels: list[str],
                  pixel_um: float, z_um: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ..algorithms.measure import cell_catalogue

    return cell_catalogue(cells.read_plane(plane), nuclei.read_plane(plane), image.read_plane(plane),
                          channel_names=channels, pixel_size_um=pixel_um, z_um=plane * z_um, slice_index=slice_,
                          plane=plane)


def _merge_previous(ctx: StepContext, table_name: str, new: pd.DataFrame) -> pd.DataFrame:
    if not ctx.output.has_table(table_name):
        return new
    old = ctx.output.read_table(table_name)
    if "slice" in old.columns:
        old = old[~old["slice"].isin(ctx.slices)]
    merged = pd.concat([old, new], ignore_index=True) if len(old) else new
    return merged.sort_values(["plane", "label"], ignore_index=True) if len(merged) else merged


def _qc_histograms(ctx: StepContext, cells: pd.DataFrame, channels: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(channels), figsize=(4 * (1 + len(channels)), 3.2))
    axes = np.atleast_1d(axes)
    if len(cells):
        axes[0].hist(cells["area_um2"], bins=50, color="0.3")
        if "nucleus_area_um2" in cells:
            axes[0].hist(cells["nucleus_area_um2"].dropna(), bins=50, color="tab:blue", alpha=0.6)
        for ax, ch in zip(axes[1:], channels):
            ax.hist(cells[f"mean_{ch}"], bins=50, color="tab:orange")
    axes[0].set_xlabel("area (µm²): cells grey, nuclei blue")
    for ax, ch in zip(axes[1:], channels):
        ax.set_xlabel(f"mean intensity, {ch}")
    for ax in axes:
        ax.set_ylabel("cells")
    fig.suptitle(f"{len(cells)} cells")
    path = ctx.output.write_png("catalogue_histograms", fig)
    plt.close(fig)
    return path
