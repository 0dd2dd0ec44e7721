"""TODO docstring."""

from ._cellpose import CellposeSegmenter, SHIPPED_MODEL, resolve_model
from ._label_merge import LabelMatch, MatchScore, iou_pairs, match_labels, merge_tables, object_f1
from ._watershed import Segmentation, Segmenter, WatershedSegmenter, grow_cells, plane_thresholds, robust_otsu, segment_cells_watershed, segment_nuclei_watershed

__all__ = ["CellposeSegmenter", "LabelMatch", "MatchScore", "SHIPPED_MODEL", "Segmentation", "Segmenter", "WatershedSegmenter", "grow_cells", "iou_pairs", "match_labels", "merge_tables", "object_f1", "plane_thresholds", "resolve_model", "robust_otsu", "segment_cells_watershed", "segment_nuclei_watershed"]
