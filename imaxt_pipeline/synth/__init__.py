"""Synthetic STPT samples with ground truth.

:func:`synthesize` simulates a serial-section acquisition of a 3-D specimen
(agarose block, an irregular tissue blob with nuclei, fluorescent beads) by a
tiling microscope with stage error, slice drift, distortion, vignetting, stray
light, dark offset and shot/read noise. It writes the raw layout of
``spec/raw-layout.md`` and the truth under ``<sample>/truth/``.

Examples
--------
Writing a sample (seconds of work, so not run as a doctest)::

    from imaxt_pipeline.synth import SynthParams, synthesize, load_truth
    truth = synthesize("/tmp/s", SynthParams(slices=3, rows=2, cols=2, seed=0))
    load_truth("/tmp/s").slice_offsets_px.shape   # (3, 2)
"""

from __future__ import annotations

from ._cells import render_cells, render_nuclei_plane
from ._czi import synthesize_czi, write_axioscan, write_czi
from ._imc import ImcAcquisition, write_imc, write_imc_txt, write_mcd
from ._multimodal import ImcTruth, SlideTruth, render_imc, render_slide, write_slide_czi
from ._params import SynthParams, calibration_params, demo_params
from ._random_instrument import (
    InstrumentDraw,
    RandomSample,
    calibration_draw,
    cut_tiles,
    draw_instrument,
    render_random_sample,
)
from ._scene import AGAROSE, Scene
from ._tissuecyte import synthesize_tissuecyte, write_tissuecyte
from ._writer import Truth, load_truth, synthesize

__all__ = [
    "AGAROSE",
    "ImcAcquisition",
    "ImcTruth",
    "InstrumentDraw",
    "RandomSample",
    "Scene",
    "SlideTruth",
    "SynthParams",
    "Truth",
    "calibration_draw",
    "calibration_params",
    "cut_tiles",
    "demo_params",
    "draw_instrument",
    "load_truth",
    "render_cells",
    "render_imc",
    "render_nuclei_plane",
    "render_random_sample",
    "render_slide",
    "synthesize",
    "synthesize_czi",
    "synthesize_tissuecyte",
    "write_axioscan",
    "write_czi",
    "write_imc",
    "write_imc_txt",
    "write_mcd",
    "write_slide_czi",
    "write_tissuecyte",
]
