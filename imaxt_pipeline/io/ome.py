"""OME-Zarr (NGFF 0.5, zarr v3) images and labels written plane by plane or block by block.

Arrays are created up front with their final shape, then each plane (one
physical slice / optical section) is written independently, with its pyramid
levels, as soon as it is ready (:meth:`OmeImage.write_plane`), or region by
region at one level (:meth:`OmeImage.write_region`, for writers that build
their own block pyramid). Chunks never span two planes, so workers can write
different planes concurrently without coordination. Every pyramid level is
made by the one reducer :func:`~imaxt_pipeline.algorithms.fusion.downsample`
(mean with edge replication for intensities, nearest for labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import zarr

from ..algorithms.fusion import downsample
from .rawzarr import COMPRESSOR
from .urls import Location

NGFF_VERSION = "0.5"
_REDUCER = "imaxt_pipeline.algorithms.fusion.downsample_mean"
_REDUCER_TEXT = "2x2 mean, odd edges replicated (the edge pixel is the mean of the pixels that exist)"
Mode = Literal["r", "r+", "a", "w", "w-"]
_COLOURS = ("00FFFF", "FF00FF", "FFFF00", "FFFFFF", "00FF00", "FF0000", "0000FF")


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

    def _put(self, arr: zarr.Array[Any], z: int, origin_yx: tuple[int, int], data: np.ndarray) -> None:
        y0, x0 = (int(v) for v in origin_yx)
        rows, cols = slice(y0, y0 + data.shape[-2]), slice(x0, x0 + data.shape[-1])
        if self.is_label:
            arr[z, rows, cols] = data.astype(arr.dtype, copy=False)
        else:
            arr[:, z, rows, cols] = _cast(data, arr.dtype)

    def set_label_colors(self, colors: list[dict[str, Any]]) -> None:
        """NGFF ``image-label.colors`` of a label image (``[{"label-value": int, "rgba": [r, g, b, a]}]``)."""
        if not self.is_label:
            raise ValueError(f"{self.path}: not a label image")
        group = self.group()
        ome = _ome(group)
        ome["image-label"] = {**ome["image-label"], "colors": colors}
        group.attrs["ome"] = ome

    def read_plane(self, z: int, level: int = 0) -> np.ndarray:
        arr = self.array(level, mode="r")
        return np.asarray(arr[z] if self.is_label else arr[:, z])

    def to_dask(self, level: int = 0) -> Any:
        import dask.array as da

        return da.from_zarr(self.array(level, mode="r"))


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
) -> OmeImage:
    """Create (or overwrite) an NGFF multiscale image with empty arrays."""
    c, z, y, x = (int(v) for v in shape_czyx)
    if len(channel_names) != c:
        raise ValueError(f"channel_names has {len(channel_names)} names for {c} channels")
    root = zarr.open_group(location.zarr_store(), mode="a")
    group = root.create_group(path, overwrite=True)
    datasets = []
    for level in range(levels):
        f = 2**level
        shp = (c, z, -(-y // f), -(-x // f))
        group.create_array(
            str(level),
            shape=shp,
            chunks=(1, 1, *_chunks(shp[2:], chunks_yx)),
            dtype=dtype,
            compressors=[COMPRESSOR],
            fill_value=0,
            dimension_names=("c", "z", "y", "x"),
        )
        datasets.append(_dataset(level, (1.0, scale_zyx_um[0], scale_zyx_um[1] * f, scale_zyx_um[2] * f)))
    vmax = float(window[1]) if window else float(np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1.0)
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name or path,
                "axes": _axes(("c", "z", "y", "x")),
                "datasets": datasets,
                "type": "mean",
                "metadata": {"method": _REDUCER, "description": _REDUCER_TEXT},
            }
        ],
        "omero": {
            "channels": [
                {
                    "label": n,
                    "color": _COLOURS[i % len(_COLOURS)],
                    "active": True,
                    "window": {"min": 0.0, "max": vmax, "start": float(window[0]) if window else 0.0, "end": vmax},
                }
                for i, n in enumerate(channel_names)
            ],
            "rdefs": {"model": "color"},
        },
    }
    return OmeImage(location, path, levels)


def create_labels(
    image: OmeImage,
    name: str,
    *,
    dtype: str = "uint32",
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
    src = _ome(root)["multiscales"][0]
    datasets = []
    for level in range(image.levels):
        c, z, y, x = _array(root, str(level)).shape
        group.create_array(
            str(level),
            shape=(z, y, x),
            chunks=(1, *_chunks((y, x), chunks_yx)),
            dtype=dtype,
            compressors=[COMPRESSOR],
            fill_value=0,
            dimension_names=("z", "y", "x"),
        )
        scale = src["datasets"][level]["coordinateTransformations"][0]["scale"][1:]
        datasets.append(_dataset(level, scale))
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [{"name": name, "axes": _axes(("z", "y", "x")), "datasets": datasets, "type": "nearest"}],
        "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}, "colors": []},
    }
    return OmeImage(image.location, f"{image.path}/labels/{name}", image.levels, is_label=True)


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


def _axes(names: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for n in names:
        out.append({"name": n, "type": "channel"} if n == "c" else {"name": n, "type": "space", "unit": "micrometer"})
    return out


def _dataset(level: int, scale: Sequence[float]) -> dict[str, Any]:
    return {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}]}


def _chunks(shape_yx: Sequence[int], chunks_yx: tuple[int, int]) -> tuple[int, int]:
    return (max(1, min(chunks_yx[0], shape_yx[0])), max(1, min(chunks_yx[1], shape_yx[1])))


def _cast(data: np.ndarray, dtype: Any) -> np.ndarray:
    if np.dtype(dtype).kind in "ui" and data.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.rint(data), info.min, info.max).astype(dtype)
    return data.astype(dtype, copy=False)
