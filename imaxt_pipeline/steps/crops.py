"""Masked single-nucleus crops and the representative-slice ranking.

* Zarr array ``crops`` (N, C, h, w): a fixed-size crop centred on every
  nucleus of the ``nuclei`` catalogue, pixels outside that nucleus set to 0.
  Row ``i`` is described by row ``i`` of table ``crops`` (slice, plane,
  label, centroid), a copy of the catalogue's index columns.
* Table ``representative_slices``: slices ranked by the z-scored Euclidean
  distance of (number of cells, mean nuclear intensity) to the centroid over
  all catalogued slices (NucleusNet's Table 3).

Crops are cut on the workers, one task per plane; the client writes each
plane's rows as it arrives, so chunks are never written concurrently.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from ..errors import StoreError
from ._base import StepContext, StepParams, StepResult
from .segment import planes_of, source_image

INDEX_COLUMNS = ("slice", "plane", "label", "centroid_y_px", "centroid_x_px", "centroid_y_um", "centroid_x_um",
                 "centroid_z_um", "area_px")


class Params(StepParams):
    size: int = Field(default=32, ge=4, description="crop edge, px")
    chunk: int = Field(default=256, ge=1, description="crops per Zarr chunk")
    ranking_channel: int = Field(default=0, ge=0, description="channel whose mean intensity ranks slices")


def run(ctx: StepContext, params: Params) -> StepResult:
    from ..algorithms.measure import representative_ranking

    if not (ctx.output.has_table("nuclei") and ctx.output.has_table("cells")):
        raise StoreError(f"{ctx.output.url}: tables nuclei/cells are missing; run the catalogue step first")
    name = source_image(ctx)
    image = ctx.output.open_image(name)
    nuclei_img = ctx.output.open_image(f"{name}/labels/nuclei")
    catalogue = ctx.output.read_table("nuclei")
    channels = list(ctx.raw.acquisition.channels)
    planes = [p for _, p in planes_of(ctx)]
    new_index = catalogue[catalogue["plane"].isin(planes)][list(INDEX_COLUMNS)].sort_values(["plane", "label"])

    old_index = ctx.output.read_table("crops") if ctx.output.has_table("crops") else None
    rebuild = old_index is None or "crops" not in ctx.output.root or bool(old_index["plane"].isin(planes).any())
    if rebuild and old_index is not None:
        # a re-processed slice: keep other slices' rows only if their crops can be re-cut from the catalogue
        keep = catalogue[~catalogue["plane"].isin(planes)][list(INDEX_COLUMNS)]
        new_index = pd.concat([keep, new_index]).sort_values(["plane", "label"])
        planes = sorted(new_index["plane"].unique().tolist())
    start = 0 if rebuild else len(old_index)
    n_total = start + len(new_index)
    shape = (n_total, len(channels), params.size, params.size)
    chunks = (max(1, min(params.chunk, max(n_total, 1))), len(channels), params.size, params.size)
    if rebuild:
        array = ctx.output.root.create_array("crops", shape=shape, chunks=chunks, dtype="float32", fill_value=0,
                                             overwrite=True, dimension_names=("n", "c", "y", "x"))
    else:
        array = ctx.output.root["crops"]
        array.resize(shape)
    array.attrs["imaxt"] = {"index_table": "tables/crops.parquet", "channels": channels, "image": name,
                            "description": "nucleus-centred crops, zero outside the nucleus mask"}

    new_index = new_index.reset_index(drop=True)
    futures, offsets = [], {}
    row = start
    for plane, rows in new_index.groupby("plane", sort=True):
        offsets[int(plane)] = row
        centroids = rows[["centroid_y_px", "centroid_x_px"]].to_numpy()
        futures.append(ctx.client.submit(_plane_crops, image, nuclei_img, int(plane), centroids,
                                         rows["label"].to_numpy(), params.size, pure=False))
        row += len(rows)
    from distributed import as_completed

    for fut in as_completed(futures):
        plane, crops = fut.result()
        array[offsets[plane]:offsets[plane] + len(crops)] = crops
    index = new_index if rebuild else pd.concat([old_index, new_index], ignore_index=True)
    index = index.drop(columns="row", errors="ignore").reset_index(drop=True)
    index.insert(0, "row", np.arange(len(index), dtype=np.int64))
    ctx.output.write_table("crops", index)

    ranking = _ranking(ctx.output.read_table("cells"), channels, params.ranking_channel, representative_ranking)
    ctx.output.write_table("representative_slices", ranking)
    return StepResult(inputs=["tables/nuclei.parquet", "tables/cells.parquet", name],
                      outputs=["crops", "tables/crops.parquet", "tables/representative_slices.parquet"],
                      metrics={"crops": int(len(index)), "most_representative_slice":
                               int(ranking["slice"].iloc[0]) if len(ranking) else None})


def _plane_crops(image: Any, nuclei: Any, plane: int, centroids: np.ndarray, labels: np.ndarray, size: int
                 ) -> tuple[int, np.ndarray]:
    from ..algorithms.measure import masked_crops

    crops = masked_crops(image.read_plane(plane).astype(np.float32), nuclei.read_plane(plane), centroids, labels,
                         size=(size, size))
    return plane, crops


def _ranking(cells: pd.DataFrame, channels: list[str], channel: int, rank: Any) -> pd.DataFrame:
    if channel >= len(channels):
        raise ValueError(f"ranking_channel {channel} >= number of channels {len(channels)}")
    if not len(cells):
        return pd.DataFrame(columns=["slice", "n_cells", "mean_intensity", "z_n_cells", "z_mean_intensity",
                                     "distance", "rank"])
    per = cells.groupby("slice").agg(n_cells=("label", "size"), mean_intensity=(f"mean_{channels[channel]}", "mean"))
    return rank(per["n_cells"].to_numpy(), per["mean_intensity"].to_numpy(), index=per.index.to_numpy())
