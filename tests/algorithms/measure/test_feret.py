"""The batched maximum Feret diameter against scikit-image's ``regionprops`` on awkward shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from imaxt_pipeline.algorithms.measure._feret import feret_diameters
from imaxt_pipeline.algorithms.measure._parts import object_parts, pad_halo


def _awkward_labels(seed: int) -> np.ndarray:
    """Single pixels, 1-px lines (rows, columns, diagonals), blobs of every size, rings and scattered pieces."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(90, 140)), int(rng.integers(90, 140))
    lab = np.zeros((h, w), np.int64)
    blobs = ndimage.gaussian_filter(rng.normal(size=(h, w)), float(rng.uniform(1.5, 5.0)))
    lab[:], _ = ndimage.label(blobs > np.quantile(blobs, float(rng.uniform(0.55, 0.8))))
    nxt = int(lab.max()) + 1
    for _ in range(12):  # shapes drawn over the blobs
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        kind, n = int(rng.integers(0, 5)), int(rng.integers(1, 40))
        if kind == 0:
            lab[y, x] = nxt
        elif kind == 1:
            lab[y, x : x + n] = nxt
        elif kind == 2:
            lab[y : y + n, x] = nxt
        elif kind == 3:
            k = np.arange(min(n, h - y, w - x))
            lab[y + k, x + k[:: int(rng.choice([-1, 1]))]] = nxt
        else:
            yy, xx = np.ogrid[:h, :w]
            r = np.hypot(yy - y, xx - x)
            lab[(r >= n / 4) & (r < n / 4 + 2)] = nxt
        nxt += 1
    lab[rng.random((h, w)) < 0.003] = nxt  # one object in pieces all over the plane
    return lab


@pytest.mark.parametrize("seed", range(4))
def test_feret_equals_regionprops_on_awkward_shapes(seed):
    lab = _awkward_labels(seed)
    parts = object_parts(pad_halo(lab), np.zeros((1, *lab.shape)), channels=1)
    props = {p.label: p.feret_diameter_max for p in regionprops(lab)}
    got = dict(zip(parts.sums["label"].tolist(), parts.sums["feret"].tolist(), strict=True))
    assert sorted(got) == sorted(props)
    labels = np.array(sorted(props))
    np.testing.assert_allclose([got[k] for k in labels], [props[k] for k in labels], rtol=1e-12, atol=1e-12)


def test_hull_vertices_are_input_points_and_keep_the_diameter():
    """A block's hull vertices stand for its pixels in a merge: re-measured, they give the same diameters."""
    lab = _awkward_labels(7)
    parts = object_parts(pad_halo(lab), np.zeros((1, *lab.shape)), channels=1)
    labels = parts.sums["label"].to_numpy(np.int64)
    pixels = np.argwhere(lab > 0)
    corners = pd.DataFrame(
        {
            "label": np.repeat(lab[lab > 0], 4),
            "y2": (2 * pixels[:, :1] + np.array([[-1, 1, 0, 0]])).ravel(),
            "x2": (2 * pixels[:, 1:] + np.array([[0, 0, -1, 1]])).ravel(),
        }
    )
    inputs = set(zip(corners["label"], corners["y2"], corners["x2"], strict=True))
    hull = parts.hull
    assert set(zip(hull["label"], hull["y2"], hull["x2"], strict=True)) <= inputs
    assert len(hull) < len(corners) / 4  # a reduction, not the pixels again
    again, _ = feret_diameters(hull.sample(frac=1.0, random_state=1), labels[::-1])  # any order in and out
    np.testing.assert_array_equal(again[::-1], parts.sums["feret"].to_numpy())
