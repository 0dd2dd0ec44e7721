"""Parameters of the synthetic STPT sample (:class:`SynthParams`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..algorithms.optics import DistortionModel, max_displacement

__all__ = ["BASE_DISTORTION", "SynthParams", "calibration_params", "demo_params"]

#: Shape of the default distortion; it is rescaled to :attr:`SynthParams.corner_distortion_px`.
BASE_DISTORTION = DistortionModel(mag_y=0.001, mag_x=-0.001, k_y=0.004, k_x=0.005)

_PAIRS = ("tile_shape", "drift_px_per_slice", "bead_radius_um", "nucleus_radius_um")


@dataclass(frozen=True)
class SynthParams:
    """Everything that defines a synthetic sample; the seed makes it reproducible.

    Lengths ending in ``_um`` are micrometres, ``_px`` mosaic pixels, and
    intensities are detector counts (ADU).

    Attributes
    ----------
    sample, slices, rows, cols, tile_shape, overlap, pixel_size_um, slice_thickness_um, channels
        Acquisition geometry, written to ``acquisition.json``. Channel 0
        carries the nuclear stain, every other channel the cytoplasmic one.
    seed : int
        Seed of every random draw (scene, stage, noise).
    stage_error_px : float
        Sigma of true minus recorded tile position, per tile, axis and slice
        (normal, truncated at 3 sigma so that tiles stay inside the mosaic frame).
    drift_px_per_slice, drift_walk_px : (float, float), float
        Content of slice ``k`` is displaced by ``k * drift_px_per_slice`` plus
        a random walk with this step sigma (slice 0 is not displaced).
    dark_offset, read_noise, gain : float
        Bias in counts, Gaussian read noise sigma in counts, counts per photon.
    flat_vignetting : float
        Relative drop of the flat field at the tile corners.
    stray_light, stray_light_scale_px : float
        Additive stray light at the tile edge ``x = 0`` and its exponential decay length.
    distortion : DistortionModel or None
        Optical distortion; ``None`` uses :data:`BASE_DISTORTION` scaled so the
        corner displacement is ``corner_distortion_px`` for this tile shape.
    psf_sigma_px : float
        Gaussian optical blur of the imaged plane (part of the clean truth planes).
    tissue_fraction : float
        Fraction of the (non-empty part of the) mosaic covered by tissue.
    empty_fraction : float
        Fraction of the mosaic width, on the right, left as empty agarose
        without tissue or beads.
    n_beads : int or None
        Number of beads to place (fewer if they do not fit); ``None`` aims at
        about ten beads cut by every slice. The agarose caps the count: 3 x 3
        tiles of 256² hold 8-13, 2 x 2 tiles of 256² only 4-5 at the default
        tissue fraction (8-9 with ``tissue_fraction=0.35``).
    bead_radius_um, bead_intensity : (float, float), float
        Uniform range of the bead sphere radius; bead brightness in counts.
    nucleus_radius_um, nuclei_per_mm2 : (float, float), float
        Range of the nucleus semi-axes and the target number of nuclei per
        mm² of tissue (fewer when they do not fit without overlapping).
    """

    sample: str = "synth"
    slices: int = 4
    rows: int = 3
    cols: int = 3
    seed: int = 0
    tile_shape: tuple[int, int] = (256, 256)
    overlap: float = 0.1
    pixel_size_um: float = 1.0
    slice_thickness_um: float = 15.0
    channels: tuple[str, ...] = ("nuclear", "cyto")
    stage_error_px: float = 3.0
    drift_px_per_slice: tuple[float, float] = (0.8, -0.5)
    drift_walk_px: float = 0.3
    dark_offset: float = 100.0
    flat_vignetting: float = 0.3
    stray_light: float = 400.0
    stray_light_scale_px: float = 4.0
    distortion: DistortionModel | None = None
    corner_distortion_px: float = 2.5
    read_noise: float = 5.0
    gain: float = 1.0
    psf_sigma_px: float = 0.7
    tissue_fraction: float = 0.55
    empty_fraction: float = 0.0
    n_beads: int | None = None
    bead_radius_um: tuple[float, float] = (40.0, 50.0)
    bead_intensity: float = 4000.0
    nucleus_radius_um: tuple[float, float] = (4.0, 6.0)
    nuclei_per_mm2: float = 3000.0

    def __post_init__(self) -> None:
        for name in _PAIRS:
            value = getattr(self, name)
            if len(value) != 2:
                raise ValueError(f"{name} must have two values, got {value!r}")
            cast = int if name == "tile_shape" else float
            object.__setattr__(self, name, (cast(value[0]), cast(value[1])))
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        if isinstance(self.distortion, dict):
            object.__setattr__(self, "distortion", DistortionModel(**self.distortion))
        self._validate()

    def _validate(self) -> None:
        if not self.sample or "/" in self.sample or "\\" in self.sample:
            raise ValueError(f"sample must be a plain name, got {self.sample!r}")
        for name in ("slices", "rows", "cols"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.tile_shape) < 16:
            raise ValueError(f"tile_shape must be at least 16 px, got {self.tile_shape}")
        if not 0 <= self.overlap < 0.5:
            raise ValueError(f"overlap must be in [0, 0.5), got {self.overlap}")
        if not self.channels:
            raise ValueError("channels must not be empty")
        positive = ("pixel_size_um", "slice_thickness_um", "gain", "stray_light_scale_px")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        non_negative = (
            "stage_error_px",
            "drift_walk_px",
            "dark_offset",
            "stray_light",
            "read_noise",
            "psf_sigma_px",
            "bead_intensity",
            "nuclei_per_mm2",
            "corner_distortion_px",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.flat_vignetting < 1:
            raise ValueError(f"flat_vignetting must be in [0, 1), got {self.flat_vignetting}")
        if not 0 < self.tissue_fraction < 1:
            raise ValueError(f"tissue_fraction must be in (0, 1), got {self.tissue_fraction}")
        if not 0 <= self.empty_fraction <= 0.8:
            raise ValueError(f"empty_fraction must be in [0, 0.8], got {self.empty_fraction}")
        if self.n_beads is not None and self.n_beads < 0:
            raise ValueError(f"n_beads must be >= 0 or None, got {self.n_beads}")
        for name in ("bead_radius_um", "nucleus_radius_um"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be an increasing positive range, got {(lo, hi)}")
        if self.distortion is not None and not isinstance(self.distortion, DistortionModel):
            raise TypeError(f"distortion must be a DistortionModel or None, got {type(self.distortion)}")

    @property
    def step_px(self) -> tuple[float, float]:
        """Nominal stage step between neighbouring tiles, (y, x) in px."""
        return self.tile_shape[0] * (1 - self.overlap), self.tile_shape[1] * (1 - self.overlap)

    @property
    def margin_px(self) -> int:
        """Offset of the nominal tile (0, 0) from the mosaic origin: covers the truncated stage error."""
        return int(math.ceil(3 * self.stage_error_px)) + 2

    @property
    def mosaic_shape(self) -> tuple[int, int]:
        """Shape (H, W) of the mosaic frame; every true tile lies inside it."""
        (sy, sx), m = self.step_px, self.margin_px
        return (
            int(math.ceil(2 * m + (self.rows - 1) * sy + self.tile_shape[0])),
            int(math.ceil(2 * m + (self.cols - 1) * sx + self.tile_shape[1])),
        )

    def resolved_distortion(self) -> DistortionModel:
        """The distortion actually simulated (see :attr:`distortion`)."""
        if self.distortion is not None:
            return self.distortion
        scale = self.corner_distortion_px / max_displacement(self.tile_shape, BASE_DISTORTION)
        return DistortionModel(**{k: v * scale for k, v in BASE_DISTORTION.as_dict().items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); :meth:`from_dict` inverts it."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthParams:
        """Rebuild parameters from :meth:`to_dict` output (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SynthParams fields: {unknown}")
        return cls(**data)


def demo_params() -> SynthParams:
    """Parameters of the embedded demo sample: 6 slices of 3 x 3 tiles of 512².

    Returns
    -------
    SynthParams
    """
    return SynthParams(slices=6, rows=3, cols=3, tile_shape=(512, 512))


def calibration_params(**overrides: Any) -> SynthParams:
    """A distortion-calibration acquisition: 5 x 5 tiles, 45 % overlap, a 0.1 px stage, dense tissue.

    One slice, tissue over most of the field and no beads, so that every
    overlap is textured; the optics (tile shape, distortion, flat) are those
    of :class:`SynthParams`' defaults unless overridden. The stage is the
    ruler of the magnification: 0.1 px over this grid pins it to 1e-4, which
    moves a tile 230 px from the centre of a normal sample by 0.02 px.

    Returns
    -------
    SynthParams
    """
    kw: dict[str, Any] = dict(
        sample="calibration", slices=1, rows=5, cols=5, overlap=0.45, stage_error_px=0.1, tissue_fraction=0.9, n_beads=0
    )
    return SynthParams(**{**kw, **overrides})
