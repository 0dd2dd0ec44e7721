"""Write a synthetic sample in the raw layout with its ground truth, and read the truth back.

Files written under the sample folder ``out_dir``::

    acquisition.json, tiles.csv, tiles/*.tif   the raw layout (spec/raw-layout.md)
    truth/truth.json       parameters, tile positions, slice offsets, beads, calibration
    truth/nuclei.npz       labels (slices, H, W) int32, tissue (slices, H, W) bool
    truth/clean.npz        planes (slices, channels, H, W) float32
    truth/calibration.npz  flat, stray (tile_shape) float64

Every file is byte-identical for the same parameters. ``acquisition.json`` is
written last, so a watcher never sees a complete sample without its truth.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from ..algorithms.optics import DistortionModel
from ._instrument import Instrument, render_pad
from ._params import SynthParams
from ._scene import Scene

__all__ = ["Truth", "load_truth", "synthesize"]

FORMAT = "imaxt-synth-truth/1"
CONVENTIONS = {
    "frames": "(y, x) in mosaic pixels; the mosaic frame is the stage frame: recorded (y_um, x_um) / "
    "pixel_size_um is a tile's nominal top-left, its true top-left adds the stage error",
    "tile_positions_px": "true top-left of tile <slice>/<row>/<col> in that slice's mosaic frame",
    "slice_offsets_px": "content of slice k is displaced by (+dy, +dx) relative to slice 0",
    "beads": "sphere centre (y_px, x_px) in slice 0's frame, depth z_um below the top of the block",
    "bead_detections": "disc cut by slice k's imaged plane at z_k = (k + 0.5) * slice_thickness_um; "
    "radius_px = sqrt(R**2 - (z_k - z_um)**2) / pixel_size_um, listed when >= 1 px; "
    "(y_px, x_px) in slice k's mosaic frame (drift included)",
    "raw": "raw(p) = gain * Poisson((flat(p) * scene(T + p + D(p)) + stray(p)) / gain) + dark + "
    "Normal(0, read_noise); D from imaxt_pipeline.algorithms.optics",
    "clean": "noise-free, undistorted, flat-free planes (PSF blur included) in each slice's mosaic frame",
    "nuclei": "drawn independently per slice; labels unique over the whole sample",
}


@dataclass(frozen=True)
class Truth:
    """Ground truth of a synthetic sample (see the module docstring for the files).

    Attributes
    ----------
    params : SynthParams
    tile_positions_px, recorded_positions_px : dict
        ``"<slice>/<row>/<col>" -> (y, x)``: true and recorded top-left in px.
    slice_offsets_px : ndarray (slices, 2)
    beads : DataFrame
        ``bead_id, y_px, x_px, z_um, radius_um``.
    bead_detections : DataFrame
        ``slice, bead_id, y_px, x_px, radius_px``.
    nuclei : ndarray (slices, H, W) of int32
    tissue : ndarray (slices, H, W) of bool
    clean : ndarray (slices, channels, H, W) of float32
    mosaic_shape : (int, int)
    distortion : DistortionModel
    flat, stray : ndarray (tile_shape)
        Multiplicative flat field and additive stray light (counts).
    dark, gain, read_noise : float
    """

    params: SynthParams
    tile_positions_px: dict[str, tuple[float, float]]
    recorded_positions_px: dict[str, tuple[float, float]]
    slice_offsets_px: np.ndarray
    beads: pd.DataFrame
    bead_detections: pd.DataFrame
    nuclei: np.ndarray = field(repr=False)
    tissue: np.ndarray = field(repr=False)
    clean: np.ndarray = field(repr=False)
    mosaic_shape: tuple[int, int]
    distortion: DistortionModel
    flat: np.ndarray = field(repr=False)
    stray: np.ndarray = field(repr=False)
    dark: float
    gain: float
    read_noise: float

    def positions_array(self, *, recorded: bool = False) -> np.ndarray:
        """Tile top-lefts as an array (slices, rows, cols, 2) of (y, x) px."""
        p = self.params
        src = self.recorded_positions_px if recorded else self.tile_positions_px
        out = np.empty((p.slices, p.rows, p.cols, 2))
        for key, yx in src.items():
            s, r, c = (int(v) for v in key.split("/"))
            out[s, r, c] = yx
        return out


def synthesize(out_dir: str | os.PathLike[str], params: SynthParams | None = None) -> Truth:
    """Simulate an STPT acquisition and write it, with its ground truth, to ``out_dir``.

    Parameters
    ----------
    out_dir : str or PathLike
        The sample folder (created if needed). The files of an earlier run
        (including its ``tiles/S###_ch#_r##_c##.tif``) are replaced.
    params : SynthParams, optional
        Defaults to ``SynthParams()``.

    Returns
    -------
    Truth
        The ground truth, as :func:`load_truth` would read it back.

    Examples
    --------
    ::

        truth = synthesize(tmp_path / "s", SynthParams(slices=2, rows=2, cols=2))
    """
    params = SynthParams() if params is None else params
    if not isinstance(params, SynthParams):
        raise TypeError(f"params must be a SynthParams, got {type(params)}")
    root = Path(out_dir)
    (root / "tiles").mkdir(parents=True, exist_ok=True)
    (root / "truth").mkdir(exist_ok=True)
    (root / "acquisition.json").unlink(missing_ok=True)  # not "landed" while being rewritten
    for stale in (root / "tiles").glob("S[0-9][0-9][0-9]_ch*_r*_c*.tif"):
        stale.unlink()  # tiles of an earlier run (this module's naming only)
    streams = np.random.SeedSequence(params.seed).spawn(4)
    pad = render_pad(params)
    scene = Scene(params, np.random.default_rng(streams[0]), pad=pad)
    inst = Instrument(params, np.random.default_rng(streams[1]), pad=pad)
    slice_streams, noise_streams = streams[2].spawn(params.slices), streams[3].spawn(params.slices)

    h, w = params.mosaic_shape
    n_ch = len(params.channels)
    clean = np.empty((params.slices, n_ch, h, w), np.float32)
    labels = np.empty((params.slices, h, w), np.int32)
    tissue = np.empty((params.slices, h, w), bool)
    detections, rows, next_label = [], [], 1
    for k in range(params.slices):
        sl = scene.render(k, np.random.default_rng(slice_streams[k]), first_label=next_label)
        clean[k] = sl.planes[:, pad : pad + h, pad : pad + w]
        labels[k], tissue[k] = sl.labels, sl.tissue
        next_label = max(next_label, int(sl.labels.max()) + 1)
        detections.append(sl.detections)
        noise = np.random.default_rng(noise_streams[k])
        for ch in range(n_ch):
            coeffs = inst.prepare(sl.planes[ch])
            for r in range(params.rows):
                for c in range(params.cols):
                    tile = inst.expose(inst.sample(coeffs, k, r, c), noise)
                    name = f"tiles/S{k:03d}_ch{ch}_r{r:02d}_c{c:02d}.tif"
                    tifffile.imwrite(root / name, tile, photometric="minisblack")
                    y_um, x_um = inst.recorded_um[r, c]
                    rows.append([k, ch, r, c, f"{x_um:.4f}", f"{y_um:.4f}", name])

    truth = Truth(
        params=params,
        tile_positions_px=_keyed(inst.true),
        recorded_positions_px=_keyed(np.broadcast_to(inst.nominal, inst.true.shape)),
        slice_offsets_px=scene.offsets.copy(),
        beads=scene.beads,
        bead_detections=pd.concat(detections, ignore_index=True),
        nuclei=labels,
        tissue=tissue,
        clean=clean,
        mosaic_shape=(h, w),
        distortion=inst.distortion,
        flat=inst.flat,
        stray=inst.stray,
        dark=params.dark_offset,
        gain=params.gain,
        read_noise=params.read_noise,
    )
    _write_truth(root / "truth", truth, pad)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["slice", "channel", "row", "col", "x_um", "y_um", "file"])
    writer.writerows(rows)
    _atomic_text(root / "tiles.csv", buf.getvalue())
    _atomic_text(root / "acquisition.json", json.dumps(_acquisition(params), indent=2) + "\n")
    return truth


def load_truth(out_dir: str | os.PathLike[str]) -> Truth:
    """Read the ground truth written by :func:`synthesize` from ``out_dir/truth``.

    Raises
    ------
    FileNotFoundError
        If a truth file is missing.
    ValueError
        If ``truth.json`` is not in the expected format.
    """
    base = Path(out_dir) / "truth"
    meta = json.loads((base / "truth.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{base / 'truth.json'}: unknown truth format {meta.get('format')!r}")
    with np.load(base / "nuclei.npz") as nz, np.load(base / "clean.npz") as cz, np.load(base / "calibration.npz") as kz:
        nuclei, tissue, clean = nz["labels"], nz["tissue"], cz["planes"]
        flat, stray = kz["flat"], kz["stray"]
    beads = pd.DataFrame(meta["beads"], columns=["bead_id", "y_px", "x_px", "z_um", "radius_um"])
    det = pd.DataFrame(meta["bead_detections"], columns=["slice", "bead_id", "y_px", "x_px", "radius_px"])
    noise = meta["noise"]
    return Truth(
        params=SynthParams.from_dict(meta["params"]),
        tile_positions_px={k: tuple(v) for k, v in meta["tile_positions_px"].items()},
        recorded_positions_px={k: tuple(v) for k, v in meta["recorded_positions_px"].items()},
        slice_offsets_px=np.asarray(meta["slice_offsets_px"], np.float64).reshape(-1, 2),
        beads=beads.astype({"bead_id": np.int64}),
        bead_detections=det.astype({"slice": np.int64, "bead_id": np.int64}),
        nuclei=nuclei,
        tissue=tissue,
        clean=clean,
        mosaic_shape=tuple(meta["mosaic_shape"]),
        distortion=DistortionModel(**meta["distortion"]),
        flat=flat,
        stray=stray,
        dark=float(meta["dark"]["offset"]),
        gain=float(noise["gain"]),
        read_noise=float(noise["read_noise"]),
    )


def _keyed(pos: np.ndarray) -> dict[str, tuple[float, float]]:
    s, r, c, _ = pos.shape
    return {
        f"{i}/{j}/{k}": (float(pos[i, j, k, 0]), float(pos[i, j, k, 1]))
        for i in range(s)
        for j in range(r)
        for k in range(c)
    }


def _acquisition(p: SynthParams) -> dict:
    return {
        "sample": p.sample,
        "modality": "STPT",
        "pixel_size_um": p.pixel_size_um,
        "slice_thickness_um": p.slice_thickness_um,
        "tile_shape": list(p.tile_shape),
        "overlap": p.overlap,
        "channels": list(p.channels),
        "rows": p.rows,
        "cols": p.cols,
        "slices": p.slices,
        "optical_sections": 1,
    }


def _write_truth(base: Path, t: Truth, pad: int) -> None:
    p = t.params
    meta = {
        "format": FORMAT,
        "conventions": CONVENTIONS,
        "params": p.to_dict(),
        "mosaic_shape": list(t.mosaic_shape),
        "pixel_size_um": p.pixel_size_um,
        "slice_depths_um": [(k + 0.5) * p.slice_thickness_um for k in range(p.slices)],
        "tile_positions_px": {k: list(v) for k, v in t.tile_positions_px.items()},
        "recorded_positions_px": {k: list(v) for k, v in t.recorded_positions_px.items()},
        "slice_offsets_px": t.slice_offsets_px.tolist(),
        "beads": t.beads.to_dict(orient="records"),
        "bead_detections": t.bead_detections.to_dict(orient="records"),
        "n_nuclei": [int(np.count_nonzero(np.bincount(t.nuclei[k].ravel())[1:])) for k in range(p.slices)],
        "flat": {
            "model": "1 - vignetting * (u**2 + w**2) / 2, u, w in [-1, 1] across the tile",
            "vignetting": p.flat_vignetting,
        },
        "stray": {
            "model": "amplitude * exp(-x / scale_px), additive, every row alike",
            "amplitude": p.stray_light,
            "scale_px": p.stray_light_scale_px,
            "edge": "x=0",
        },
        "dark": {"offset": p.dark_offset},
        "distortion": t.distortion.as_dict(),
        "noise": {"gain": p.gain, "read_noise": p.read_noise},
        "render_pad_px": pad,
    }
    _save_npz(base / "nuclei.npz", {"labels": t.nuclei, "tissue": t.tissue}, compress=True)
    _save_npz(base / "clean.npz", {"planes": t.clean}, compress=False)
    _save_npz(base / "calibration.npz", {"flat": t.flat, "stray": t.stray}, compress=True)
    _atomic_text(base / "truth.json", json.dumps(meta, indent=1, default=_json_default) + "\n")


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _save_npz(path: Path, arrays: dict[str, np.ndarray], *, compress: bool) -> None:
    """``np.savez`` with fixed member timestamps, so identical arrays give identical bytes."""
    tmp = path.with_name(path.name + ".tmp")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getbuffer(), compress_type=method, compresslevel=1 if compress else None)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
