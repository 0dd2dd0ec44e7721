"""Placement and rendering of the discrete objects: beads (3-D) and nuclei (per slice)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from ._params import SynthParams

__all__ = ["place_beads", "place_nuclei", "render_nuclei"]

BEAD_GAP_PX = 4.0  # minimum gap between bead rims, and between a bead and the tissue
NUCLEUS_GAP_PX = 1.0  # minimum gap between nucleus rims (soft edges may touch)
BEAD_CANDIDATES = 4000


def place_beads(
    params: SynthParams, tissue_union: np.ndarray, factor: int, pad: int, x_empty: float, rng: np.random.Generator
) -> pd.DataFrame:
    """Random sequential placement of non-overlapping beads in the agarose around the tissue.

    Parameters
    ----------
    params : SynthParams
        Sample parameters (bead radius range, count, stack depth).
    tissue_union : ndarray of bool
        Tissue of any slice, world frame, on a grid where index ``i`` is pixel ``i * factor - pad``.
    factor, pad : int
        Geometry of ``tissue_union``.
    x_empty : float
        Beads stay left of this x (the empty-agarose part of the field starts there).
    rng : numpy.random.Generator
        Random source.

    Returns
    -------
    DataFrame
        ``bead_id, y_px, x_px, z_um, radius_um`` with (y, x) in the world (slice 0) frame.
    """
    h, w = params.mosaic_shape
    px = params.pixel_size_um
    r_lo, r_hi = params.bead_radius_um
    dist = (
        ndi.distance_transform_edt(~tissue_union) * factor - factor
        if tissue_union.any()
        else np.full(tissue_union.shape, np.inf)
    )
    m = params.margin_px
    n = BEAD_CANDIDATES
    radius_um = rng.uniform(r_lo, r_hi, n)
    radius = radius_um / px
    ys = rng.uniform(0.0, 1.0, n)
    xs = rng.uniform(0.0, 1.0, n)
    z_um = rng.uniform(0.0, params.slices * params.slice_thickness_um, n)
    y = m + 0.5 * radius + ys * (h - 2 * m - radius)
    x_hi = np.minimum(w - m - 0.5 * radius, x_empty - radius - BEAD_GAP_PX)
    x = m + 0.5 * radius + xs * (x_hi - m - 0.5 * radius)
    iy = np.clip(np.rint((y + pad) / factor).astype(int), 0, dist.shape[0] - 1)
    ix = np.clip(np.rint((x + pad) / factor).astype(int), 0, dist.shape[1] - 1)
    ok = (x_hi > m + 0.5 * radius) & (dist[iy, ix] >= radius + BEAD_GAP_PX)
    if params.n_beads is not None:
        target = params.n_beads
    else:
        # enough beads that the end slices, which cut only beads centred within R of their
        # plane, still show about ten; the agarose area caps the count in small mosaics
        depth = params.slices * params.slice_thickness_um
        reach = min(1.0, (r_lo + 0.5 * params.slice_thickness_um) / depth)
        target = int(np.ceil(10.0 / reach))
    keep: list[int] = []
    for i in np.flatnonzero(ok):
        if len(keep) >= target:
            break
        if keep:
            d = np.hypot(y[keep] - y[i], x[keep] - x[i])
            if np.any(d < radius[keep] + radius[i] + BEAD_GAP_PX):
                continue
        keep.append(int(i))
    return pd.DataFrame(
        {
            "bead_id": np.arange(len(keep), dtype=np.int64),
            "y_px": y[keep],
            "x_px": x[keep],
            "z_um": z_um[keep],
            "radius_um": radius_um[keep],
        }
    )


def place_nuclei(
    params: SynthParams, tissue: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random sequential adsorption of non-overlapping elliptical nuclei inside ``tissue``.

    Parameters
    ----------
    params : SynthParams
        Sample parameters (radius range, density, pixel size).
    tissue : ndarray (H, W) of bool
        Tissue mask in the slice's mosaic frame.
    rng : numpy.random.Generator
        Random source.

    Returns
    -------
    centres : ndarray (N, 2)
        (y, x) in the slice's mosaic frame.
    axes : ndarray (N, 2)
        Semi-axes (a, b), a >= b, in px.
    angles : ndarray (N,)
        Orientation of the major axis, radians.
    brightness : ndarray (N,)
        Nuclear-channel intensity in counts.
    """
    px = params.pixel_size_um
    lo, hi = params.nucleus_radius_um[0] / px, params.nucleus_radius_um[1] / px
    target = int(params.nuclei_per_mm2 * tissue.sum() * px * px / 1e6)
    h, w = tissue.shape
    centres = np.zeros((0, 2))
    major = np.zeros(0)
    ring = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    for _ in range(8):
        need = target - len(centres)
        if need <= 0:
            break
        k = 2 * need + 64
        cand = rng.uniform((0, 0), (h, w), (k, 2))
        a = rng.uniform(lo, hi, k)
        py = np.rint(cand[:, :1] + (a[:, None] + 1.5) * np.sin(ring)).astype(int)
        pxs = np.rint(cand[:, 1:] + (a[:, None] + 1.5) * np.cos(ring)).astype(int)
        inside = (py >= 0).all(1) & (py < h).all(1) & (pxs >= 0).all(1) & (pxs < w).all(1)
        py, pxs = np.clip(py, 0, h - 1), np.clip(pxs, 0, w - 1)
        inside &= (
            tissue[py, pxs].all(1)
            & tissue[np.clip(cand[:, 0].astype(int), 0, h - 1), np.clip(cand[:, 1].astype(int), 0, w - 1)]
        )
        cand, a = cand[inside], a[inside]
        reject = np.zeros(len(cand), bool)
        tree = cKDTree(cand)
        if len(centres):
            near = tree.sparse_distance_matrix(cKDTree(centres), 2 * hi + NUCLEUS_GAP_PX, output_type="ndarray")
            clash = near["v"] < a[near["i"]] + major[near["j"]] + NUCLEUS_GAP_PX
            reject[near["i"][clash]] = True
        pairs = tree.query_pairs(2 * hi + NUCLEUS_GAP_PX, output_type="ndarray")
        if len(pairs):
            d = np.hypot(*(cand[pairs[:, 0]] - cand[pairs[:, 1]]).T)
            clash = d < a[pairs[:, 0]] + a[pairs[:, 1]] + NUCLEUS_GAP_PX
            reject[pairs[clash].max(axis=1)] = True
        centres = np.concatenate([centres, cand[~reject]])
        major = np.concatenate([major, a[~reject]])
    centres, major = centres[:target], major[:target]
    n = len(centres)
    axes = np.stack([major, major * rng.uniform(0.75, 1.0, n)], axis=1)
    return centres, axes, rng.uniform(0, np.pi, n), rng.uniform(1500.0, 3000.0, n)


def render_nuclei(
    padded: tuple[int, int],
    pad: int,
    shape: tuple[int, int],
    centres: np.ndarray,
    axes: np.ndarray,
    angles: np.ndarray,
    brightness: np.ndarray,
    *,
    first_label: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft-edged ellipses (1 px ramp) on the padded plane and their hard labels.

    Returns
    -------
    cover : ndarray (padded) of float64
        Fractional coverage of each pixel by a nucleus.
    signal : ndarray (padded) of float64
        Coverage times brightness.
    labels : ndarray (shape) of int32
        ``first_label + i`` where nucleus ``i`` covers at least half the pixel.
    """
    hp, wp = padded
    h, w = shape
    labels = np.zeros(shape, np.int32)
    if len(centres) == 0:
        return np.zeros(padded), np.zeros(padded), labels
    half = int(np.ceil(axes[:, 0].max() + 2))
    offs = np.arange(-half, half + 1)
    cy, cx = centres[:, 0, None, None], centres[:, 1, None, None]
    yy = np.rint(cy) + offs[None, :, None]
    xx = np.rint(cx) + offs[None, None, :]
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    u = (dy * cos + dx * sin) / axes[:, 0, None, None]
    v = (-dy * sin + dx * cos) / axes[:, 1, None, None]
    rho = np.sqrt(u * u + v * v)
    dist = np.hypot(dy, dx)
    # signed distance to the rim along the ray from the centre (exact for circles)
    signed = np.where(rho > 1e-9, dist * (1.0 - 1.0 / np.maximum(rho, 1e-9)), -1.0)
    wgt = np.clip(0.5 - signed, 0.0, 1.0)
    yi, xi = np.broadcast_arrays(yy.astype(np.int64) + pad, xx.astype(np.int64) + pad)
    ok = (yi >= 0) & (yi < hp) & (xi >= 0) & (xi < wp) & (wgt > 0)
    flat = yi[ok] * wp + xi[ok]
    cover = np.bincount(flat, wgt[ok], minlength=hp * wp).reshape(padded)
    sig = np.broadcast_to(brightness[:, None, None], wgt.shape)[ok] * wgt[ok]
    signal = np.bincount(flat, sig, minlength=hp * wp).reshape(padded)
    np.minimum(cover, 1.0, out=cover)
    ids = np.broadcast_to(np.arange(first_label, first_label + len(centres), dtype=np.int32)[:, None, None], wgt.shape)
    inner = (wgt >= 0.5) & (yi - pad >= 0) & (yi - pad < h) & (xi - pad >= 0) & (xi - pad < w)
    labels[yi[inner] - pad, xi[inner] - pad] = ids[inner]
    return cover, signal, labels
