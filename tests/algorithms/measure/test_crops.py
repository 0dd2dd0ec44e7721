"""Masked nucleus crops and the representative-slice ranking."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops

from imaxt_pipeline.algorithms.measure import masked_crops, representative_ranking
from imaxt_pipeline.testing._segdata import two_channel_sample


def test_crops_are_centred_and_zero_outside_the_mask():
    image, nuclei, _ = two_channel_sample((128, 128), seed=31)
    props = regionprops(nuclei)
    centroids = np.array([p.centroid for p in props])
    labels = [p.label for p in props]
    crops = masked_crops(image, nuclei, centroids, labels, size=(24, 24))
    assert crops.shape == (len(labels), 2, 24, 24) and crops.dtype == image.dtype
    for crop, (cy, cx), lab in zip(crops, centroids, labels, strict=True):
        y0, x0 = int(round(cy)) - 12, int(round(cx)) - 12
        yy, xx = np.mgrid[y0 : y0 + 24, x0 : x0 + 24]
        inside = (yy >= 0) & (yy < 128) & (xx >= 0) & (xx < 128)
        mask = np.zeros((24, 24), bool)
        mask[inside] = nuclei[yy[inside], xx[inside]] == lab
        np.testing.assert_array_equal(crop[:, ~mask], 0)
        np.testing.assert_array_equal(crop[:, mask], image[:, yy[mask], xx[mask]])
        # the whole nucleus fits: its pixel count equals the mask area
        assert mask.sum() == (nuclei == lab).sum()


def test_crop_at_image_edge_is_zero_padded():
    image = np.ones((1, 10, 10), np.float32)
    labels = np.zeros((10, 10), int)
    labels[:3, :3] = 4
    crop = masked_crops(image, labels, np.array([[1.0, 1.0]]), [4], size=(8, 8))[0, 0]
    assert crop.sum() == 9 and crop[3:6, 3:6].sum() == 9 and crop[:3].sum() == 0


def test_ranking_matches_hand_computed_z_scores():
    n = np.array([100.0, 200.0, 150.0, 160.0])
    m = np.array([1.0, 3.0, 2.0, 2.5])
    table = representative_ranking(n, m, index=[10, 11, 12, 13])
    z = np.column_stack([(n - n.mean()) / n.std(), (m - m.mean()) / m.std()])
    d = np.linalg.norm(z, axis=1)
    assert table["slice"].tolist() == [10 + i for i in np.argsort(d)]
    np.testing.assert_allclose(table["distance"], np.sort(d))
    assert table["rank"].tolist() == [1, 2, 3, 4]


def test_ranking_with_constant_feature_and_errors():
    t = representative_ranking([5, 5, 5], [1.0, 2.0, 3.0])
    assert (t["z_n_cells"] == 0).all() and t["slice"].iloc[0] == 1
    with pytest.raises(ValueError, match="no slices"):
        representative_ranking([], [])
    with pytest.raises(ValueError, match="labels for"):
        masked_crops(np.zeros((1, 4, 4)), np.zeros((4, 4), int), np.zeros((2, 2)), [1])
