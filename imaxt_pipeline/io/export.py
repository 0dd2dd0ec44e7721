"""What a processed store shows to other tools: display metadata, the root entry point, a SpatialData export.

* :func:`refresh_views` (the runner calls it after the steps): every image's ``omero``
  windows measured from its data (:meth:`~.ome.OmeImage.refresh_display`), and the store's
  root group made an NGFF image over the cube (the mosaic when there is no cube) with its
  labels (:func:`~.ome.write_entry_point`), so that a viewer pointed at ``sample.zarr``
  finds the image. Nothing is moved: ``cube/``, ``mosaic/``, ``tables/`` stay where the
  results contract puts them.
* :func:`load_spatialdata`: the processed store as an in-memory ``spatialdata.SpatialData``
  (images and labels are lazy dask arrays read from the store, the cells table annotates the
  labels ``cells`` by ``cell_id``), so nothing is copied.
* :func:`export_spatialdata` (``imaxt export-spatialdata STORE OUT``): the same object written
  by spatialdata as an on-disk SpatialData zarr beside the processed store (never inside it):
  the image (every pyramid level), the labels ``cells`` and ``nuclei`` and the table that
  annotates ``cells`` by ``cell_id`` (the label value, ``docs/tables.md``);
  ``spatialdata.read_zarr(OUT)`` loads it. Both need the ``export`` extra (``anndata``,
  ``spatialdata``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np

from ..errors import ConfigError, StoreError
from .ome import OmeImage, write_entry_point
from .output import OutputStore
from .results import CELLS, CONFIDENCE, CUBE, LABELS, MOSAIC, label_path, slices_done, source_image
from .urls import Location

__all__ = ["cells_anndata", "export_spatialdata", "load_spatialdata", "refresh_views", "viewer_layers"]

#: Columns of the cells table copied into the AnnData ``obs`` (when present).
OBS_COLUMNS = (
    "cell_id",
    "slice",
    "plane",
    "nucleus_id",
    "centroid_x_um",
    "centroid_y_um",
    "centroid_z_um",
    "centroid_x_px",
    "centroid_y_px",
    "area_px",
    "area_um2",
    "perimeter_px",
    "eccentricity",
    "feret_diameter_max_px",
)


def refresh_views(output: OutputStore) -> dict[str, Any]:
    """Data-derived ``omero`` windows for every image, and the root entry point; return the root ``ome``.

    The windows sample the planes of the slices processed so far (``imaxt.slices_done``).
    Returns ``{}`` when the store holds no image yet.
    """
    meta = output.imaxt_attrs()
    per_slice = int((meta.get("acquisition") or {}).get("optical_sections", 1))
    planes = [s * per_slice + z for s in slices_done(output) for z in range(per_slice)] or None
    for name in (MOSAIC, CONFIDENCE, CUBE):
        if output.has(name):
            output.open_image(name).refresh_display(planes)
    try:
        image = source_image(output)
    except StoreError:
        return {}
    return write_entry_point(output.root, output.open_image(image), name=str(meta.get("sample") or image))


def cells_anndata(cells: Any, channels: list[str], *, region: str = "cells") -> Any:
    """The cells table as AnnData: ``obs`` = :data:`OBS_COLUMNS` + ``region``, ``X`` = mean intensity per channel.

    ``layers["integrated"]`` holds the integrated intensities, ``obsm["spatial"]`` the
    centroids (x, y, z) in µm, ``obs_names`` the ``cell_id`` values as strings.

    Raises
    ------
    StoreError
        If the table has no ``cell_id`` (written before sample-wide ids) or repeats one.
    """
    import anndata as ad
    import pandas as pd

    if "cell_id" not in cells.columns:
        raise StoreError("the cells table has no cell_id column; re-run the segment and catalogue steps")
    if cells["cell_id"].duplicated().any():
        raise StoreError("the cells table repeats cell_id values")
    obs = cells[[c for c in OBS_COLUMNS if c in cells.columns]].reset_index(drop=True).copy()
    obs["cell_id"] = obs["cell_id"].astype(np.uint64)
    # plain object strings: anndata 0.12 cannot write pandas 3's default (Arrow) string arrays
    obs["region"] = pd.Categorical([region] * len(obs), categories=pd.Index([region], dtype=object))
    obs.index = pd.Index([str(v) for v in obs["cell_id"]], dtype=object)
    means = np.column_stack([cells[f"mean_{c}"].to_numpy(np.float32) for c in channels]) if len(channels) else None
    integrated = [cells[f"integrated_{c}"].to_numpy(np.float32) for c in channels if f"integrated_{c}" in cells]
    adata = ad.AnnData(
        X=means if means is not None else np.zeros((len(obs), 0), np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index([str(c) for c in channels], dtype=object)),
    )
    if len(integrated) == len(channels) and channels:
        adata.layers["integrated"] = np.column_stack(integrated)
    adata.obsm["spatial"] = cells[["centroid_x_um", "centroid_y_um", "centroid_z_um"]].to_numpy(np.float64)
    return adata


#: File an export leaves in its folder, so that ``overwrite`` only ever replaces our own exports.
EXPORT_MARKER = ".imaxt-export"


def export_spatialdata(
    store_url: str, out_url: str, storage_options: dict[str, Any] | None = None, *, overwrite: bool = False
) -> str:
    """Write the processed store ``store_url`` as a SpatialData zarr at ``out_url``; return ``out_url``.

    Elements are those of :func:`load_spatialdata` (image, labels ``cells`` and ``nuclei``,
    ``tables/table`` annotating ``cells`` by ``cell_id``), copied by spatialdata's own writer
    with each level's chunk shape. The processed store is only read; a failed write leaves
    nothing at ``out_url``.

    Raises
    ------
    ConfigError
        If ``out_url`` is inside or equal to ``store_url``, exists (without ``overwrite``), holds
        something that is not an export of ours, or the ``export`` extra is not installed.
    StoreError
        If the store has no image, no cell labels or no cells table.
    """
    src, dst = Location(store_url, storage_options), Location(out_url, storage_options)
    a, b = src.path().rstrip("/"), dst.path().rstrip("/")
    if b == a or b.startswith(a + "/"):
        raise ConfigError(f"{out_url}: the export goes beside the store, not into it ({store_url})")
    # Never replace what this tool did not write: overwrite applies only to an export of ours.
    present = dst.fs.exists(dst.path()) and (not dst.fs.isdir(dst.path()) or bool(dst.fs.ls(dst.path())))
    if present and not overwrite:
        raise ConfigError(f"{out_url} exists; remove it or pass overwrite")
    if present and not dst.exists(EXPORT_MARKER):
        raise ConfigError(f"{out_url} holds data that is not an export of imaxt-pipeline; choose a new place")
    sdata = load_spatialdata(store_url, storage_options)
    if "cells" not in sdata.labels:
        raise StoreError(f"{store_url}: the image has no cell labels; run the segment step first")
    if "table" not in sdata.tables:
        raise StoreError(f"{store_url}: tables/cells.parquet is missing; run the catalogue step first")
    try:
        with _regular_chunks():
            sdata.write(dst.path() if dst.is_local else dst.url, overwrite=overwrite)
    except BaseException:
        # what is there is ours (a new export, or the one overwrite replaced): a half-written one goes
        if dst.fs.exists(dst.path()):
            dst.fs.rm(dst.path(), recursive=True)
        raise
    dst.fs.pipe_file(dst.path(EXPORT_MARKER), f"imaxt-pipeline export of {store_url}\n".encode())
    return out_url


@contextmanager
def _regular_chunks() -> Iterator[None]:
    """Make spatialdata 0.7 give ome-zarr one chunk shape per pyramid level while writing rasters.

    Why: spatialdata hands ome-zarr each level's dask ``.chunks`` (one size per block,
    ``((1, 1), (30,), ...)``); with dask >= 2026.3 ome-zarr passes them on to zarr 3, which
    takes only a regular chunk shape and raises. The ``chunksize`` of the same level (its
    largest block, the zarr chunk the data was read with) is what zarr wants; ome-zarr then
    rechunks the level to it. spatialdata 0.7.3 does this conversion itself but pins dask < 2026.1.2
    (we use 2026.8); with it installed the patch changes nothing for our regular chunks.
    """
    from spatialdata._io import io_raster

    levels = getattr(io_raster, "get_pyramid_levels", None)
    if levels is None:  # a later spatialdata, writing rasters its own way
        yield
        return

    def chunk_shapes(image: Any, attr: str | None = None, n: int | None = None) -> Any:
        if attr != "chunks":
            return levels(image, attr, n)
        shapes = [tuple(int(c) for c in data.chunksize) for data in levels(image, "data")]
        return shapes if n is None else shapes[n]

    with mock.patch.object(io_raster, "get_pyramid_levels", chunk_shapes):
        yield


def load_spatialdata(store_url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The processed store as a ``spatialdata.SpatialData``, read lazily (nothing is copied).

    Elements: the image ``cube`` (``mosaic`` when there is no cube; every pyramid level, axes
    ``c, z, y, x``, channel names as ``c`` coordinates), the labels ``cells`` and ``nuclei``
    of that image (axes ``z, y, x``, values = ``cell_id`` / ``nucleus_id``) when segmented,
    and ``table`` (:func:`cells_anndata`, region ``cells``, instance key ``cell_id``) when the
    catalogue exists. Every element maps to the coordinate system ``global`` in µm (a scale of
    the store's level-0 pixel size; spatialdata derives the other levels from their shapes).

    Raises
    ------
    ConfigError
        If the ``export`` extra is not installed.
    StoreError
        If the store has neither a cube nor a mosaic.
    """
    sd = _spatialdata("load_spatialdata")
    from spatialdata.models import Image3DModel, Labels3DModel

    output = OutputStore(store_url, storage_options, mode="r")
    name = source_image(output)
    image = output.open_image(name)
    images = {name: _raster(image, ("c", "z", "y", "x"), {"c": image.channel_names})}
    Image3DModel().validate(images[name])
    labels = {}
    for lab in LABELS:
        if output.has(label_path(name, lab)):
            labels[lab] = _raster(output.open_image(label_path(name, lab)), ("z", "y", "x"), {})
            Labels3DModel().validate(labels[lab])
    tables = {"table": _cells_table(output)} if output.has_table(CELLS) and "cells" in labels else {}
    return sd.SpatialData(images=images, labels=labels, tables=tables)


def _raster(image: OmeImage, dims: tuple[str, ...], coords: dict[str, Any]) -> Any:
    """A spatialdata multiscale element (``DataTree`` of ``scale<l>``) over every level of ``image``."""
    from spatialdata.transformations import Scale, set_transformation
    from xarray import DataArray, Dataset, DataTree

    tree = DataTree.from_dict(
        {
            f"scale{level}": Dataset({"image": DataArray(image.to_dask(level), name="image", dims=dims, coords=coords)})
            for level in range(image.levels)
        }
    )
    scale = Scale(list(image.scale_zyx(0)), axes=("z", "y", "x"))
    set_transformation(tree, {"global": scale}, set_all=True)
    return tree


def _cells_table(output: OutputStore) -> Any:
    """The cells table as a spatialdata table annotating the labels ``cells`` by ``cell_id``."""
    from spatialdata.models import TableModel

    image = output.open_image(source_image(output))
    if not output.has_table(CELLS):
        raise StoreError(f"{output.url}: tables/cells.parquet is missing; run the catalogue step first")
    adata = cells_anndata(output.read_table(CELLS), image.channel_names, region="cells")
    return TableModel.parse(adata, region="cells", region_key="region", instance_key="cell_id")


def _spatialdata(feature: str) -> Any:
    """Import ``spatialdata`` quietly, or say which extra ``feature`` needs."""
    try:
        with warnings.catch_warnings():
            # spatialdata's imports warn about their own dependencies (xarray-schema's pkg_resources,
            # ome-zarr's deprecated Scaler default): nothing a user of the export can act on
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            warnings.filterwarnings("ignore", "Call to deprecated class Scaler", DeprecationWarning)
            import spatialdata as sd
    except ImportError as exc:  # pragma: no cover - the export extra is a test dependency
        raise ConfigError(f"{feature} needs the export extra (pip install 'imaxt-pipeline[export]'): {exc}") from None
    return sd


def viewer_layers(store_url: str) -> list[dict[str, Any]]:
    """What a viewer opening the store root finds, through ome-zarr's reader (what napari-ome-zarr uses).

    One entry per distinct image or label image: ``kind`` (``"image"`` or ``"labels"``), ``name``,
    ``path`` (the group the reader found it in), ``shapes`` (every pyramid level) and, for images,
    ``channels``. The cube (or mosaic) appears once, though ome-zarr also reaches it again
    through the labels' ``source`` link.

    Raises
    ------
    StoreError
        If the reader finds no image at the root (the store was written before the root entry
        point, or no step has run: ``imaxt run`` refreshes it).
    """
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    location = parse_url(store_url)
    if location is None:
        raise StoreError(f"{store_url}: not a Zarr store")
    layers: list[dict[str, Any]] = []
    seen: set[tuple[str, tuple[tuple[int, ...], ...]]] = set()
    for node in Reader(location)():
        shapes = [tuple(int(n) for n in d.shape) for d in node.data]
        kind = "labels" if node.load(Label) else "image"
        name = str(node.metadata.get("name") or node.zarr.basename())
        key = (kind if kind == "image" else f"labels:{node.zarr.basename()}", tuple(shapes))
        if not shapes or key in seen:
            continue
        seen.add(key)
        entry: dict[str, Any] = {"kind": kind, "name": name, "path": node.zarr.path, "shapes": shapes}
        if kind == "image":
            entry["channels"] = list(node.metadata.get("channel_names") or [])
        layers.append(entry)
    if not any(e["kind"] == "image" for e in layers):
        raise StoreError(f"{store_url}: no image at the store root; run the pipeline (imaxt run) to create it")
    return layers
