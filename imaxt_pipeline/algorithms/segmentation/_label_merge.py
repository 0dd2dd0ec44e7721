"""Matching labels by overlap: block-margin merging and object-wise scores.

Blocks of a large plane are segmented independently with overlapping
margins. Two blocks then hold their own labels of every object in the region
they share; objects whose labels overlap there with an IoU above a threshold
are the same object. :func:`merge_tables` joins those matches (the connected
components of the match graph, scipy's ``csgraph``) into one global, consecutive numbering.

The same IoU machinery scores a segmentation against truth
(:func:`object_f1`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["LabelMatch", "MatchScore", "iou_pairs", "match_labels", "merge_tables", "object_f1"]


@dataclass(frozen=True)
class LabelMatch:
    """Label pairs of two label images that overlap with IoU above a threshold.

    Attributes
    ----------
    a, b : ndarray of int64
        Matched labels in the first and second image (same length).
    iou : ndarray of float64
        IoU of each pair.
    """

    a: NDArray[np.int64]
    b: NDArray[np.int64]
    iou: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.a)


@dataclass(frozen=True)
class MatchScore:
    """Object-wise detection score at an IoU threshold."""

    true_positives: int
    false_positives: int
    false_negatives: int
    mean_iou: float

    @property
    def precision(self) -> float:
        return self.true_positives / max(1, self.true_positives + self.false_positives)

    @property
    def recall(self) -> float:
        return self.true_positives / max(1, self.true_positives + self.false_negatives)

    @property
    def f1(self) -> float:
        tp = self.true_positives
        return 2 * tp / max(1, 2 * tp + self.false_positives + self.false_negatives)


def iou_pairs(
    labels_a: ArrayLike, labels_b: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """IoU of every pair of overlapping non-zero labels.

    Parameters
    ----------
    labels_a, labels_b : ndarray of int
        Label images of the same shape (0 = background).

    Returns
    -------
    a, b, iou : ndarray
        One entry per overlapping pair (a > 0, b > 0).
    """
    lab_a, lab_b = np.asarray(labels_a), np.asarray(labels_b)
    if lab_a.shape != lab_b.shape:
        raise ValueError(f"label images differ in shape: {lab_a.shape} vs {lab_b.shape}")
    a, b = lab_a.ravel().astype(np.int64), lab_b.ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    ua, area_a = np.unique(a[a > 0], return_counts=True)
    ub, area_b = np.unique(b[b > 0], return_counts=True)
    sa = area_a[np.searchsorted(ua, pairs[0])]
    sb = area_b[np.searchsorted(ub, pairs[1])]
    iou: NDArray[np.float64] = inter / (sa + sb - inter)
    return pairs[0], pairs[1], iou


def match_labels(labels_a: ArrayLike, labels_b: ArrayLike, *, min_iou: float = 0.5) -> LabelMatch:
    """One-to-one matches of labels with IoU above ``min_iou``.

    With ``min_iou >= 0.5`` a label can overlap at most one other label that
    much, so the matching is unique without an assignment solver.
    """
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    a, b, iou = iou_pairs(labels_a, labels_b)
    keep = iou > min_iou
    a, b, iou = a[keep], b[keep], iou[keep]
    if min_iou < 0.5 and len(a):
        order = np.argsort(-iou)
        _, first_a = np.unique(a[order], return_index=True)
        sel = order[first_a]
        _, first_b = np.unique(b[sel], return_index=True)
        sel = sel[first_b]
        a, b, iou = a[sel], b[sel], iou[sel]
    return LabelMatch(a=a, b=b, iou=iou)


def object_f1(truth: ArrayLike, predicted: ArrayLike, *, min_iou: float = 0.5) -> MatchScore:
    """Object-wise detection score of ``predicted`` against ``truth`` labels.

    A true positive is a (truth, predicted) pair with IoU > ``min_iou``.
    """
    true_lab, pred_lab = np.asarray(truth), np.asarray(predicted)
    m = match_labels(true_lab, pred_lab, min_iou=min_iou)
    n_true = len(np.unique(true_lab[true_lab > 0]))
    n_pred = len(np.unique(pred_lab[pred_lab > 0]))
    tp = len(m)
    return MatchScore(
        true_positives=tp,
        false_positives=n_pred - tp,
        false_negatives=n_true - tp,
        mean_iou=float(m.iou.mean()) if tp else 0.0,
    )


def merge_tables(
    counts: Sequence[int], matches: Iterable[tuple[int, int, LabelMatch]], *, present: Sequence[ArrayLike] | None = None
) -> list[NDArray[np.int64]]:
    """Global, consecutive labels for per-block labels joined by margin matches.

    Parameters
    ----------
    counts : sequence of int
        ``counts[k]`` is the largest local label of block ``k`` (labels 1..n).
    matches : iterable of (int, int, LabelMatch)
        ``(k, l, match)``: labels ``match.a`` of block ``k`` are the same
        objects as labels ``match.b`` of block ``l``.

    Returns
    -------
    tables : list of ndarray of int64
        ``tables[k][local]`` is the global label of local label ``local`` of
        block ``k`` (``tables[k][0] == 0``). Global labels are 1..N with no
        gaps, numbered in block order.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    sizes = [int(c) for c in counts]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_nodes = int(offsets[-1]) + 1  # node 0 is the background, alone in its component
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for k, l_, match in matches:
        a, b = np.asarray(match.a, np.int64), np.asarray(match.b, np.int64)
        bad = (a <= 0) | (a > sizes[k]) | (b <= 0) | (b > sizes[l_])
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"match ({k}:{a[i]}, {l_}:{b[i]}) outside the block label ranges {sizes}")
        rows.append(offsets[k] + a)
        cols.append(offsets[l_] + b)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n_nodes, n_nodes))
    # components are numbered in order of their smallest node: the numbering a union-find by minimum gives
    _, comp = connected_components(graph, directed=False)
    roots = np.asarray(comp, np.int64)
    if present is None:
        used = np.unique(roots[1:])
    else:
        flat = [offsets[k] + np.asarray(p, np.int64)[np.asarray(p) > 0] for k, p in enumerate(present)]
        used = np.unique(roots[np.concatenate(flat)]) if flat else np.zeros(0, np.int64)
    compact = np.zeros(n_nodes, np.int64)
    compact[used] = np.arange(1, len(used) + 1)
    glob = compact[roots]
    tables = []
    for k, n in enumerate(sizes):
        t = np.zeros(n + 1, np.int64)
        t[1:] = glob[offsets[k] + 1 : offsets[k] + n + 1]
        tables.append(t)
    return tables
