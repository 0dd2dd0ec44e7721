"""Segmentation: nuclei and whole cells of a plane, and label merging across blocks.

Backends share the :class:`Segmenter` protocol and return a :class:`Segmentation`:
:class:`WatershedSegmenter` (classical) and :class:`CellposeSegmenter` (a loaded cellpose
model), both growing cells by one :class:`CellGrowth`; :func:`plane_thresholds` fixes their
thresholds plane-wide. :func:`match_labels` and :func:`merge_tables` give blocks' labels one
global numbering (:class:`LabelMatch`); :func:`object_f1` scores labels against truth (:class:`MatchScore`).
"""

from ._cellpose import CellposeSegmenter
from ._label_merge import LabelMatch, MatchScore, match_labels, merge_tables, object_f1
from ._watershed import CellGrowth, Segmentation, Segmenter, WatershedSegmenter, plane_thresholds

__all__ = [
    "CellGrowth",
    "CellposeSegmenter",
    "LabelMatch",
    "MatchScore",
    "Segmentation",
    "Segmenter",
    "WatershedSegmenter",
    "match_labels",
    "merge_tables",
    "object_f1",
    "plane_thresholds",
]
