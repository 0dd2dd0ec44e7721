"""Randomised-instrument samples: every draw its own microscope, scene and grid, all tiles in memory.

The fixed-parameter simulator (:func:`.synthesize`) renders its distortion with the very polynomial the
stitching solve fits, with one dark level, one flat and one stray-light edge: a sweep over it flatters
the solver. :func:`draw_instrument` draws everything that differs between instruments and samples, and
:func:`render_random_sample` renders one section after another with the specimen of :class:`._scene.Scene`
(agarose, tissue, nuclei, beads) seen through that instrument:

- distortion *outside* the solver's family: separate x/y cubic terms (up to ~3 % of the half-field at the
  corners, the IMAXT figure), a 5th-order radial term, a magnification error and a smooth random
  displacement field (:func:`displacement`). The field's own linear part (a change of magnification, a
  rotation or a shear of the optics) is projected out unless ``field_linear``: the instrument's linear
  optics are the drawn ``mag``, as the stitching issue lists them. No overlap can see a linear map of the
  optics (only the stage can, to sigma_stage / lever), so a field that carried one would test the stage,
  not the stitcher; ``benchmarks/camera_rotation.py`` draws a turned camera explicitly and
  ``stitching_sweep.py --field-linear`` keeps the field's linear part to show what it costs;
- per-channel dark (0-500 ADU), gain from a photon budget (100-5000 photons at the scene's peak), read
  noise, vignetting (10-50 %, off-centre), stray light entering at any edge or none;
- stage jitter (1-10 px sigma, truncated at 3 sigma), overlap 5-20 %, tissue fraction 10-90 %, smooth to
  grainy textures, bead density 0-10x the default, an empty strip of agarose (empty tiles);
- grids 2x2 to 10x10, tiles 256 to 2048 px, 1 to 8 sections (``max_pixels`` caps the rendered area).

A detector pixel ``p`` of a tile whose true top-left is ``T`` sees the scene at ``T + p + D(p)``: the
truth positions are those ``T`` (as for :func:`.synthesize`). :func:`cut_tiles` does the same for any
image (tiles cut from real pictures, no distortion, independent noise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ._params import SynthParams
from ._scene import Scene

__all__ = [
    "InstrumentDraw",
    "RandomSample",
    "calibration_draw",
    "cut_tiles",
    "displacement",
    "draw_instrument",
    "render_random_sample",
]

_Array = npt.NDArray[np.float64]
EDGES = ("none", "top", "bottom", "left", "right")


@dataclass(frozen=True)
class InstrumentDraw:
    """One drawn instrument + scene + grid (all lengths in detector px, intensities in ADU)."""

    seed: int
    rows: int
    cols: int
    tile: int
    sections: int
    channels: int
    overlap: float
    pixel_size_um: float
    dark: tuple[float, ...]
    photons_peak: float
    read_noise: float
    vignetting: float
    vignetting_centre: tuple[float, float]
    stray_edge: str
    stray_amplitude: float
    stray_scale_px: float
    mag: tuple[float, float]  # (y, x) magnification error
    cubic: tuple[float, float]  # (k_y, k_x) as in the solver's model
    quintic: tuple[float, float]  # (y, x) coefficient of v r^4 / u r^4: outside the solver's family
    field_px: float  # rms amplitude of the smooth random displacement field
    jitter_px: float
    tissue_fraction: float
    grain: float  # relative amplitude of the fine texture multiplied into the tissue
    psf_sigma_px: float
    bead_density: float
    empty_fraction: float
    field_linear: bool = False  # keep the random field's linear part (magnification, rotation, shear)

    @property
    def corner_distortion_px(self) -> float:
        """Largest polynomial displacement at a tile corner (magnification, cubic and quintic terms)."""
        c = (self.tile - 1) / 2.0
        return float(
            max(abs(c * (m + 2 * k + 4 * q)) for m, k, q in zip(self.mag, self.cubic, self.quintic, strict=True))
        )

    def describe(self) -> str:
        """One line naming the draw."""
        kept = " (linear kept)" if self.field_linear else ""
        return (
            f"seed {self.seed}: {self.sections}x {self.rows}x{self.cols} tiles of {self.tile} px, ov "
            f"{self.overlap:.2f}, jitter {self.jitter_px:.1f}, corner {self.corner_distortion_px:.1f} px, field "
            f"{self.field_px:.2f}{kept}, tissue {self.tissue_fraction:.2f}, empty {self.empty_fraction:.2f}, "
            f"{self.photons_peak:.0f} ph, stray {self.stray_edge}, beads x{self.bead_density:.1f}"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict of the draw."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RandomSample:
    """A rendered randomised sample.

    Attributes
    ----------
    draw : InstrumentDraw
    tiles : ndarray (S, C, T, H, W) of uint16
        Raw tiles, row-major tile index ``t = row * cols + col``.
    stage_px : ndarray (T, 2)
        Recorded (nominal) stage positions in px, the same for every section.
    true_px : ndarray (S, T, 2)
        True top-left of each tile.
    pair_texture : ndarray (S, P)
        Std (ADU, noise-free scene) of the true overlap of each pair of :func:`adjacent_pairs` order.
    """

    draw: InstrumentDraw
    tiles: npt.NDArray[np.uint16]
    stage_px: _Array
    true_px: _Array
    pair_texture: _Array


def draw_instrument(
    seed: int,
    *,
    grid: tuple[int, int] | None = None,
    tile: int | None = None,
    sections: int | None = None,
    max_pixels: float | None = None,
    field_linear: bool = False,
) -> InstrumentDraw:
    """Draw an instrument, a scene and a grid from ``seed``; ``grid``, ``tile``, ``sections`` fix those.

    ``max_pixels`` caps ``sections * rows * cols * tile**2`` by shrinking the grid (then the sections):
    a 10 x 10 grid of 2048 px tiles is 420 Mpx per section. ``field_linear`` keeps the random field's
    linear part (see the module docstring); it draws nothing, so the rest of the draw is the same.
    """
    rng = np.random.default_rng(seed)
    rows, cols = grid if grid is not None else (int(rng.integers(2, 11)), int(rng.integers(2, 11)))
    tile = int(tile if tile is not None else rng.choice([256, 384, 512, 768, 1024, 1536, 2048]))
    n_sec = int(sections if sections is not None else rng.integers(1, 9))
    if max_pixels is not None:
        while n_sec * rows * cols * tile * tile > max_pixels and max(rows, cols) > 2:
            rows, cols = (rows - 1, cols) if rows >= cols else (rows, cols - 1)
            rows, cols = max(rows, 2), max(cols, 2)
        while n_sec * rows * cols * tile * tile > max_pixels and n_sec > 1:
            n_sec -= 1
    n_ch = int(rng.integers(1, 4))
    corner = rng.uniform(0.0, 0.03)  # fraction of the half-field at the corner
    share5 = rng.uniform(0.0, 0.3)  # part of it from the 5th-order term
    sign = rng.choice([-1.0, 1.0])
    aniso = 1.0 + rng.uniform(-0.3, 0.3, 2)
    # corner displacement per axis = c (2 k + 4 q) with the corner fraction split between k and q
    cubic = sign * aniso * corner * (1 - share5) / 2.0
    quintic = sign * aniso * corner * share5 / 4.0
    return InstrumentDraw(
        seed=seed,
        rows=rows,
        cols=cols,
        tile=tile,
        sections=n_sec,
        channels=n_ch,
        overlap=float(rng.uniform(0.05, 0.20)),
        pixel_size_um=float(rng.uniform(0.5, 1.2)),
        dark=tuple(float(d) for d in rng.uniform(0.0, 500.0, n_ch)),
        photons_peak=float(np.exp(rng.uniform(np.log(100.0), np.log(5000.0)))),
        read_noise=float(rng.uniform(1.0, 10.0)),
        vignetting=float(rng.uniform(0.1, 0.5)),
        vignetting_centre=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2))),
        stray_edge=str(rng.choice(EDGES)),
        stray_amplitude=float(rng.uniform(50.0, 800.0)),
        stray_scale_px=float(rng.uniform(3.0, 30.0)),
        mag=(float(rng.uniform(-0.002, 0.002)), float(rng.uniform(-0.002, 0.002))),
        cubic=(float(cubic[0]), float(cubic[1])),
        quintic=(float(quintic[0]), float(quintic[1])),
        field_px=float(rng.uniform(0.0, 0.001) * tile / 2.0),
        jitter_px=float(rng.uniform(1.0, 10.0)),
        tissue_fraction=float(rng.uniform(0.1, 0.9)),
        grain=float(rng.uniform(0.0, 0.5)),
        psf_sigma_px=float(rng.uniform(0.5, 2.5)),
        bead_density=float(rng.uniform(0.0, 10.0)),
        empty_fraction=float(rng.choice([0.0, 0.0, rng.uniform(0.1, 0.4)])),
        field_linear=field_linear,
    )


def calibration_draw(
    draw: InstrumentDraw,
    *,
    grid: tuple[int, int] | None = None,
    max_pixels: float = 40e6,
    overlap: float = 0.45,
    stage_sigma_px: float = 0.1,
) -> InstrumentDraw:
    """A distortion-calibration acquisition through the optics of ``draw`` (:func:`.calibration_params`'s analogue).

    Same seed, tile, magnification, cubic and quintic terms, random field (and ``field_linear``): the field is
    drawn first from the seed (:func:`render_random_sample`), so the calibration sees the very displacement the
    samples do. Same camera and light (dark, photons, vignetting, stray light, PSF, pixel size). What a lab sets
    for a calibration differs: ``overlap`` (40-45 %), a precise stage (``stage_sigma_px``, the ruler of the
    magnification), one section of one channel, dense tissue (0.9) with no empty strip and no beads. ``grid``
    defaults to the largest square from 5 x 5 down to 3 x 3 within ``max_pixels``: 3 x 3 at 2048 px, whose
    magnification sigma is ``stage_sigma_px / (sqrt(6) * step)``, 3.6e-5 for a 0.1 px stage.
    """
    if grid is None:
        n = 5
        while n > 3 and n * n * draw.tile * draw.tile > max_pixels:
            n -= 1
        grid = (n, n)
    return replace(
        draw,
        rows=int(grid[0]),
        cols=int(grid[1]),
        sections=1,
        channels=1,
        dark=draw.dark[:1],
        overlap=float(overlap),
        jitter_px=float(stage_sigma_px),
        tissue_fraction=0.9,
        bead_density=0.0,
        empty_fraction=0.0,
    )


def displacement(draw: InstrumentDraw, rng: np.random.Generator) -> tuple[_Array, _Array]:
    """``(dy, dx)`` at every detector pixel: polynomial terms plus a smooth random field (fixed per draw)."""
    n = draw.tile
    c = (n - 1) / 2.0
    v = (np.arange(n) - c) / c
    vv, uu = np.meshgrid(v, v, indexing="ij")
    r2 = uu * uu + vv * vv
    out = []
    for axis, w in enumerate((vv, uu)):
        poly = c * (draw.mag[axis] * w + draw.cubic[axis] * w * r2 + draw.quintic[axis] * w * r2 * r2)
        coarse = rng.standard_normal((6, 6))
        field = ndi.zoom(coarse, n / 6.0, order=3, mode="nearest")[:n, :n]
        design = np.stack([np.ones(n * n), vv.ravel(), uu.ravel()], axis=1)
        coef, *_ = np.linalg.lstsq(design, field.ravel(), rcond=None)
        # the mean is a translation (the truth's frame); the slopes are linear optics, kept only if asked
        field = field - (coef[0] if draw.field_linear else (design @ coef).reshape(n, n))
        field *= draw.field_px / max(float(field.std()), 1e-12)
        out.append(poly + field)
    return out[0], out[1]


def _flat(draw: InstrumentDraw) -> _Array:
    n = draw.tile
    v = np.linspace(-1.0, 1.0, n)
    cy, cx = draw.vignetting_centre
    return 1.0 - draw.vignetting * ((v[:, None] - cy) ** 2 + (v[None, :] - cx) ** 2) / (
        2.0 * (1 + max(abs(cy), abs(cx))) ** 2
    )


def _stray(draw: InstrumentDraw) -> _Array:
    n = draw.tile
    ramp = draw.stray_amplitude * np.exp(-np.arange(n) / draw.stray_scale_px)
    prof = {"none": np.zeros((n, n)), "left": np.broadcast_to(ramp[None, :], (n, n))}
    prof["right"] = prof["left"][:, ::-1]
    prof["top"] = prof["left"].T
    prof["bottom"] = prof["top"][::-1]
    return np.array(prof[draw.stray_edge], np.float64)


def _scene_params(draw: InstrumentDraw) -> SynthParams:
    base = SynthParams(slices=draw.sections, rows=draw.rows, cols=draw.cols, tile_shape=(draw.tile, draw.tile))
    depth = draw.sections * base.slice_thickness_um
    reach = min(1.0, (base.bead_radius_um[0] + 0.5 * base.slice_thickness_um) / depth)
    return SynthParams(
        slices=draw.sections,
        rows=draw.rows,
        cols=draw.cols,
        seed=draw.seed,
        tile_shape=(draw.tile, draw.tile),
        overlap=draw.overlap,
        pixel_size_um=draw.pixel_size_um,
        channels=tuple(f"ch{i}" for i in range(draw.channels)),
        stage_error_px=draw.jitter_px,
        psf_sigma_px=draw.psf_sigma_px,
        tissue_fraction=draw.tissue_fraction,
        empty_fraction=draw.empty_fraction,
        n_beads=int(round(draw.bead_density * math.ceil(10.0 / reach))),
    )


def render_random_sample(draw: InstrumentDraw) -> RandomSample:
    """Render every section of ``draw`` (deterministic in ``draw.seed``)."""
    from ..algorithms.stitching import adjacent_pairs

    rng = np.random.default_rng([draw.seed, 1])
    params = _scene_params(draw)
    dy, dx = displacement(draw, rng)
    pad = int(math.ceil(max(np.abs(dy).max(), np.abs(dx).max()))) + 8
    scene = Scene(params, rng, pad=pad)
    (sy, sx), m = params.step_px, params.margin_px
    rr, cc = np.meshgrid(np.arange(draw.rows), np.arange(draw.cols), indexing="ij")
    stage = np.stack([m + rr * sy, m + cc * sx], axis=-1).reshape(-1, 2).astype(np.float64)
    err = rng.normal(0.0, draw.jitter_px, (draw.sections, len(stage), 2))
    err = np.clip(err, -3 * draw.jitter_px, 3 * draw.jitter_px)
    true = stage[None] + err
    flat, stray = _flat(draw), _stray(draw)
    yy, xx = np.indices((draw.tile, draw.tile), dtype=np.float64)
    base = (yy + dy + pad, xx + dx + pad)
    n_t, n = len(stage), draw.tile
    tiles = np.zeros((draw.sections, draw.channels, n_t, n, n), np.uint16)
    pairs = adjacent_pairs(draw.rows, draw.cols)
    texture = np.zeros((draw.sections, len(pairs)))
    for k in range(draw.sections):
        plane = scene.render(k, rng)
        planes = plane.planes
        if draw.grain > 0:
            grain = ndi.gaussian_filter(rng.standard_normal(planes.shape[1:]), 0.8)
            grain *= draw.grain / max(float(grain.std()), 1e-12)
            # the fine texture is the tissue's: agarose and the (homogeneous) beads stay smooth
            where = np.pad(plane.tissue.astype(np.float64), scene.pad) * (1.0 - scene.bead_cover(k))
            planes = planes * (1.0 + grain * ndi.gaussian_filter(where, 1.0))[None]
        peak = float(np.percentile(planes[:, pad:-pad, pad:-pad], 99.9))
        gain = max(peak, 1.0) / draw.photons_peak
        for ch in range(draw.channels):
            coeffs = ndi.spline_filter(planes[ch], order=3, mode="mirror")
            for t in range(n_t):
                ty, tx = true[k, t]
                sc = ndi.map_coordinates(coeffs, (base[0] + ty, base[1] + tx), order=3, prefilter=False, mode="mirror")
                photons = np.maximum(flat * sc + stray, 0.0) / gain
                shot = rng.poisson(photons).astype(np.float64)
                raw = gain * shot + draw.dark[ch] + draw.read_noise * rng.standard_normal(photons.shape)
                tiles[k, ch, t] = np.clip(np.rint(raw), 0, 65535).astype(np.uint16)
        total = planes.sum(axis=0)
        for i, (a, b) in enumerate(pairs):
            y0, x0 = (np.maximum(true[k, a], true[k, b]) + pad).astype(int)
            y1, x1 = (np.minimum(true[k, a], true[k, b]) + n + pad).astype(int)
            texture[k, i] = float(total[y0:y1, x0:x1].std()) if y1 > y0 and x1 > x0 else 0.0
    return RandomSample(draw, tiles, stage, true, texture)


def cut_tiles(
    image: npt.ArrayLike,
    rows: int,
    cols: int,
    *,
    overlap: float,
    jitter_px: float,
    seed: int,
    photons_peak: float = 1000.0,
    dark: float = 100.0,
    read_noise: float = 3.0,
) -> tuple[npt.NDArray[np.uint16], _Array, _Array]:
    """Tiles of a (C, H, W) or (H, W) image on a jittered grid with independent shot + read noise.

    Returns ``tiles`` (C, T, h, w) uint16, ``stage_px`` (T, 2) nominal and ``true_px`` (T, 2): tile ``t``
    shows the image at ``true_px[t] + p`` (sub-pixel, cubic-spline resampled).
    """
    img = np.asarray(image, np.float64)
    img = img[None] if img.ndim == 2 else img
    rng = np.random.default_rng(seed)
    h, w = img.shape[1:]
    margin = int(math.ceil(3 * jitter_px)) + 4
    th = int((h - 2 * margin) / (rows - (rows - 1) * overlap))
    tw = int((w - 2 * margin) / (cols - (cols - 1) * overlap))
    n = min(th, tw)
    step = n * (1 - overlap)
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    stage = np.stack([margin + rr * step, margin + cc * step], axis=-1).reshape(-1, 2).astype(np.float64)
    true = stage + np.clip(rng.normal(0.0, jitter_px, stage.shape), -3 * jitter_px, 3 * jitter_px)
    gain = max(float(np.percentile(img, 99.9)), 1.0) / photons_peak
    yy, xx = np.indices((n, n), dtype=np.float64)
    tiles = np.zeros((img.shape[0], len(stage), n, n), np.uint16)
    for ch in range(img.shape[0]):
        coeffs = ndi.spline_filter(img[ch], order=3, mode="mirror")
        for t, (ty, tx) in enumerate(true):
            sc = ndi.map_coordinates(coeffs, (yy + ty, xx + tx), order=3, prefilter=False, mode="mirror")
            raw = gain * rng.poisson(np.maximum(sc, 0.0) / gain) + dark + read_noise * rng.standard_normal(sc.shape)
            tiles[ch, t] = np.clip(np.rint(raw), 0, 65535).astype(np.uint16)
    return tiles, stage, true
