"""The sample-wide label space: one id per segmented object, fixed by its plane and its number in that plane.

A plane is segmented on its own (labels ``1..N`` within the plane); its objects
get the ids ``plane << 32 | local`` (uint64). An id is unique across the whole
sample, equals the value written in the 3-D label image, and depends only on
the plane and that plane's segmentation: segmenting another plane, or
re-creating the cube when new sections land, never renumbers a cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["LABEL_BITS", "LABEL_DTYPE", "global_labels", "local_labels", "label_planes"]

LABEL_BITS = 32  #: low bits holding the label within its plane
LABEL_DTYPE = np.dtype(np.uint64)  #: dtype of label images and id columns
_LOCAL = (1 << LABEL_BITS) - 1


def global_labels(local: Any, plane: int) -> NDArray[np.uint64]:
    """Sample-wide ids of a plane's labels ``local`` (0 stays 0, background).

    >>> global_labels(np.array([0, 1, 7]), 3).tolist()
    [0, 12884901889, 12884901895]
    """
    lab = np.asarray(local)
    if lab.size and (int(lab.min()) < 0 or int(lab.max()) > _LOCAL):
        raise OverflowError(f"plane {plane}: labels outside 0..{_LOCAL}")
    if plane < 0:
        raise ValueError(f"plane must be >= 0, got {plane}")
    out = lab.astype(LABEL_DTYPE)
    return np.where(out > 0, out | np.uint64(int(plane) << LABEL_BITS), np.uint64(0)).astype(LABEL_DTYPE)


def local_labels(ids: Any) -> NDArray[np.int64]:
    """The label within its plane of each id (0 stays 0).

    >>> local_labels(np.array([0, 12884901895], np.uint64)).tolist()
    [0, 7]
    """
    return (np.asarray(ids, LABEL_DTYPE) & np.uint64(_LOCAL)).astype(np.int64)


def label_planes(ids: Any) -> NDArray[np.int64]:
    """The plane of each id.

    >>> label_planes(np.array([12884901895], np.uint64)).tolist()
    [3]
    """
    return (np.asarray(ids, LABEL_DTYPE) >> np.uint64(LABEL_BITS)).astype(np.int64)
