"""Registration: fiducial beads found and fitted in each slice, tracked through the stack, slice offsets solved.

Beads: :func:`find_beads_numpy` (classical detector or a loaded :class:`BeadUNet`, Poisson profile fits,
columns :data:`BEAD_COLUMNS`, :func:`good_beads`); the classical :func:`detect_beads` finds them by size and shape in µm
(:class:`BeadSpec`: bead diameter, pixel size) on a :func:`block_mean` image; :func:`fit_bead`,
:func:`disc_model`, bead-channel choice
(:func:`bead_channel_scores`, :func:`pick_bead_channel`, :func:`bead_threshold` and its parts
:func:`threshold_levels`, :class:`ThresholdLevels`), :func:`radius_outliers`.
Offsets: :func:`build_tracks`, :func:`solve_slice_offsets` (:class:`SliceOffsets`), :func:`canvas_padding`,
:func:`apply_offset` (order 1: :func:`shift_linear`, the bilinear shift by a constant offset, split by
:func:`split_shift`; :data:`SNAP`). :class:`BeadUNet` (its input: :func:`normalise`) imports torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._bead_detect import BeadSpec, block_mean, detect_beads
from ._bead_fit import BeadFit, fit_bead, radius_outliers
from ._bead_model import disc_model
from ._bead_table import BEAD_COLUMNS, find_beads_numpy, good_beads
from ._bead_threshold import ThresholdLevels, bead_threshold, threshold_levels
from ._beads import bead_channel_scores, normalise, pick_bead_channel
from ._shift import SNAP, shift_linear, split_shift
from ._slice_offsets import SliceOffsets, apply_offset, canvas_padding, solve_slice_offsets
from ._tracks import build_tracks

if TYPE_CHECKING:
    from ._bead_unet import BeadUNet

__all__ = [
    "BEAD_COLUMNS",
    "SNAP",
    "BeadFit",
    "BeadSpec",
    "BeadUNet",
    "SliceOffsets",
    "ThresholdLevels",
    "apply_offset",
    "bead_channel_scores",
    "bead_threshold",
    "block_mean",
    "build_tracks",
    "canvas_padding",
    "detect_beads",
    "disc_model",
    "find_beads_numpy",
    "fit_bead",
    "good_beads",
    "normalise",
    "pick_bead_channel",
    "radius_outliers",
    "shift_linear",
    "solve_slice_offsets",
    "split_shift",
    "threshold_levels",
]

_TORCH_NAMES = ("BeadUNet",)


def __getattr__(name: str) -> object:
    # importing torch takes seconds: only the U-Net users (io.weights, training) pay for it
    if name in _TORCH_NAMES:
        from . import _bead_unet

        return getattr(_bead_unet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
