"""The one pyramid reducer: constant images stay exactly constant at every level and edge."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.fusion import downsample, downsample_labels, downsample_mean


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (5, 1), (1, 1), (2, 3, 13, 6)])
def test_constant_stays_constant_at_every_level_and_edge(shape):
    image = np.full(shape, 37.25, np.float32)
    labels = np.full(shape, 4_000_000_007, np.uint64)
    for level in range(1, 6):
        image, labels = downsample(image, label=False), downsample(labels, label=True)
        expected = (*shape[:-2], *(-(-n // 2**level) for n in shape[-2:]))
        assert image.shape == labels.shape == expected
        assert image.dtype == np.float32 and labels.dtype == np.uint64
        assert np.all(image == np.float32(37.25)), level  # the odd last row/column too
        assert np.all(labels == 4_000_000_007), level


def test_mean_of_blocks_and_odd_edges():
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    d = downsample_mean(x)
    assert d.shape == (2, 3)
    assert d[0, 0] == pytest.approx(x[:2, :2].mean())
    assert d[1, 0] == pytest.approx(x[2, :2].mean())  # odd last row: mean of what exists, not halved
    assert d[0, 2] == pytest.approx(x[:2, 4].mean())
    assert d[1, 2] == x[2, 4]  # the corner is itself, not a quarter of it


def test_labels_are_sampled_never_averaged():
    lab = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.uint32)
    np.testing.assert_array_equal(downsample_labels(lab), [[1, 3], [7, 9]])
    assert set(np.unique(downsample_labels(lab))) <= set(np.unique(lab))
