"""Calibration files (``.npz``): what ``imaxt calibrate-distortion`` writes and the calibrate step reads.

Keys (any subset): ``dark`` (C,) or scalar, ``flat`` (C, H, W) or (H, W),
``stray`` (C, H, W) or (H, W) additive stray light in counts, ``trim`` (top,
bottom, left, right), ``distortion`` (mag_y, mag_x, k_y, k_x) and
``distortion_sigma`` (same order, informative).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..algorithms.optics import DistortionModel
from ..algorithms.calibration import Trim
from ..errors import InputError

if TYPE_CHECKING:
    from ..algorithms.calibration import Calibration
    from ..algorithms.calibration import DistortionFit

__all__ = ["read_calibration_file", "write_calibration_file"]


def read_calibration_file(url: str, storage_options: dict | None, *, n_channels: int,
                          tile_shape: tuple[int, int]) -> dict[str, object]:
    """Parse a calibration ``.npz``; returns the terms it holds, validated."""
    import fsspec

    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as fh:
            data = np.load(io.BytesIO(fh.read()))
    except FileNotFoundError:
        raise InputError(url, "calibration file is missing") from None
    except (OSError, ValueError) as exc:
        raise InputError(url, f"not a readable .npz calibration file ({exc})") from None
    out: dict[str, object] = {}
    if "dark" in data:
        out["dark"] = np.broadcast_to(np.asarray(data["dark"], float), (n_channels,)).copy()
    if "flat" in data:
        flat = np.asarray(data["flat"], np.float32)
        flat = flat[None] if flat.ndim == 2 else flat
        if flat.shape[-2:] != tuple(tile_shape) or flat.shape[0] not in (1, n_channels):
            raise InputError(url, f"flat has shape {flat.shape}, expected ({n_channels}, {tile_shape[0]}, {tile_shape[1]})")
        out["flat"] = np.broadcast_to(flat, (n_channels, *tile_shape)).copy()
    if "stray" in data:
        stray = np.asarray(data["stray"], np.float32)
        stray = stray[None] if stray.ndim == 2 else stray
        if stray.shape[-2:] != tuple(tile_shape) or stray.shape[0] not in (1, n_channels):
            raise InputError(url, f"stray has shape {stray.shape}, expected ({n_channels}, {tile_shape[0]}, "
                                  f"{tile_shape[1]})")
        out["stray"] = np.broadcast_to(stray, (n_channels, *tile_shape)).copy()
    if "trim" in data:
        t = [int(v) for v in np.asarray(data["trim"]).ravel()]
        if len(t) != 4 or min(t) < 0:
            raise InputError(url, f"trim must be 4 non-negative ints (top, bottom, left, right), got {t}")
        out["trim"] = Trim(*t)
    if "distortion" in data:
        d = [float(v) for v in np.asarray(data["distortion"]).ravel()]
        if len(d) != 4:
            raise InputError(url, f"distortion must be (mag_y, mag_x, k_y, k_x), got {d}")
        out["distortion"] = DistortionModel(*d)
    return out


def write_calibration_file(path: str | Path, cal: Calibration, fit: DistortionFit, *,
                           distortion_only: bool = False) -> None:
    """Write ``cal`` as the ``.npz`` that the calibrate step loads, atomically (temp file, then rename).

    Keys: ``dark`` (C,), ``flat`` (C, H, W), ``trim`` (top, bottom, left, right),
    ``distortion`` (mag_y, mag_x, k_y, k_x), ``distortion_sigma`` (same order)
    and, when estimated, ``stray`` (C, H, W); only the last two with
    ``distortion_only``. ``fit`` is the distortion fit ``cal`` carries.
    """
    path = Path(path)
    t = cal.trim
    arrays = {"distortion": fit.coefficients().astype(float), "distortion_sigma": np.asarray(fit.sigmas(), float)}
    if not distortion_only:
        arrays.update(dark=np.asarray(cal.dark, float), trim=np.array([t.top, t.bottom, t.left, t.right], int))
        arrays.update({k: np.asarray(v, np.float32) for k, v in (("flat", cal.flat), ("stray", cal.stray))
                       if v is not None})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(path, f"cannot write the calibration file ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
