"""Synthetic slide-scanner (Axioscan) slides and IMC acquisitions of physical sections of an STPT sample.

After STPT images a section's top and cuts it, the 15 um section is mounted on glass, face up or
face down, and scanned. :func:`render_slide` draws such a slide from a sample's truth
(:class:`~imaxt_pipeline.synth.Truth`): the section's tissue outline and nuclei in bright field
(dark on bright glass, agarose nearly invisible), each bead as the silhouette of the part of its
sphere inside the section (a dark disc of the largest cross-section within the slab, not the thin
optical cut STPT sees), under a random pose: pixel size 0.65-1.3 um, any rotation, a left/right
or up/down flip, a small anisotropic scale and shear, and a mild smooth non-linear warp (a few
tenths of an STPT pixel). ``section=-1`` is an orphan: the section cut above the first imaged
layer, with beads of its own (and the caps of the first section's beads that reach it).

:func:`render_imc` draws an IMC acquisition of a small window of a slide at 1 um/px (low counts,
DNA from the nuclei, beads bright in every channel) with its own small rotation and shift.

Truth (:class:`SlideTruth`): the section, the slide px (x, y) -> section's STPT mosaic px (x, y)
affine (the warp is extra), flip, rotation, every bead's slide position.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage as ndi

from ..algorithms.federation import apply_affine, compose_affine, decompose_affine, invert_affine
from ._czi import write_czi
from ._imc import ImcAcquisition, write_imc_txt, write_mcd
from ._writer import Truth

__all__ = ["ImcTruth", "SlideTruth", "render_imc", "render_slide", "write_slide_czi"]

Array = NDArray[np.float64]

GLASS, TISSUE, NUCLEUS, BEAD = 52000.0, 33000.0, 17000.0, 9000.0
IMC_PANEL = [("DNA1", "Ir", 191), ("DNA2", "Ir", 193), ("Bead", "Ho", 165)]


@dataclass(frozen=True)
class SlideTruth:
    """Truth of one rendered slide.

    ``section`` is the STPT slice (``-1``: orphan, no partner); ``affine_px`` (2, 3) maps slide
    px (x, y) to that section's STPT mosaic px (x, y) (truth frame, drift included); ``warp_px``
    the largest extra displacement of the non-linear warp (STPT px); ``beads`` has
    ``bead_id, x_px, y_px, radius_px`` on the slide (``bead_id`` -1 for the orphan's own beads).
    """

    section: int
    pixel_size_um: float
    affine_px: Array
    flip: bool
    rotation_deg: float
    warp_px: float
    beads: pd.DataFrame


@dataclass(frozen=True)
class ImcTruth:
    """Truth of an IMC window: ``affine_px`` maps IMC px (x, y) to slide px (x, y); ``beads`` in IMC px."""

    pixel_size_um: float
    affine_px: Array
    beads: pd.DataFrame


def _pose(rng: np.random.Generator, slide_um: float, stpt_um: float) -> tuple[Array, bool]:
    """Linear part slide (x, y) -> STPT (x, y): flip, rotation, scale ~ pixel ratio, 1 % anisotropy/shear."""
    t = rng.uniform(-np.pi, np.pi)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    flip = bool(rng.random() < 0.5)
    mirror = np.diag([-1.0, 1.0]) if rng.random() < 0.5 else np.diag([1.0, -1.0])
    aniso = np.array([[1.0 + rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01)], [0.0, 1.0]])
    m = (slide_um / stpt_um) * rot @ aniso
    return (m @ mirror if flip else m), flip


def _slab_beads(truth: Truth, section: int, rng: np.random.Generator) -> pd.DataFrame:
    """Beads cut by section ``section`` (world frame y, x; silhouette radius um), orphan beads added for -1."""
    p = truth.params
    top, bottom = section * p.slice_thickness_um, (section + 1) * p.slice_thickness_um
    b = truth.beads
    z, r = b["z_um"].to_numpy(), b["radius_um"].to_numpy()
    gap = np.maximum(np.maximum(top - z, z - bottom), 0.0)
    sil = np.sqrt(np.clip(r**2 - gap**2, 0.0, None))
    out = pd.DataFrame({"bead_id": b["bead_id"], "y_px": b["y_px"], "x_px": b["x_px"], "radius_um": sil})
    if section < 0:
        out = pd.concat([out, _orphan_beads(truth, rng)], ignore_index=True)
    return out[out["radius_um"] >= 3.0].reset_index(drop=True)


def _orphan_beads(truth: Truth, rng: np.random.Generator) -> pd.DataFrame:
    """Beads above the block's top that no STPT plane reaches, placed in the agarose of the first section."""
    p = truth.params
    h, w = truth.mosaic_shape
    near = ndi.binary_dilation(truth.tissue[0], iterations=int(p.bead_radius_um[1] / p.pixel_size_um) + 4)
    rows: list[tuple[int, float, float, float]] = []
    taken = truth.beads[["y_px", "x_px"]].to_numpy()
    taken_r = truth.beads["radius_um"].to_numpy() / p.pixel_size_um
    for _ in range(2000):
        if len(rows) >= max(8, len(truth.bead_detections) // max(p.slices, 1)):
            break
        rad_um = rng.uniform(*p.bead_radius_um)
        rad = rad_um / p.pixel_size_um
        y, x = rng.uniform(rad + 2, h - rad - 2), rng.uniform(rad + 2, w - rad - 2)
        if near[int(y), int(x)]:
            continue
        d = np.hypot(taken[:, 0] - y, taken[:, 1] - x)
        if np.any(d < taken_r + rad + 4):
            continue
        zc = rng.uniform(-p.slice_thickness_um - rad_um + 2.0, 0.5 * p.slice_thickness_um - rad_um - 1.0)
        gap = max(-p.slice_thickness_um - zc, zc, 0.0)
        rows.append((-1, y, x, float(np.sqrt(max(rad_um**2 - gap**2, 0.0)))))
        taken = np.vstack([taken, [y, x]])
        taken_r = np.append(taken_r, rad)
    return pd.DataFrame(rows, columns=["bead_id", "y_px", "x_px", "radius_um"])


def _warp(rng: np.random.Generator, amplitude: float, size: float) -> tuple[Array, Array, Array]:
    """A smooth displacement field: two long-wavelength sine waves per axis (amplitudes, wave vectors, phases)."""
    amp = rng.uniform(0.5, 1.0, (2, 2)) * amplitude / 2.0
    k = rng.uniform(0.5, 1.5, (2, 2, 2)) * 2 * np.pi / size * rng.choice([-1.0, 1.0], (2, 2, 2))
    return amp, k, rng.uniform(0, 2 * np.pi, (2, 2))


def _displace(xy: Array, field: tuple[Array, Array, Array]) -> Array:
    amp, k, ph = field
    out = np.zeros_like(xy)
    for axis in range(2):
        for j in range(2):
            out[:, axis] += amp[axis, j] * np.sin(xy @ k[axis, j] + ph[axis, j])
    return out


def _coarse_displace(grid: Array, field: tuple[Array, Array, Array], step: int = 16) -> Array:
    """:func:`_displace` on every ``step``-th point of a (H, W, 2) grid, interpolated (the field is smooth)."""
    h, w, _ = grid.shape
    sub = grid[::step, ::step]
    d = _displace(sub.reshape(-1, 2), field).reshape(*sub.shape[:2], 2)
    iy = np.arange(h) / step
    ix = np.arange(w) / step
    coords = np.meshgrid(iy, ix, indexing="ij")
    return np.stack([ndi.map_coordinates(d[..., a], coords, order=1, mode="nearest") for a in range(2)], -1)


def render_slide(
    truth: Truth,
    section: int,
    *,
    seed: int = 0,
    pixel_size_um: float | None = None,
    warp_px: float | None = None,
    noise: float = 600.0,
) -> tuple[NDArray[np.uint16], SlideTruth]:
    """Render the bright-field slide of STPT section ``section`` (``-1``: an orphan above the stack).

    Returns
    -------
    image : ndarray (1, H, W) uint16
        One transmitted-light channel.
    truth : SlideTruth
    """
    p = truth.params
    rng = np.random.default_rng([seed, section + 1, 17])
    px = float(rng.uniform(0.65, 1.3)) if pixel_size_um is None else float(pixel_size_um)
    amp = float(rng.uniform(0.2, 0.5)) if warp_px is None else float(warp_px)
    lin, _ = _pose(rng, px, p.pixel_size_um)
    k = max(section, 0)
    off = truth.slice_offsets_px[k]  # (dy, dx) of the section's content
    h, w = truth.mosaic_shape
    # slide canvas: the rotated mosaic plus a margin of bare glass
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
    inv = np.linalg.inv(lin)
    on_slide = corners @ inv.T
    lo, hi = on_slide.min(axis=0), on_slide.max(axis=0)
    margin = 0.05 * (hi - lo)
    out_w, out_h = (np.ceil(hi - lo + 2 * margin)).astype(int)
    shift = rng.uniform(-0.5, 0.5, 2) * margin
    # slide (x, y) -> mosaic (x, y): p = lin @ (q + lo - margin - shift)
    affine = np.hstack([lin, (lin @ (lo - margin - shift))[:, None]])
    field = _warp(rng, amp, float(max(h, w)))

    # appearance fields in the section frame
    tissue = ndi.gaussian_filter(truth.tissue[k].astype(np.float64), 1.0)
    if section < 0:
        tissue = ndi.gaussian_filter(ndi.binary_erosion(truth.tissue[0], iterations=3).astype(np.float64), 1.0)
        nuclei = np.zeros_like(tissue)
    else:
        nuclei = ndi.gaussian_filter((truth.nuclei[k] > 0).astype(np.float64), 0.8)
    texture = ndi.gaussian_filter(rng.standard_normal((h, w)), 6.0)
    texture /= texture.std() + 1e-12
    yy, xx = np.mgrid[0:out_h, 0:out_w]
    q = np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float64)
    s = apply_affine(affine, q)
    s += _coarse_displace(s.reshape(out_h, out_w, 2), field).reshape(-1, 2)
    coords = [s[:, 1], s[:, 0]]
    t_s = ndi.map_coordinates(tissue, coords, order=1, cval=0.0).reshape(out_h, out_w)
    n_s = ndi.map_coordinates(nuclei, coords, order=1, cval=0.0).reshape(out_h, out_w)
    x_s = ndi.map_coordinates(texture, coords, order=1, cval=0.0).reshape(out_h, out_w)
    img = GLASS * (1 - t_s) + (TISSUE + 2500.0 * x_s) * t_s
    img = img * (1 - n_s) + NUCLEUS * n_s
    img *= 1.0 + 0.02 * (yy / out_h - 0.5)  # uneven illumination across the slide

    beads = _slab_beads(truth, section, rng)
    world = beads[["x_px", "y_px"]].to_numpy() + off[::-1]  # section mosaic (x, y)
    q_b = _invert_warped(affine, field, world)
    r_b = beads["radius_um"].to_numpy() / px
    for (bx, by), rb in zip(q_b, r_b, strict=True):
        y0, y1 = max(int(by - rb - 2), 0), min(int(by + rb + 3), out_h)
        x0, x1 = max(int(bx - rb - 2), 0), min(int(bx + rb + 3), out_w)
        if y1 <= y0 or x1 <= x0:
            continue
        gy, gx = np.ogrid[y0:y1, x0:x1]
        wb = np.clip(rb - np.hypot(gy - by, gx - bx) + 0.5, 0.0, 1.0)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - wb) + BEAD * wb
    img = ndi.gaussian_filter(img, 0.6) + rng.normal(0.0, noise, img.shape)
    inside = (
        (q_b[:, 0] > r_b + 2) & (q_b[:, 0] < out_w - r_b - 2) & (q_b[:, 1] > r_b + 2) & (q_b[:, 1] < out_h - r_b - 2)
    )
    table = pd.DataFrame(
        {"bead_id": beads["bead_id"].to_numpy(), "x_px": q_b[:, 0], "y_px": q_b[:, 1], "radius_px": r_b}
    )[inside].reset_index(drop=True)
    flip, rot, _ = decompose_affine(affine)
    st = SlideTruth(section, px, affine, flip, rot, amp, table)
    return np.clip(img, 0, 65535).astype(np.uint16)[None], st


def _invert_warped(affine: Array, field: tuple[Array, Array, Array], target: Array) -> Array:
    """Slide points q with affine(q) + warp(affine(q)) = target (fixed point; the warp is small and smooth)."""
    inv = invert_affine(affine)
    s = target.copy()
    for _ in range(20):
        s = target - _displace(s, field)
    return apply_affine(inv, s)


def write_slide_czi(
    path: str | os.PathLike[str],
    image: NDArray[np.uint16] | list[NDArray[np.uint16]],
    pixel_size_um: float,
) -> None:
    """Write (C, H, W) slides as a CZI mosaic of 2 x 2 abutting tiles per slide, one scene each.

    ``image`` is one slide or a list of them (same channels and pixel size: the sections of one glass
    slide); scene tiles are padded with their border to a common size and the scenes laid side by
    side on the glass, 1 mm apart.
    """
    images = [np.asarray(image)] if not isinstance(image, list) else [np.asarray(i) for i in image]
    c = images[0].shape[0]
    th = max(-(-i.shape[1] // 2) for i in images)
    tw = max(-(-i.shape[2] // 2) for i in images)
    scenes, stages = [], []
    for s, img in enumerate(images):
        full = np.pad(img, ((0, 0), (0, 2 * th - img.shape[1]), (0, 2 * tw - img.shape[2])), mode="edge")
        scenes.append(
            np.stack([full[:, r * th : (r + 1) * th, q * tw : (q + 1) * tw] for r in range(2) for q in range(2)], 1)
        )
        x0 = s * (2 * tw * pixel_size_um + 1000.0)
        stages.append([[r * th * pixel_size_um, x0 + q * tw * pixel_size_um] for r in range(2) for q in range(2)])
    write_czi(
        path,
        np.stack(scenes),
        np.asarray(stages),
        channels=["brightfield"] if c == 1 else [f"ch{i}" for i in range(c)],
        pixel_size_um=pixel_size_um,
        scene_names=["slide"] if len(images) == 1 else [f"section {s + 1}" for s in range(len(images))],
    )


def render_imc(
    slide: NDArray[np.uint16],
    slide_truth: SlideTruth,
    *,
    size_um: float = 400.0,
    seed: int = 0,
    min_beads: int = 10,
    out_txt: str | os.PathLike[str] | None = None,
    out_mcd: str | os.PathLike[str] | None = None,
) -> tuple[NDArray[np.float32], ImcTruth]:
    """An IMC acquisition (1 um/px) of the slide window holding the most beads (at least ``min_beads`` if any does).

    Channels :data:`IMC_PANEL`: two DNA channels (nuclei, from the slide's dark nuclei), one bead
    channel; Poisson counts. Written as an IMC ``.txt`` when ``out_txt`` is given, as a one-acquisition
    ``.mcd`` when ``out_mcd`` is.
    """
    rng = np.random.default_rng([seed, 29])
    img = slide[0].astype(np.float64)
    n = int(round(size_um))
    scale = 1.0 / slide_truth.pixel_size_um  # IMC px -> slide px
    t = np.radians(rng.uniform(-5, 5))
    lin = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    beads = slide_truth.beads
    xy = beads[["x_px", "y_px"]].to_numpy()
    half = 0.5 * n * scale
    best, best_c = -1, np.array(img.shape[::-1], np.float64) / 2
    for c in rng.uniform([half, half], [img.shape[1] - half, img.shape[0] - half], (200, 2)):
        count = int(np.sum(np.all(np.abs(xy - c) < 0.8 * half, axis=1)))
        if count > best:
            best, best_c = count, c
    affine = np.hstack([lin, (best_c - lin @ np.array([n / 2, n / 2]))[:, None]])
    yy, xx = np.mgrid[0:n, 0:n]
    q = apply_affine(affine, np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float64))
    vals = ndi.map_coordinates(img, [q[:, 1], q[:, 0]], order=1, mode="nearest").reshape(n, n)
    dna = np.clip((TISSUE - vals) / (TISSUE - NUCLEUS), 0, 1.5) * (vals > BEAD + 3000)
    inv = invert_affine(affine)
    local = apply_affine(inv, xy)
    rad = beads["radius_px"].to_numpy() / scale
    bead_map = np.zeros((n, n))
    for (bx, by), rb in zip(local, rad, strict=True):
        if -rb < bx < n + rb and -rb < by < n + rb:
            wb = np.clip(rb - np.hypot(yy - by, xx - bx) + 0.5, 0.0, 1.0)
            bead_map = np.maximum(bead_map, wb)
    chans = [8.0 * dna + 0.3, 5.0 * dna + 0.3, 40.0 * bead_map + 0.5]
    counts = np.stack([rng.poisson(ndi.gaussian_filter(c, 0.7)) for c in chans]).astype(np.float32)
    inside = (local[:, 0] > rad) & (local[:, 0] < n - rad) & (local[:, 1] > rad) & (local[:, 1] < n - rad)
    table = pd.DataFrame(
        {"bead_id": beads["bead_id"].to_numpy(), "x_px": local[:, 0], "y_px": local[:, 1], "radius_px": rad}
    )
    if out_txt is not None:
        write_imc_txt(out_txt, counts, IMC_PANEL)
    if out_mcd is not None:
        write_mcd(out_mcd, [ImcAcquisition(counts, description="window")], IMC_PANEL)
    return counts, ImcTruth(1.0, affine, table[inside].reset_index(drop=True))


def imc_to_section(imc: ImcTruth, slide: SlideTruth) -> Array:
    """True IMC px (x, y) -> STPT section mosaic px (x, y) affine (warp aside)."""
    return compose_affine(slide.affine_px, imc.affine_px)
