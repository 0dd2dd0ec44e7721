"""OME-Zarr (NGFF 0.5, zarr v3) images and labels written plane by plane or block by block.

Arrays are created up front with their final shape, then each plane (one
physical slice / optical section) is written independently, with its pyramid
levels, as soon as it is ready (:meth:`OmeImage.write_plane`), or region by
region at one level (:meth:`OmeImage.write_region`, for writers that build
their own block pyramid). Chunks never span two planes, so workers can write
different planes concurrently without coordination. Every pyramid level is
made by the one reducer :func:`~imaxt_pipeline.algorithms.fusion.downsample`
(mean with edge replication for intensities, nearest for labels).

Metadata is built with the ome-zarr-models models (validated as it is written):
each level's ``scale`` and ``translation`` (a mean-downsampled level ``l`` is
shifted by ``(2**l - 1) / 2`` level-0 pixels, the centre of the block it
averages; label levels take the block's top-left sample and are not shifted),
the reducer (``type`` and ``metadata.method``), and display settings:
:meth:`OmeImage.refresh_display` sets each channel's ``omero`` window from the
data, :meth:`OmeImage.set_label_display` the colours and properties of labels.
:func:`write_entry_point` makes a store's root group an NGFF image over one of
its images (``<image>/0..n``), so that readers opening the store root find it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import zarr
from ome_zarr_models.common.omero import Channel, Omero, Window
from ome_zarr_models.v05.axes import Axis
from ome_zarr_models.v05.image_label_types import Color, Label, Property, Source
from ome_zarr_models.v05.multiscales import Dataset, Multiscale
from zarr.codecs import BloscCodec, BloscShuffle

from .. import __version__
from ..algorithms.fusion import downsample
from .urls import Location

NGFF_VERSION = "0.5"
#: Codec of every image and label array: blosc lz4 level 1 with byte shuffle. On float32 mosaic
#: blocks it writes ~6x faster than the raw tiles' zstd-5 bitshuffle for ~7 % more bytes
#: (``benchmarks/fusion_codecs.py``); written once per block, read by viewers many times.
IMAGE_COMPRESSOR = BloscCodec(cname="lz4", clevel=1, shuffle=BloscShuffle.shuffle)
#: Every pyramid goes down until the largest side of its coarsest level is at most this (px).
PYRAMID_MIN_PX = 512
#: Pyramid levels one block of work writes (its level-0 edge is ``chunk * 2**(BLOCK_LEVELS - 1)``);
#: coarser levels are reduced from level ``BLOCK_LEVELS - 1`` in later rounds of blocks.
BLOCK_LEVELS = 3
#: The reducer of each pyramid (``multiscales[0].metadata``): intensities, then labels.
REDUCERS: dict[bool, dict[str, Any]] = {
    False: {
        "type": "mean",
        "method": "imaxt_pipeline.algorithms.fusion.downsample_mean",
        "description": "2x2 block mean; an odd last row/column is the mean of the pixels that exist",
    },
    True: {
        "type": "nearest",
        "method": "imaxt_pipeline.algorithms.fusion.downsample_labels",
        "description": "top-left sample of each 2x2 block",
    },
}
#: Robust display range: ``omero`` window start/end are these percentiles of the sampled data.
WINDOW_PERCENTILES = (0.1, 99.9)
#: Labels given colours and properties in ``image-label`` (beyond this viewers pick their own colours).
MAX_LABEL_METADATA = 10_000
Mode = Literal["r", "r+", "a", "w", "w-"]
_COLOURS = ("00FFFF", "FF00FF", "FFFF00", "00FF00", "FF0000", "0000FF", "FFFFFF")


@dataclass(frozen=True)
class OmeImage:
    """A multiscale NGFF image (axes c, z, y, x, or z, y, x for labels) in a store.

    Only a location and a group path are held, so instances pickle cheaply and
    can be sent to Dask workers, which reopen the arrays they write.
    """

    location: Location
    path: str
    levels: int
    is_label: bool = False

    def group(self, mode: Mode = "r+") -> zarr.Group:
        return zarr.open_group(self.location.zarr_store(read_only=mode == "r"), path=self.path, mode=mode)

    def array(self, level: int = 0, mode: Mode = "r+") -> zarr.Array[Any]:
        return _array(self.group(mode), str(level))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array(0, mode="r").shape)

    @property
    def channel_names(self) -> list[str]:
        """The ``omero`` channel labels (empty for labels)."""
        channels = _ome(self.group(mode="r")).get("omero", {}).get("channels", [])
        return [str(ch.get("label", i)) for i, ch in enumerate(channels)]

    def level_shape(self, level: int) -> tuple[int, ...]:
        """Shape of pyramid level ``level``."""
        return tuple(self.array(level, mode="r").shape)

    def scale_zyx(self, level: int = 0) -> tuple[float, float, float]:
        """(z, y, x) µm per pixel of pyramid level ``level``."""
        ome = _ome(self.group(mode="r"))
        scale = ome["multiscales"][0]["datasets"][level]["coordinateTransformations"][0]["scale"]
        return float(scale[-3]), float(scale[-2]), float(scale[-1])

    def write_plane(self, z: int, data: np.ndarray) -> None:
        """Write plane ``z`` (``(c, y, x)``, or ``(y, x)`` for labels) and its pyramid."""
        group = self.group()
        level_data = np.asarray(data)
        expected = _array(group, "0").shape[-2:]
        if level_data.shape[-2:] != expected:
            raise ValueError(f"{self.path}: plane of shape {level_data.shape[-2:]}, the image's is {expected}")
        for level in range(self.levels):
            if level:
                level_data = downsample(level_data, label=self.is_label)
            self._put(_array(group, str(level)), z, (0, 0), level_data)

    def write_region(self, z: int, level: int, origin_yx: tuple[int, int], data: np.ndarray) -> None:
        """Write one block of plane ``z`` at pyramid level ``level`` (no pyramid is made).

        ``data`` is ``(c, h, w)`` (``(h, w)`` for labels) and goes to
        ``[origin_y:origin_y + h, origin_x:origin_x + w]`` of that level;
        intensities are cast to the image's dtype.
        """
        self._put(self.array(level), z, origin_yx, np.asarray(data))

    def write_block(
        self, z: int, origin_yx: tuple[int, int], data: np.ndarray, *, level: int = 0, n_levels: int = 1
    ) -> None:
        """Write one block of plane ``z`` at ``level`` and the next ``n_levels - 1`` levels made from it.

        ``origin_yx`` is in ``level`` px. The block must start on a multiple of
        ``2**(n_levels - 1)`` chunks and end there or at the image edge (see
        :func:`block_edge`), so that no two blocks share a chunk at any level and the
        levels equal those :meth:`write_plane` makes from the whole plane.
        """
        y0, x0 = (int(v) for v in origin_yx)
        block = np.asarray(data)
        for i in range(min(n_levels, self.levels - level)):
            if i:
                block = downsample(block, label=self.is_label)
            self._put(self.array(level + i), z, (y0 >> i, x0 >> i), block)

    def reduce_block(self, z: int, level: int, region: tuple[int, int, int, int], n_levels: int) -> None:
        """Levels ``level + 1 .. level + n_levels`` of ``region`` (``y0, y1, x0, x1`` of ``level``), from ``level``."""
        y0, y1, x0, x1 = (int(v) for v in region)
        arr = self.array(level)
        data = np.asarray(arr[z, y0:y1, x0:x1] if self.is_label else arr[:, z, y0:y1, x0:x1])
        self.write_block(
            z, (y0 // 2, x0 // 2), downsample(data, label=self.is_label), level=level + 1, n_levels=n_levels
        )

    def _put(self, arr: zarr.Array[Any], z: int, origin_yx: tuple[int, int], data: np.ndarray) -> None:
        y0, x0 = (int(v) for v in origin_yx)
        rows, cols = slice(y0, y0 + data.shape[-2]), slice(x0, x0 + data.shape[-1])
        if self.is_label:
            arr[z, rows, cols] = data.astype(arr.dtype, copy=False)
            return
        values = _cast(data, arr.dtype)
        if values.any():
            # zarr would compare every chunk with the fill value (a void-dtype array_equal over its
            # bytes, ~15 % of a float block's write): a block with data writes all its chunks (a
            # zero chunk reads back the same), an empty block still leaves none (deletes stale ones)
            arr = arr.with_config({"write_empty_chunks": True})
        arr[:, z, rows, cols] = values

    def set_label_colors(self, colors: list[dict[str, Any]]) -> None:
        """NGFF ``image-label.colors`` of a label image (``[{"label-value": int, "rgba": [r, g, b, a]}]``).

        Properties (if any) are dropped unless they name the same label values.
        """
        label = self._label_meta()
        properties = label.get("properties")
        values = {int(c["label-value"]) for c in colors}
        keep = properties if properties and {int(p["label-value"]) for p in properties} == values else None
        self._write_label_meta(colors, keep)

    def set_label_display(
        self, values: Sequence[int], properties: Sequence[dict[str, Any]] | None = None, *, limit: int | None = None
    ) -> bool:
        """Colours (:func:`label_colour`, one per value) and optional properties of labels ``values``.

        ``properties[i]`` describes ``values[i]`` (JSON scalars). More than ``limit``
        (:data:`MAX_LABEL_METADATA`) labels get neither: viewers then colour labels
        themselves. Returns whether they were written.
        """
        limit = MAX_LABEL_METADATA if limit is None else limit
        ids = [int(v) for v in values]
        if properties is not None and len(properties) != len(ids):
            raise ValueError(f"{len(properties)} properties for {len(ids)} labels")
        if len(ids) > limit:
            self._write_label_meta([], None)
            return False
        colours = [{"label-value": v, "rgba": list(label_colour(v))} for v in ids]
        props = None if properties is None else [{"label-value": v, **p} for v, p in zip(ids, properties, strict=True)]
        self._write_label_meta(colours, props)
        return True

    def _label_meta(self) -> dict[str, Any]:
        if not self.is_label:
            raise ValueError(f"{self.path}: not a label image")
        return dict(_ome(self.group(mode="r")).get("image-label", {}))

    def _write_label_meta(self, colors: list[dict[str, Any]], properties: list[dict[str, Any]] | None) -> None:
        self._label_meta()
        group = self.group()
        ome = _ome(group)
        model = Label(
            version="0.5",
            source=Source(image="../../"),
            colors=tuple(Color.model_validate(c) for c in colors),
            properties=None if properties is None else tuple(Property.model_validate(p) for p in properties),
        )
        ome["image-label"] = _dump(model)
        group.attrs["ome"] = ome

    def refresh_display(self, planes: Sequence[int] | None = None, *, max_px: int = 1_000_000) -> list[dict[str, Any]]:
        """Set every channel's ``omero`` window from the data; return the windows.

        ``start``/``end`` are the :data:`WINDOW_PERCENTILES` of the pixels of ``planes``
        (all when ``None``; at most 32, evenly spread) at the finest pyramid level whose
        planes have at most ``max_px`` pixels (else the coarsest), pixels still at the fill
        value 0 left out; ``min``/``max`` span the dtype for integers and the sampled data
        (and the window) for floats. A channel with no data keeps ``[0, 1]`` (floats).
        """
        if self.is_label:
            raise ValueError(f"{self.path}: a label image has no channel windows")
        group = self.group()
        ome = _ome(group)
        level = 0
        while level + 1 < self.levels and np.prod(self.level_shape(level)[-2:]) > max_px:
            level += 1
        arr = _array(group, str(level))
        n_planes = int(arr.shape[1])
        chosen = sorted({int(p) for p in (range(n_planes) if planes is None else planes) if 0 <= int(p) < n_planes})
        if len(chosen) > 32:
            chosen = [chosen[int(i)] for i in np.linspace(0, len(chosen) - 1, 32).round()]
        data = [np.asarray(arr[:, z]) for z in chosen]
        windows = [_window(np.stack([d[c] for d in data]) if data else None, arr.dtype) for c in range(arr.shape[0])]
        old = ome.get("omero", {}).get("channels", [])
        channels = []
        for c in range(arr.shape[0]):
            before = old[c] if c < len(old) else {}
            colour = before.get("color", _channel_colour(c, arr.shape[0]))
            channels.append(
                Channel.model_validate(
                    {
                        "color": colour,
                        "window": Window(**windows[c]),
                        "label": before.get("label", str(c)),
                        "active": True,
                    }
                )
            )
        ome["omero"] = {
            **_dump(Omero(channels=channels)),
            "rdefs": ome.get("omero", {}).get("rdefs", {"model": "color"}),
        }
        group.attrs["ome"] = ome
        return windows

    def read_plane(self, z: int, level: int = 0) -> np.ndarray:
        arr = self.array(level, mode="r")
        return np.asarray(arr[z] if self.is_label else arr[:, z])

    def to_dask(self, level: int = 0) -> Any:
        import dask.array as da

        return da.from_zarr(self.array(level, mode="r"))


def pyramid_levels(shape_yx: Sequence[int], *, min_px: int = PYRAMID_MIN_PX) -> int:
    """Levels of a full pyramid: halved until the largest side is at most ``min_px``.

    >>> pyramid_levels((512, 300)), pyramid_levels((513, 10)), pyramid_levels((20_000, 20_000))
    (1, 2, 7)
    """
    side, levels = max(int(v) for v in shape_yx), 1
    while side > min_px:
        side, levels = -(-side // 2), levels + 1
    return levels


def block_edge(chunk: int, levels: int) -> int:
    """Level-0 edge of a block of work that writes its own ``min(levels, BLOCK_LEVELS)`` levels.

    >>> block_edge(512, 7), block_edge(512, 2), block_edge(64, 1)
    (2048, 1024, 64)
    """
    return int(chunk) * 2 ** (max(1, min(int(levels), BLOCK_LEVELS)) - 1)


def check_shard(shard_yx: int | None, chunk: int, levels: int) -> None:
    """Refuse a shard edge that is not a multiple of ``chunk`` dividing :func:`block_edge` (two writers per shard).

    >>> check_shard(1024, 512, 5)
    >>> check_shard(768, 512, 5)
    Traceback (most recent call last):
    ...
    ValueError: shard 768 px must be a multiple of the chunk (512) dividing the block edge (2048)
    """
    edge = block_edge(chunk, levels)
    if shard_yx is not None and (shard_yx % chunk or edge % shard_yx):
        raise ValueError(
            f"shard {shard_yx} px must be a multiple of the chunk ({chunk}) dividing the block edge ({edge})"
        )


def create_image(
    location: Location,
    path: str,
    *,
    shape_czyx: Sequence[int],
    scale_zyx_um: Sequence[float],
    channel_names: Sequence[str],
    dtype: str | np.dtype = "uint16",
    levels: int = 3,
    chunks_yx: tuple[int, int] = (512, 512),
    name: str | None = None,
    window: tuple[float, float] | None = None,
    shard_yx: int | None = None,
) -> OmeImage:
    """Create (or overwrite) an NGFF multiscale image with empty arrays.

    ``shard_yx`` (px, a multiple of the chunk edge) stores level 0 in zarr shards of that edge:
    fewer, larger objects for object stores. Block writers must then write whole shards
    (:func:`block_edge` a multiple of it; checked by :func:`check_shard`).

    The ``omero`` windows start as ``window`` (else the dtype's range for integers,
    ``[0, 1]`` for floats) until :meth:`OmeImage.refresh_display` measures the data.
    """
    c, z, y, x = (int(v) for v in shape_czyx)
    if len(channel_names) != c:
        raise ValueError(f"channel_names has {len(channel_names)} names for {c} channels")
    root = zarr.open_group(location.zarr_store(), mode="a")
    group = root.create_group(path, overwrite=True)
    for level in range(levels):
        f = 2**level
        shp = (c, z, -(-y // f), -(-x // f))
        chunks = (1, 1, *_chunks(shp[2:], chunks_yx))
        shards = (1, 1, *_chunks(shp[2:], (shard_yx, shard_yx))) if shard_yx and level == 0 else None
        if shards and any(s % c for s, c in zip(shards[2:], chunks[2:], strict=True)):
            shards = None  # a level smaller than one shard: a single chunk is already one object
        group.create_array(
            str(level),
            shape=shp,
            chunks=chunks,
            shards=shards,
            dtype=dtype,
            compressors=[IMAGE_COMPRESSOR],
            fill_value=0,
            dimension_names=("c", "z", "y", "x"),
        )
    multiscale = _multiscale(name or path, ("c", "z", "y", "x"), (1.0, *scale_zyx_um), levels, label=False)
    kind = np.dtype(dtype).kind
    lo, hi = (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)) if kind in "ui" else (0.0, 1.0)
    start, end = (float(window[0]), float(window[1])) if window else (lo, hi)
    omero = Omero(
        channels=[
            Channel.model_validate(
                {
                    "color": _channel_colour(i, c),
                    "window": Window(min=min(lo, start), max=max(hi, end), start=start, end=end),
                    "label": str(n),
                    "active": True,
                }
            )
            for i, n in enumerate(channel_names)
        ]
    )
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [multiscale],
        "omero": {**_dump(omero), "rdefs": {"model": "color" if c > 1 else "greyscale"}},
    }
    return OmeImage(location, path, levels)


def create_labels(
    image: OmeImage,
    name: str,
    *,
    dtype: str = "uint64",
    chunks_yx: tuple[int, int] = (512, 512),
) -> OmeImage:
    """Create an NGFF label image ``<image>/labels/<name>`` matching ``image``'s grid."""
    root = image.group()
    labels = root.require_group("labels")
    ome = _ome(labels) if "ome" in labels.attrs else {"version": NGFF_VERSION}
    names = list(ome.get("labels", []))
    if name not in names:
        names.append(name)
    labels.attrs["ome"] = {**ome, "version": NGFF_VERSION, "labels": names}
    group = labels.create_group(name, overwrite=True)
    for level in range(image.levels):
        c, z, y, x = _array(root, str(level)).shape
        group.create_array(
            str(level),
            shape=(z, y, x),
            chunks=(1, *_chunks((y, x), chunks_yx)),
            dtype=dtype,
            compressors=[IMAGE_COMPRESSOR],
            fill_value=0,
            dimension_names=("z", "y", "x"),
        )
    scale0 = _ome(root)["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][1:]
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(name, ("z", "y", "x"), scale0, image.levels, label=True)],
        "image-label": _dump(Label(version="0.5", source=Source(image="../../"), colors=())),
    }
    return OmeImage(image.location, f"{image.path}/labels/{name}", image.levels, is_label=True)


def write_entry_point(root: zarr.Group, image: OmeImage, *, name: str) -> dict[str, Any]:
    """Make ``root`` (the group holding ``image``) an NGFF image over ``image``'s arrays.

    ``root.attrs["ome"]`` gets ``image``'s multiscales with dataset paths
    ``<image>/<level>``, its ``omero`` settings, and ``labels``: the paths of its label
    images (``<image>/labels/<name>``), which ome-zarr's reader follows from the root. No
    array is moved or copied; other root attributes are kept. Returns what was written.

    Raises
    ------
    ValueError
        If ``image`` is not an intensity image directly under ``root``.
    """
    if image.is_label or "/" in image.path.strip("/"):
        raise ValueError(f"{image.path}: the entry point must be an image directly under the store root")
    src = _ome(image.group(mode="r"))
    multiscale = dict(src["multiscales"][0])
    multiscale["name"] = name
    multiscale["datasets"] = [{**d, "path": f"{image.path}/{d['path']}"} for d in multiscale["datasets"]]
    entry: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [_dump(Multiscale.model_validate(multiscale))]}
    if "omero" in src:
        entry["omero"] = src["omero"]
    group = image.group(mode="r")
    if "labels" in group and "ome" in group["labels"].attrs:
        names = _ome(cast(zarr.Group, group["labels"])).get("labels", [])
        entry["labels"] = [f"{image.path}/labels/{n}" for n in names]
    root.attrs["ome"] = entry
    return entry


def label_colour(value: int) -> tuple[int, int, int, int]:
    """A fixed, bright RGBA for label ``value`` (a hash of the value: the same cell has the same colour anywhere).

    >>> label_colour(7) == label_colour(7), label_colour(7) != label_colour(8), label_colour(7)[3]
    (True, True, 255)
    """
    h = (int(value) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 31
    h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 29
    r, g, b = (40 + ((h >> shift) & 0xFF) * 215 // 255 for shift in (0, 8, 16))
    return int(r), int(g), int(b), 255


def open_image(location: Location, path: str) -> OmeImage:
    group = zarr.open_group(location.zarr_store(read_only=True), path=path, mode="r")
    ome = _ome(group)
    levels = len(ome["multiscales"][0]["datasets"])
    return OmeImage(location, path, levels, is_label="image-label" in ome)


def _ome(group: zarr.Group) -> dict[str, Any]:
    """A copy of the group's NGFF ``ome`` attributes (JSON, typed loosely)."""
    return dict(cast(dict[str, Any], group.attrs["ome"]))


def _array(group: zarr.Group, path: str) -> zarr.Array[Any]:
    node = group[path]
    if not isinstance(node, zarr.Array):
        raise TypeError(f"{group.path}/{path} is a group, not an array")
    return node


def _multiscale(name: str, axes: Sequence[str], scale0: Sequence[float], levels: int, *, label: bool) -> dict[str, Any]:
    """``multiscales[0]`` of a pyramid: per-level scale, translation of mean levels, the reducer."""
    reducer = REDUCERS[label]
    datasets = []
    for level in range(levels):
        f = 2**level
        scale = [float(s) * (f if a in ("y", "x") else 1) for a, s in zip(axes, scale0, strict=True)]
        shift = 0.0 if label else (f - 1) / 2
        translation = [shift * float(s) if a in ("y", "x") else 0.0 for a, s in zip(axes, scale0, strict=True)]
        datasets.append(Dataset.build(path=str(level), scale=scale, translation=translation))
    model = Multiscale(
        axes=tuple(
            Axis(name=a, type="channel") if a == "c" else Axis(name=a, type="space", unit="micrometer") for a in axes
        ),
        datasets=tuple(datasets),
        name=name,
        type=reducer["type"],
        metadata={
            "method": reducer["method"],
            "version": __version__,
            "description": reducer["description"],
            "args": [],
            "kwargs": {},
        },
    )
    return _dump(model)


def _dump(model: Any) -> dict[str, Any]:
    return cast(dict[str, Any], model.model_dump(mode="json", by_alias=True, exclude_none=True))


def _channel_colour(i: int, n: int) -> str:
    """Distinct colour per channel; a single channel is grey."""
    return "FFFFFF" if n == 1 else _COLOURS[i % len(_COLOURS)]


def _window(values: np.ndarray | None, dtype: Any) -> dict[str, float]:
    """``omero`` window of one channel's sampled pixels (see :meth:`OmeImage.refresh_display`)."""
    kind = np.dtype(dtype).kind
    v = np.asarray(values if values is not None else [], np.float64).ravel()
    v = v[np.isfinite(v)]
    if (v != 0).any():
        v = v[v != 0]
    if kind in "ui":
        info = np.iinfo(dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    if not v.size:
        return {"min": lo, "max": hi, "start": lo if kind in "ui" else 0.0, "end": hi if kind in "ui" else 1.0}
    start, end = (float(p) for p in np.percentile(v, WINDOW_PERCENTILES))
    if end <= start:
        end = start + (1.0 if kind in "ui" else max(abs(start) * 1e-3, 1e-6))
    return {"min": min(lo, start), "max": max(hi, end), "start": start, "end": end}


def _chunks(shape_yx: Sequence[int], chunks_yx: tuple[int, int]) -> tuple[int, int]:
    return (max(1, min(chunks_yx[0], shape_yx[0])), max(1, min(chunks_yx[1], shape_yx[1])))


def _cast(data: np.ndarray, dtype: Any) -> np.ndarray:
    if np.dtype(dtype).kind in "ui" and data.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.rint(data), info.min, info.max).astype(dtype)
    return data.astype(dtype, copy=False)
