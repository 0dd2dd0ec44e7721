"""QC figures of the pipeline steps.

Every function takes numpy arrays or tables (never a store) and returns a
:class:`matplotlib.figure.Figure` built without pyplot, so that nothing here
changes the matplotlib backend of a notebook or holds figures in pyplot's
registry; :func:`to_png` renders one to the bytes the steps store under
``qc/``.
"""

from __future__ import annotations

from ._federation import federation_figure
from ._registration import register_figure
from ._render import to_png
from ._segmentation import catalogue_histograms, segment_overlay
from ._stitching import StitchPanel, stitch_figure

__all__ = [
    "StitchPanel",
    "catalogue_histograms",
    "federation_figure",
    "register_figure",
    "segment_overlay",
    "stitch_figure",
    "to_png",
]
