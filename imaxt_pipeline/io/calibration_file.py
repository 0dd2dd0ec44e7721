"""Calibration files (``.npz``): what ``imaxt calibrate-distortion`` writes and the calibrate step reads.

Keys (any subset): ``format_version`` (int scalar), ``dark`` (C,) or scalar,
``flat`` (C, H, W) or (H, W), ``stray`` (C, H, W) or (H, W) additive stray
light in counts, ``trim`` (top, bottom, left, right), ``distortion`` (the
coefficients in the order of the file's version) and ``distortion_sigma``
(same order, informative).

Versions: 1 is every file without ``format_version`` (written before it was
recorded), 2 adds the key; all store the distortion as (mag_y, mag_x, k_y,
k_x). 3 adds ``distortion_shear`` (shear_yx, shear_xy: the off-diagonal terms of
the linear map, a camera turned against the stage) and ``distortion_shear_sigma``,
written when the model has them or they were fitted; a file without them reads
with no shear (the camera square to the stage). A version-2 reader refuses a
version-3 file rather than drop its shear. 4 adds ``distortion_quintic`` (k5_y, k5_x: the 5th-order
radial terms) and ``distortion_quintic_sigma``; a file is written as version 4 only when it has them
(a version-3 reader would read it without them, silently: it refuses version 4), else as version 3,
which every reader since the shear reads the same. Each version's coefficient order is pinned here, not taken from
:attr:`DistortionModel.COEFFICIENTS`, so old files keep loading to the same
model whatever the model's own order becomes. 5 adds the seams' common bias measured on a seam
acquisition (:class:`..algorithms.stitching.SeamCalibration`): ``seam_bias`` (2, B, 2) ``[direction
(horizontal, vertical), bin along the seam, axis (dy, dx)]`` px, ``seam_bias_sigma`` (same shape),
``seam_overlap_px`` (horizontal, vertical: the overlap it was measured at), ``seam_tile_shape`` (H, W), and
``distortion_n_pairs`` (pairs of the distortion fit); written as 5 only with a seam calibration (a version-4
reader refuses it rather than drop the bias), else as 4 or 3 as before. A newer version than this
reader knows is an error, not a guess.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..algorithms.optics import DistortionModel, Trim
from ..algorithms.stitching import SeamCalibration
from ..errors import InputError

if TYPE_CHECKING:
    from ..algorithms.calibration import DistortionFit
    from ..algorithms.optics import Calibration

__all__ = ["FORMAT_VERSION", "read_calibration_file", "write_calibration_file"]

#: Newest version :func:`write_calibration_file` writes (5 with a seam calibration, else 4 with quintic terms,
#: else 3) and this reader reads.
FORMAT_VERSION = 5
#: Version written with quintic terms and no seam calibration.
_QUINTIC_VERSION = 4
#: Version written when the distortion has no quintic terms (readable by readers from the shear on).
_NO_QUINTIC_VERSION = 3
#: Order of the ``distortion`` (and ``distortion_sigma``) values in each file version.
_DISTORTION_ORDER = {v: ("mag_y", "mag_x", "k_y", "k_x") for v in (1, 2, 3, 4, 5)}
#: The seam calibration's keys, from version 5 (all or none).
_SEAM_KEYS = ("seam_bias", "seam_bias_sigma", "seam_overlap_px", "seam_tile_shape")
#: Order of ``distortion_shear`` (and ``distortion_shear_sigma``), from version 3.
_SHEAR_ORDER = ("shear_yx", "shear_xy")
#: Order of ``distortion_quintic`` (and ``distortion_quintic_sigma``), from version 4.
_QUINTIC_ORDER = ("k5_y", "k5_x")


def read_calibration_file(
    url: str, storage_options: dict | None, *, n_channels: int, tile_shape: tuple[int, int]
) -> dict[str, object]:
    """Parse a calibration ``.npz``; returns the terms it holds, validated."""
    import fsspec

    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as fh:
            data = np.load(io.BytesIO(fh.read()))
    except FileNotFoundError:
        raise InputError(url, "calibration file is missing") from None
    except (OSError, ValueError) as exc:
        raise InputError(url, f"not a readable .npz calibration file ({exc})") from None
    try:
        version = int(np.asarray(data["format_version"])) if "format_version" in data else 1
    except (TypeError, ValueError):
        raise InputError(url, f"format_version must be an integer, got {data['format_version']!r}") from None
    if version not in _DISTORTION_ORDER:
        raise InputError(
            url,
            f"calibration file format version {version} is newer than this reader's "
            f"({FORMAT_VERSION}): update imaxt-pipeline",
        )
    out: dict[str, object] = {}
    if "dark" in data:
        out["dark"] = np.broadcast_to(np.asarray(data["dark"], float), (n_channels,)).copy()
    if "flat" in data:
        flat = np.asarray(data["flat"], np.float32)
        flat = flat[None] if flat.ndim == 2 else flat
        if flat.shape[-2:] != tuple(tile_shape) or flat.shape[0] not in (1, n_channels):
            raise InputError(
                url, f"flat has shape {flat.shape}, expected ({n_channels}, {tile_shape[0]}, {tile_shape[1]})"
            )
        out["flat"] = np.broadcast_to(flat, (n_channels, *tile_shape)).copy()
    if "stray" in data:
        stray = np.asarray(data["stray"], np.float32)
        stray = stray[None] if stray.ndim == 2 else stray
        if stray.shape[-2:] != tuple(tile_shape) or stray.shape[0] not in (1, n_channels):
            raise InputError(
                url, f"stray has shape {stray.shape}, expected ({n_channels}, {tile_shape[0]}, {tile_shape[1]})"
            )
        out["stray"] = np.broadcast_to(stray, (n_channels, *tile_shape)).copy()
    if "trim" in data:
        t = [int(v) for v in np.asarray(data["trim"]).ravel()]
        if len(t) != 4 or min(t) < 0:
            raise InputError(url, f"trim must be 4 non-negative ints (top, bottom, left, right), got {t}")
        out["trim"] = Trim(*t)
    if "distortion" in data:
        order = _DISTORTION_ORDER[version]
        d = [float(v) for v in np.asarray(data["distortion"]).ravel()]
        if len(d) != len(order):
            raise InputError(url, f"distortion must be ({', '.join(order)}), got {d}")
        terms = dict(zip(order, d, strict=True))
        if version >= 3 and "distortion_shear" in data:
            sh = [float(v) for v in np.asarray(data["distortion_shear"]).ravel()]
            if len(sh) != len(_SHEAR_ORDER):
                raise InputError(url, f"distortion_shear must be ({', '.join(_SHEAR_ORDER)}), got {sh}")
            terms.update(zip(_SHEAR_ORDER, sh, strict=True))
        if version >= 4 and "distortion_quintic" in data:
            q = [float(v) for v in np.asarray(data["distortion_quintic"]).ravel()]
            if len(q) != len(_QUINTIC_ORDER):
                raise InputError(url, f"distortion_quintic must be ({', '.join(_QUINTIC_ORDER)}), got {q}")
            terms.update(zip(_QUINTIC_ORDER, q, strict=True))
        out["distortion"] = DistortionModel.from_dict(terms)  # a term the file lacks: 0
    if version >= 5 and any(k in data for k in _SEAM_KEYS):
        out["seam_bias"] = _read_seam(url, data)
    return out


def _read_seam(url: str, data: np.lib.npyio.NpzFile) -> SeamCalibration:
    """The version-5 seam keys, validated: all four, profile and sigma (2, B, 2), overlap and shape (2,)."""
    missing = [k for k in _SEAM_KEYS if k not in data]
    if missing:
        raise InputError(url, f"seam calibration lacks {', '.join(missing)}")
    prof, sig = (np.asarray(data[k], np.float64) for k in ("seam_bias", "seam_bias_sigma"))
    if prof.ndim != 3 or prof.shape[0] != 2 or prof.shape[2] != 2 or prof.shape[1] < 1 or sig.shape != prof.shape:
        raise InputError(url, f"seam_bias {prof.shape} and seam_bias_sigma {sig.shape} must both be (2, bins, 2)")
    if not (np.all(np.isfinite(prof)) and np.all(np.isfinite(sig)) and np.all(sig >= 0)):
        raise InputError(url, "seam_bias must be finite and seam_bias_sigma finite and >= 0")
    ov = np.asarray(data["seam_overlap_px"], np.float64).ravel()
    shape = np.asarray(data["seam_tile_shape"]).ravel()
    if len(ov) != 2 or not np.all(ov > 0) or len(shape) != 2 or not np.all(shape > 0):
        raise InputError(url, f"seam_overlap_px {ov.tolist()} and seam_tile_shape {shape.tolist()} must be 2 positive")
    return SeamCalibration(
        profile=prof,
        sigma=sig,
        overlap_px=(float(ov[0]), float(ov[1])),
        tile_shape=(int(shape[0]), int(shape[1])),
    )


def write_calibration_file(
    path: str | Path,
    cal: Calibration,
    fit: DistortionFit,
    *,
    distortion_only: bool = False,
    overwrite: bool = False,
    seam: SeamCalibration | None = None,
) -> None:
    """Write ``cal`` as the ``.npz`` that the calibrate step loads, atomically (temp file, then rename).

    Keys: ``format_version`` (5 with ``seam``, else 4 with quintic terms, else 3), ``dark`` (C,), ``flat``
    (C, H, W), ``trim`` (top, bottom, left, right), ``distortion`` (mag_y,
    mag_x, k_y, k_x), ``distortion_sigma`` (same order), ``distortion_shear`` and
    ``distortion_shear_sigma`` (shear_yx, shear_xy; when the model has them or they were fitted),
    ``distortion_quintic`` and ``distortion_quintic_sigma`` (k5_y, k5_x; likewise) and, when estimated,
    ``stray`` (C, H, W); with ``seam`` (a seam acquisition's measurement) the ``seam_*`` keys and
    ``distortion_n_pairs``; only the version, the distortion and the seam keys with
    ``distortion_only``. ``fit`` is the distortion fit ``cal`` carries. An existing ``path`` is
    replaced only with ``overwrite`` and only when it is a calibration file itself.
    """
    path = Path(path)
    # Never replace what this tool did not write: an existing file must be a calibration file.
    if path.exists() or path.is_symlink():
        if not path.is_file() or path.is_symlink() or not _is_calibration_file(path):
            raise InputError(path, "exists and is not a calibration file; choose a new path")
        if not overwrite:
            raise InputError(path, "exists; pass --overwrite to replace this calibration file")
    t = cal.trim
    order = _DISTORTION_ORDER[FORMAT_VERSION]
    sigmas = dict(zip(DistortionModel.COEFFICIENTS, np.asarray(fit.sigmas(), float), strict=True))
    quintic = any(getattr(fit.model, k) or sigmas[k] for k in _QUINTIC_ORDER)
    arrays = {
        "format_version": np.array(
            FORMAT_VERSION if seam is not None else _QUINTIC_VERSION if quintic else _NO_QUINTIC_VERSION
        ),
        "distortion": np.array([getattr(fit.model, k) for k in order], float),
        "distortion_sigma": np.array([sigmas[k] for k in order], float),
    }
    if any(getattr(fit.model, k) or sigmas[k] for k in _SHEAR_ORDER):
        arrays["distortion_shear"] = np.array([getattr(fit.model, k) for k in _SHEAR_ORDER], float)
        arrays["distortion_shear_sigma"] = np.array([sigmas[k] for k in _SHEAR_ORDER], float)
    if quintic:
        arrays["distortion_quintic"] = np.array([getattr(fit.model, k) for k in _QUINTIC_ORDER], float)
        arrays["distortion_quintic_sigma"] = np.array([sigmas[k] for k in _QUINTIC_ORDER], float)
    if seam is not None:
        arrays.update(
            seam_bias=np.asarray(seam.profile, float),
            seam_bias_sigma=np.asarray(seam.sigma, float),
            seam_overlap_px=np.asarray(seam.overlap_px, float),
            seam_tile_shape=np.asarray(seam.tile_shape, int),
            distortion_n_pairs=np.array(int(fit.n_pairs)),
        )
    if not distortion_only:
        arrays.update(dark=np.asarray(cal.dark, float), trim=np.array([t.top, t.bottom, t.left, t.right], int))
        arrays.update(
            {k: np.asarray(v, np.float32) for k, v in (("flat", cal.flat), ("stray", cal.stray)) if v is not None}
        )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(path, f"cannot write the calibration file ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _is_calibration_file(path: Path) -> bool:
    """Whether ``path`` is an ``.npz`` holding a distortion (what :func:`write_calibration_file` writes)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "distortion" in data.files
    except (OSError, ValueError, EOFError):
        return False
