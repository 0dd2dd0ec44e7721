"""Synthetic tile grids with their truth, and the error measures the stitching tests score them by."""

from __future__ import annotations

import csv

import numpy as np
import tifffile

from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.synth import SynthParams, synthesize

_GRID_DISTORTION = DistortionModel(k_y=0.006, k_x=0.006)  # ~1.9 px at the corners of a 192 px tile


def one_slice_grid(root, **overrides):
    """Synthesize ``SynthParams(slices=1, rows=3, cols=3, tile_shape=(256, 256), **overrides)`` under ``root``.

    Returns
    -------
    params, truth, tiles (C, 9, H, W) uint16, stage (9, 2) recorded positions in px, true (9, 2) positions in px
    """
    p = SynthParams(slices=1, rows=3, cols=3, **{"tile_shape": (256, 256), **overrides})
    truth = synthesize(root, p)
    tiles = np.zeros((len(p.channels), 9, *p.tile_shape), np.uint16)
    stage = np.zeros((9, 2))
    with open(root / "tiles.csv") as fh:
        for r in csv.DictReader(fh):
            t = int(r["row"]) * 3 + int(r["col"])
            tiles[int(r["channel"]), t] = tifffile.imread(root / r["file"])
            stage[t] = float(r["y_um"]) / p.pixel_size_um, float(r["x_um"]) / p.pixel_size_um
    true = np.array([truth.tile_positions_px[f"0/{t // 3}/{t % 3}"] for t in range(9)])
    return p, truth, tiles, stage, true


def grid_tiles(
    seed: int,
    *,
    rows: int = 3,
    cols: int = 3,
    tile: int = 192,
    overlap: float = 0.12,
    model: DistortionModel = _GRID_DISTORTION,
    stage_err: float = 3.0,
    empty_cols: int = 0,
):
    """Poisson tiles of a random blob scene on a jittered grid, seen through ``model``.

    Returns tiles (T, H, W), true top-left positions (T, 2), stage positions (T, 2).
    ``empty_cols`` leaves the scene's right-most tile columns empty (agarose).

    >>> tiles, true, stage = grid_tiles(0, rows=1, cols=2, tile=64)
    >>> tiles.shape, true.shape, stage.shape
    ((2, 64, 64), (2, 2), (2, 2))
    """
    from scipy import ndimage as ndi

    from imaxt_pipeline.algorithms.optics import displacement_field

    rng = np.random.default_rng(seed)
    step = tile * (1 - overlap)
    h, w = int((rows - 1) * step + tile + 40), int((cols - 1) * step + tile + 40)
    scene = np.zeros((h, w))
    n = h * w // 150
    scene[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.uniform(500, 2000, n)
    scene = ndi.gaussian_filter(scene, 2.0) * 20
    if empty_cols:
        scene[:, int(20 + (cols - empty_cols) * step) - 15 :] = 0.0
    scene += 20.0
    dy, dx = displacement_field((tile, tile), model)
    gy, gx = np.indices((tile, tile), dtype=float)
    true, stage, tiles = [], [], []
    for r in range(rows):
        for c in range(cols):
            p = np.array([20 + r * step, 20 + c * step]) + rng.normal(0, 1.0, 2)
            true.append(p)
            stage.append(p + rng.normal(0, stage_err, 2))
            clean = ndi.map_coordinates(scene, [p[0] + gy + dy, p[1] + gx + dx], order=1)
            tiles.append(rng.poisson(np.maximum(clean, 0)).astype(float))
    return np.array(tiles), np.array(true), np.array(stage)


def position_errors(pos, true, keep, *, scale=False):
    """Per-tile distance (px) of ``pos[keep]`` from ``true[keep]`` after removing the common translation.

    With ``scale=True`` a per-axis scale is removed too (what tile overlaps alone cannot measure).

    >>> true = np.array([[0.0, 0.0], [0.0, 100.0], [100.0, 0.0]])
    >>> position_errors(true + [5.0, -3.0], true, np.ones(3, bool)).round(6).tolist()
    [0.0, 0.0, 0.0]
    >>> position_errors(true * 1.01, true, np.ones(3, bool), scale=True).round(6).tolist()
    [0.0, 0.0, 0.0]
    >>> position_errors(true + [[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]], true, np.ones(3, bool)).round(3).tolist()
    [1.0, 1.0, 2.0]
    """
    d = pos[keep] - true[keep]
    if scale:  # per-axis affine scale + translation
        for ax in range(2):
            design = np.stack([np.ones(keep.sum()), true[keep, ax] - true[keep, ax].mean()], axis=1)
            coef, *_ = np.linalg.lstsq(design, d[:, ax], rcond=None)
            d[:, ax] -= design @ coef
    d -= d.mean(axis=0)
    return np.hypot(d[:, 0], d[:, 1])


def band_error(flat, truth_flat, p):
    """RMS of the flat's shape relative to the truth in the overlap bands, where seams are made.

    ``p`` is the sample's :class:`~imaxt_pipeline.synth.SynthParams` (``tile_shape`` and ``overlap``).

    >>> from types import SimpleNamespace
    >>> truth_flat = np.linspace(0.8, 1.2, 64 * 64).reshape(64, 64)
    >>> band_error(2.0 * truth_flat, truth_flat, SimpleNamespace(tile_shape=(64, 64), overlap=0.1))
    0.0
    """
    h, w = p.tile_shape
    band = np.zeros((h, w), bool)
    ov = int(p.overlap * w)
    band[:ov] = band[-ov:] = True
    band[:, :ov] = band[:, -ov:] = True
    rel = flat / truth_flat
    return float(np.sqrt(np.mean((rel[band] / rel[band].mean() - 1) ** 2)))
