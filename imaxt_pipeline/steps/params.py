"""The parameter model of every step, in one light module.

The configuration (:mod:`imaxt_pipeline.config`) and the steps both import
this module; it needs nothing but pydantic, so loading or validating a run
configuration never imports numpy, scipy or a step's dependencies. Each step
module re-exports its model as ``Params``.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BeadsParams",
    "CalibrateParams",
    "CatalogueParams",
    "CropsParams",
    "CubeParams",
    "MosaicParams",
    "RegisterParams",
    "STEP_PARAMS",
    "SegmentParams",
    "StepParams",
    "StepsConfig",
    "StitchParams",
]


class StepParams(BaseModel):
    """Base of each step's parameter model: strict keys, on/off switch."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True


class CalibrateParams(StepParams):
    calibration_file: str | None = Field(default=None, description="npz with dark/flat/trim/distortion (fsspec URL)")
    dark: float | list[float] | None = Field(default=None, description="dark offset(s); None = estimate")
    flat: Literal["estimate", "none"] = "estimate"
    trim: bool = Field(default=True, description="trim borders where stray light swamps the background")
    trim_threshold: float = Field(default=1.0, gt=0, description="stray light / background level that is trimmed")
    max_trim_fraction: float = Field(default=0.25, ge=0, le=1, description="trim cap as a fraction of the overlap")
    max_tiles: int = Field(default=64, ge=1, description="tiles per channel sampled for the estimate")
    seed: int = 0


class StitchParams(StepParams):
    z: int = Field(default=0, ge=0, description="optical section used for matching")
    max_shift_px: int = Field(default=15, ge=1, description="search radius around the stage prediction")
    block_px: int | None = Field(default=None, ge=8, description="seam length per correspondence (default tile/16)")
    min_ncc: float = Field(default=0.5, description="pairs below carry no information")
    estimate_distortion: bool = Field(default=True, description="fit distortion unless a file gave it")
    fit_magnification: bool = Field(default=False, description="also fit mag_x/mag_y (needs many tiles)")
    prior_sigma_px: float = Field(default=5.0, gt=0, description="stage position error (1 sigma)")
    reject_px: float = Field(default=1.0, gt=0, description="residual floor for outlier rejection")
    refine_flat: bool = Field(default=True, description="refine an estimated flat field from the solved overlaps")
    flat_pairs: int = Field(default=32, ge=1, description="most informative pairs used to refine the flat")
    flat_rematch_tol: float = Field(
        default=0.02, ge=0, description="re-match when the refined flat moves the one matched with more (rms log)"
    )
    flat_rematch_rounds: int = Field(default=2, ge=0, description="re-match rounds under a refined flat at most")
    rewrite_tol_px: float = Field(default=0.05, ge=0, description="rewrite earlier slices a re-solve moves more")
    rewrite_max_slices: int = Field(default=4, ge=0, description="earlier slices rewritten per run at most")


class MosaicParams(StepParams):
    levels: int | None = Field(
        default=None, ge=1, le=12, description="pyramid levels incl. full resolution; None: down to ~512 px"
    )
    chunk: int = Field(default=512, ge=16, description="output chunk edge in px")
    shard: int | None = Field(
        default=None,
        ge=16,
        description="zarr shard edge of level 0 in px (object stores): a multiple of chunk "
        "dividing 4 * chunk; None: one object per chunk",
    )
    dark: float = Field(default=0.0, description="dark offset subtracted when no calibration exists")
    feather: float = Field(default=0.0, ge=0, description="px of linear confidence ramp at tile borders")
    qc: bool = Field(default=True, description="write qc/stitch.png")


class BeadsParams(StepParams):
    detector: Literal["classical", "unet"] = Field(default="classical", description="candidate detector")
    model: str | None = Field(default=None, description="U-Net checkpoint path/URL (default: packaged)")
    channel: int | None = Field(default=None, ge=0, description="bead channel; None picks it automatically")
    z: int = Field(default=0, ge=0, description="optical section searched in each slice")
    block: int = Field(default=2048, ge=128, description="core block edge in px")
    bead_diameter_um: float = Field(default=90.0, gt=0, description="nominal bead (sphere) diameter")
    bead_size_tolerance: float = Field(
        default=0.15, ge=0, description="relative spread of bead diameters: cuts up to (1 + this) x radius"
    )
    min_cut_fraction: float = Field(
        default=0.3, gt=0, lt=1, description="smallest cut searched, fraction of the bead radius (95 % of cuts)"
    )
    nsigma: float = Field(default=5.0, gt=0, description="classical detector threshold (background sigmas)")
    rel_threshold: float = Field(
        default=0.5, ge=0, lt=1, description="classical threshold: this fraction of the way to the bead plateau"
    )
    min_snr: float = Field(default=3.0, description="reject fits with a lower amplitude/noise")
    max_chi2_ratio: float = Field(
        default=20.0, gt=1, description="reject fits with chi2 above this x median (bright beads: model mismatch)"
    )
    min_amplitude_ratio: float = Field(default=0.3, ge=0, description="reject fits fainter than this x median")


class RegisterParams(StepParams):
    match_radius_px: float = Field(default=20.0, gt=0, description="gate for matching consecutive slices")
    max_gap: int = Field(default=1, ge=0, description="slices a track may skip")
    min_track: int = Field(default=2, ge=2, description="detections a bead needs to count")
    radius_nsigma: float = Field(default=5.0, gt=0, description="reject radii beyond this many robust sigmas")
    min_tie_beads: int = Field(
        default=3, ge=1, description="warn about slices tied to the others by fewer whole good beads than this"
    )
    edge_sigma_px: float = Field(
        default=0.0,
        ge=0,
        description="least centring error of a bead half of whose rim the data's edge cuts, in proportion to "
        "the part off the data (0: the fit's own; the robust clip and the whole-bead tie count guard instead)",
    )
    clip: float = Field(default=4.0, gt=0, description="outlier rejection threshold (normalised residual)")
    max_iter: int = Field(default=10, ge=1)
    unconstrained: Literal["interpolate", "zero"] = Field(
        default="interpolate", description="offset of slices no bead track constrains: from neighbours, or 0"
    )
    qc: bool = True


class CubeParams(StepParams):
    order: int = Field(default=1, ge=0, le=3, description="interpolation order of the sub-pixel shift")
    levels: int | None = Field(
        default=None, ge=1, le=12, description="pyramid levels incl. full resolution; None: down to ~512 px"
    )
    chunk: int = Field(default=512, ge=64)
    shard: int | None = Field(
        default=None,
        ge=64,
        description="zarr shard edge of level 0 in px (object stores): a multiple of chunk "
        "dividing 4 * chunk; None: one object per chunk",
    )
    margin_px: int = Field(default=32, ge=1, description="canvas padding is a multiple of this")
    rewrite_tol_px: float = Field(default=0.05, ge=0, description="rewrite planes whose offset moved more")


class SegmentParams(StepParams):
    backend: Literal["watershed", "cellpose"] = Field(default="watershed", description="segmentation backend")
    nuclear_channel: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        default="auto", description="'auto': by channel name (DAPI, Hoechst, nuclear, ...), else 0"
    )
    cyto_channel: Annotated[int, Field(ge=0)] | Literal["auto"] | None = Field(
        default="auto",
        description="'auto': by channel name (cyto, membrane, ...), else the first other channel, none with one "
        "channel (cells grown from the nuclei); None: cells are the nuclei",
    )
    diameter_um: float = Field(default=10.0, gt=0, description="expected nucleus diameter")
    sigma_px: float = Field(default=1.0, ge=0, description="Gaussian smoothing before thresholds")
    max_expansion_um: float = Field(default=6.0, ge=0, description="cell growth beyond the nucleus")
    block: int = Field(default=1024, ge=64, description="core block edge, px")
    overlap: int | None = Field(default=None, ge=0, description="block margin px; default 2 x diameter + growth")
    min_iou: float = Field(default=0.5, gt=0, le=1, description="IoU that merges labels across blocks")
    gpu_resource: bool = Field(default=False, description="segmentation tasks need a worker resource GPU=1")
    model: str = Field(default="shipped", description="cellpose: 'shipped', a built-in name or a weights path")
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    threads: int = Field(default=1, ge=1, description="torch threads per cellpose task")
    qc_region: int = Field(default=256, ge=32, description="edge of the QC overlay region, px")


class CatalogueParams(StepParams):
    block: int = Field(default=1024, ge=16, description="measurement block edge, px (memory per task)")


class CropsParams(StepParams):
    size: int = Field(default=32, ge=4, description="crop edge, px")
    chunk: int = Field(default=256, ge=1, description="crops per Zarr chunk")
    ranking_channel: int = Field(default=0, ge=0, description="channel whose mean intensity ranks slices")


#: Step name -> parameter model, in the order the runner calls the steps.
STEP_PARAMS: dict[str, type[StepParams]] = {
    "calibrate": CalibrateParams,
    "stitch": StitchParams,
    "mosaic": MosaicParams,
    "beads": BeadsParams,
    "register": RegisterParams,
    "cube": CubeParams,
    "segment": SegmentParams,
    "catalogue": CatalogueParams,
    "crops": CropsParams,
}


with warnings.catch_warnings():
    # A step called "register" shadows ABCMeta.register on the class only; instances are unaffected.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class StepsConfig(BaseModel):
        """Parameters of every step (``steps:`` in a run configuration); unknown steps are errors."""

        model_config = ConfigDict(extra="forbid")

        calibrate: CalibrateParams = Field(default_factory=CalibrateParams)
        stitch: StitchParams = Field(default_factory=StitchParams)
        mosaic: MosaicParams = Field(default_factory=MosaicParams)
        beads: BeadsParams = Field(default_factory=BeadsParams)
        register: RegisterParams = Field(default_factory=RegisterParams)
        cube: CubeParams = Field(default_factory=CubeParams)
        segment: SegmentParams = Field(default_factory=SegmentParams)
        catalogue: CatalogueParams = Field(default_factory=CatalogueParams)
        crops: CropsParams = Field(default_factory=CropsParams)
