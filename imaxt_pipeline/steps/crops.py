"""Masked single-nucleus crops and the representative-slice ranking.

* Zarr array ``crops`` (N, C, h, w): a fixed-size crop centred on every
  nucleus of the ``nuclei`` catalogue, pixels outside that nucleus set to 0.
  Row ``i`` is described by row ``i`` of table ``crops`` (slice, plane,
  label = the nucleus's sample-wide id, centroid), a copy of the catalogue's
  index columns.
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

from ..io import results
from ..io.ome import OmeImage
from ._base import StepContext, StepResult
from .params import CropsParams as Params

__all__ = ["Params", "run"]

INDEX_COLUMNS = list(results.CROP_INDEX_COLUMNS)
#: Id columns of the catalogue copied after the index columns when it has them (``label`` = ``nucleus_id``).
ID_COLUMNS = ("nucleus_id", "cell_id")


def run(ctx: StepContext, params: Params) -> StepResult:
    from ..algorithms.measure import representative_ranking

    cells, catalogue = results.read_catalogue(ctx.output)
    name = results.source_image(ctx.output)
    image = ctx.output.open_image(name)
    nuclei_img = ctx.output.open_image(results.label_path(name, "nuclei"))
    channels = list(ctx.raw.acquisition.channels)
    planes = [p for _, p in ctx.planes()]
    columns = INDEX_COLUMNS + [c for c in ID_COLUMNS if c in catalogue.columns]
    new_index = catalogue[catalogue["plane"].isin(planes)][columns].sort_values(["plane", "label"])

    old_index = results.read_table_or_none(ctx.output, results.CROPS)
    rebuild = old_index is None or not ctx.output.has(results.CROPS) or bool(old_index["plane"].isin(planes).any())
    if rebuild and old_index is not None:
        # a re-processed slice: keep other slices' rows only if their crops can be re-cut from the catalogue
        keep = catalogue[~catalogue["plane"].isin(planes)][columns]
        new_index = pd.concat([keep, new_index]).sort_values(["plane", "label"])
        planes = sorted(new_index["plane"].unique().tolist())
    start = 0 if rebuild or old_index is None else len(old_index)
    array = results.crops_array(
        ctx.output,
        n=start + len(new_index),
        channels=channels,
        size=params.size,
        chunk=params.chunk,
        image=name,
        append=not rebuild,
    )

    new_index = new_index.reset_index(drop=True)
    futures, offsets = [], {}
    row = start
    for _, rows in new_index.groupby("plane", sort=True):
        plane = int(rows["plane"].iloc[0])
        offsets[plane] = row
        centroids = rows[["centroid_y_px", "centroid_x_px"]].to_numpy()
        futures.append(
            ctx.client.submit(
                _plane_crops, image, nuclei_img, plane, centroids, rows["label"].to_numpy(), params.size, pure=False
            )
        )
        row += len(rows)
    from distributed import as_completed

    for fut in as_completed(futures):
        plane, crops = fut.result()
        array[offsets[plane] : offsets[plane] + len(crops)] = crops
    index = new_index if rebuild or old_index is None else pd.concat([old_index, new_index], ignore_index=True)
    index = index.drop(columns="row", errors="ignore").reset_index(drop=True)
    index.insert(0, "row", np.arange(len(index), dtype=np.int64))
    ctx.output.write_table(results.CROPS, index)

    ranking = _ranking(cells, channels, params.ranking_channel, representative_ranking)
    ctx.output.write_table(results.REPRESENTATIVE_SLICES, ranking)
    return StepResult(
        inputs=[results.table_path(results.NUCLEI), results.table_path(results.CELLS), name],
        outputs=[results.CROPS, results.table_path(results.CROPS), results.table_path(results.REPRESENTATIVE_SLICES)],
        metrics={
            "crops": int(len(index)),
            "most_representative_slice": int(ranking["slice"].iloc[0]) if len(ranking) else None,
        },
    )


def _plane_crops(
    image: OmeImage, nuclei: OmeImage, plane: int, centroids: np.ndarray, labels: Any, size: int
) -> tuple[int, np.ndarray]:
    from ..algorithms.measure import masked_crops
    from ..parallel.segmentation import local_labels

    # the ids of one plane differ only in their low bits: compare those (exact in int64)
    crops = masked_crops(
        image.read_plane(plane).astype(np.float32),
        local_labels(nuclei.read_plane(plane)),
        centroids,
        local_labels(labels).tolist(),
        size=(size, size),
    )
    return plane, crops


def _ranking(cells: pd.DataFrame, channels: list[str], channel: int, rank: Any) -> pd.DataFrame:
    if channel >= len(channels):
        raise ValueError(f"ranking_channel {channel} >= number of channels {len(channels)}")
    if not len(cells):
        return pd.DataFrame(
            columns=["slice", "n_cells", "mean_intensity", "z_n_cells", "z_mean_intensity", "distance", "rank"]
        )
    per = cells.groupby("slice").agg(n_cells=("label", "size"), mean_intensity=(f"mean_{channels[channel]}", "mean"))
    return rank(per["n_cells"].to_numpy(), per["mean_intensity"].to_numpy(), index=per.index.to_numpy())
