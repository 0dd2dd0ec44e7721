"""Watershed segmentation of nuclei and cells against synthetic truth."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.segmentation import (
    CellGrowth,
    Segmenter,
    WatershedSegmenter,
    object_f1,
    plane_thresholds,
)
from imaxt_pipeline.algorithms.segmentation._watershed import segment_cells_watershed, segment_nuclei_watershed
from imaxt_pipeline.testing._segdata import two_channel_sample


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_watershed_nuclei_f1_above_0_85(seed):
    image, nuclei, _ = two_channel_sample((256, 256), seed=seed, density=0.35)
    labels = segment_nuclei_watershed(image[0], min_distance=4)
    score = object_f1(nuclei, labels, min_iou=0.5)
    assert score.f1 >= 0.85, score
    assert score.mean_iou > 0.75


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_segmenter_handles_input_dtypes(dtype):
    image, nuclei, cells = two_channel_sample((160, 160), seed=4)
    scaled = np.clip(image * 1000, 0, None).astype(dtype)
    seg = WatershedSegmenter().segment(scaled)
    assert seg.nuclei.dtype == np.int32 and seg.cells.dtype == np.int32
    assert object_f1(nuclei, seg.nuclei).f1 >= 0.85
    assert object_f1(cells, seg.cells).f1 >= 0.7


def test_cells_grow_from_their_nuclei_and_stay_near():
    image, nuclei, cells = two_channel_sample((200, 200), seed=6)
    seg = WatershedSegmenter(growth=CellGrowth(max_distance_um=6)).segment(image)
    nz = seg.nuclei > 0
    np.testing.assert_array_equal(seg.cells[nz], seg.nuclei[nz])  # cell i contains nucleus i
    assert set(np.unique(seg.cells)) == set(np.unique(seg.nuclei))
    from scipy import ndimage as ndi

    assert ndi.distance_transform_edt(seg.nuclei == 0)[seg.cells > 0].max() <= 6
    areas_true = np.bincount(cells.ravel())[1:].mean()
    areas_pred = np.bincount(seg.cells.ravel())[1:]
    assert abs(areas_pred[areas_pred > 0].mean() - areas_true) / areas_true < 0.2


def test_beads_and_specks_are_removed_by_area_limits():
    image, nuclei, _ = two_channel_sample((200, 200), seed=8, density=0.15)
    yy, xx = np.mgrid[:200, :200]
    bead = (yy - 100) ** 2 + (xx - 100) ** 2 <= 30**2
    image[0][bead] = 2.0
    image[0][5:7, 5:7] = 2.0
    seg = WatershedSegmenter(diameter=10).segment(image)
    assert not seg.nuclei[bead].any()
    assert not seg.nuclei[5:7, 5:7].any()


def test_fixed_thresholds_match_whole_plane_otsu():
    image, _, _ = two_channel_sample((128, 128), seed=9)
    t_nuc, t_cell = plane_thresholds(image)
    assert 0.1 < t_nuc < 1.0 and 0.05 < t_cell < 0.6
    a = segment_nuclei_watershed(image[0])
    b = segment_nuclei_watershed(image[0], threshold=t_nuc)
    np.testing.assert_array_equal(a, b)
    assert plane_thresholds(image, cyto_channel=None)[1] is None


def test_empty_image_gives_no_labels():
    image = np.full((2, 64, 64), 0.1, np.float32)
    seg = WatershedSegmenter(nuclear_threshold=0.5, growth=CellGrowth(threshold=0.5)).segment(image)
    assert seg.nuclei.max() == 0 and seg.cells.max() == 0
    assert segment_nuclei_watershed(image[0]).max() == 0


def test_watershed_segmenter_satisfies_protocol():
    assert isinstance(WatershedSegmenter(), Segmenter)
    assert WatershedSegmenter(diameter=12).expected_diameter_px == 12.0


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="must be 2-D"):
        segment_nuclei_watershed(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="sigma"):
        segment_nuclei_watershed(np.zeros((8, 8)), sigma=-1)
    with pytest.raises(ValueError, match="shapes differ"):
        segment_cells_watershed(np.zeros((8, 8)), np.zeros((8, 9)), np.zeros((8, 8), int))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        WatershedSegmenter().segment(np.zeros((8, 8)))


def test_watershed_on_simulated_sample_with_beads(tmp_path):
    from imaxt_pipeline.testing._segdata import synth_plane

    image, nuclei, truth = synth_plane(tmp_path / "s", seed=1)
    t_nuc, t_cell = plane_thresholds(image, max_area=int(np.pi * 10**2))
    seg = WatershedSegmenter(nuclear_threshold=t_nuc, growth=CellGrowth(threshold=t_cell)).segment(image)
    score = object_f1(nuclei, seg.nuclei)
    assert score.f1 >= 0.85, score
    beads = truth.bead_detections
    beads = beads[beads["slice"] == 0]
    assert len(beads) > 0
    for row in beads.itertuples():  # beads are much brighter than nuclei but never become nuclei
        y, x = int(round(row.y_px)), int(round(row.x_px))
        if 0 <= y < image.shape[1] and 0 <= x < image.shape[2]:
            assert seg.nuclei[y, x] == 0
    # plain Otsu would have thresholded between nuclei and beads
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    assert t_nuc < threshold_otsu(ndi.gaussian_filter(image[0], 1.0))


def test_cell_growth_is_one_physical_distance():
    growth = CellGrowth(max_distance_um=4.8, pixel_size_um=0.8)
    assert growth.max_distance_px == pytest.approx(6.0)
    assert CellGrowth().max_distance_px == 6.0  # default: 6 px (pixel size 1)
    with pytest.raises(ValueError, match="pixel_size_um"):
        CellGrowth(pixel_size_um=0.0)
    image, _, _ = two_channel_sample((160, 160), seed=6)
    in_px = WatershedSegmenter(growth=CellGrowth(max_distance_um=3.0)).segment(image)
    in_um = WatershedSegmenter(growth=CellGrowth(max_distance_um=1.5, pixel_size_um=0.5)).segment(image)
    wider = WatershedSegmenter(growth=CellGrowth(max_distance_um=8.0)).segment(image)
    np.testing.assert_array_equal(in_px.cells, in_um.cells)
    assert (wider.cells > 0).sum() > (in_px.cells > 0).sum()
