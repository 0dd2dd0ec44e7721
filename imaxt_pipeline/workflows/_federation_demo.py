"""The demo's federation part: one Axioscan slide and one IMC acquisition of a processed synthetic sample.

The slide is rendered from the simulator's truth for one STPT section (bright field, its own
pose, pixel size and warp: :func:`~imaxt_pipeline.synth.render_slide`) and written as a CZI;
the IMC acquisition of a window of it (:func:`~imaxt_pipeline.synth.render_imc`) as an MCD.
Both are registered onto the processed store's cube with ``register-modality``, the IMC through
the slide (``--via``); a failure is reported as a figure (one line), not raised, so that the demo
still shows the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ImaxtError
from ._figures import FederationFigures
from .federate import register_modality

if TYPE_CHECKING:
    from ..synth import ImcTruth, SlideTruth, Truth

__all__ = ["DemoSlides", "demo_federation", "register_demo_slides", "write_demo_slides"]


def _figures(modality: str, true_k: int, fed: dict[str, Any], stpt_um: float, seconds: float) -> FederationFigures:
    res = fed["residual_px"]
    return FederationFigures(
        modality=modality,
        true_section=true_k,
        section=int(fed["section"]),
        matched_beads=int(fed["matched_beads"]),
        median_px=float(res["median"]),
        max_px=float(res["max"]),
        stpt_um=stpt_um,
        seconds=seconds,
    )


@dataclass(frozen=True)
class DemoSlides:
    """The raw files of :func:`write_demo_slides` and their truth."""

    section: int
    slide_file: Path
    slide_truth: SlideTruth
    imc_file: Path
    imc_truth: ImcTruth


def write_demo_slides(truth: Truth, incoming: str | Path, *, section: int | None = None, seed: int = 0) -> DemoSlides:
    """Render one Axioscan slide of ``section`` (default: the middle one) as ``slide.czi`` and one IMC
    acquisition of a window of it as ``roi.mcd``, in ``incoming``."""
    from ..synth import render_imc, render_slide, write_slide_czi

    k = truth.params.slices // 2 if section is None else section
    incoming = Path(incoming)
    incoming.mkdir(parents=True, exist_ok=True)
    img, st = render_slide(truth, k, seed=seed)
    write_slide_czi(incoming / "slide.czi", img, st.pixel_size_um)
    # an IMC field about 16 bead radii across (400 um for 25 um beads, 1 mm at most): the demo's beads are large
    size_um = float(min(1000.0, max(400.0, 16.0 * truth.params.bead_radius_um[1])))
    _, it = render_imc(img, st, seed=seed, size_um=size_um, out_mcd=incoming / "roi.mcd")
    return DemoSlides(k, incoming / "slide.czi", st, incoming / "roi.mcd", it)


def register_demo_slides(
    slides: DemoSlides, reference: str, out_dir: str | Path, *, name: str, stpt_um: float
) -> list[FederationFigures]:
    """Register the slide, then the IMC acquisition through it, into ``out_dir`` (``<name>-slide.zarr``,
    ``<name>-imc.zarr``); their figures, the Axioscan first (a failure is a figure with its one line)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = slides.section
    slide_out, imc_out = str(out_dir / f"{name}-slide.zarr"), str(out_dir / f"{name}-imc.zarr")
    t0 = time.perf_counter()
    try:
        fed = register_modality(str(slides.slide_file), reference, slide_out)
    except ImaxtError as exc:
        return [FederationFigures("axioscan slide", k, None, error=str(exc))]
    out = [_figures("axioscan slide", k, fed, stpt_um, time.perf_counter() - t0)]
    t0 = time.perf_counter()
    try:
        fed = register_modality(str(slides.imc_file), reference, imc_out, via=slide_out)
        out.append(_figures("IMC via the slide", k, fed, stpt_um, time.perf_counter() - t0))
    except ImaxtError as exc:
        out.append(FederationFigures("IMC via the slide", k, None, error=str(exc)))
    return out


def demo_federation(
    truth: Truth,
    reference: str,
    incoming: str | Path,
    out_dir: str | Path,
    *,
    section: int | None = None,
    seed: int = 0,
) -> list[FederationFigures]:
    """:func:`write_demo_slides` into ``incoming``, then :func:`register_demo_slides` into ``out_dir``."""
    slides = write_demo_slides(truth, incoming, section=section, seed=seed)
    return register_demo_slides(
        slides, reference, out_dir, name=truth.params.sample, stpt_um=truth.params.pixel_size_um
    )
