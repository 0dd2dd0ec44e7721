"""Per-cell catalogue values against scikit-image regionprops on the full image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops

from imaxt_pipeline.algorithms.measure import cell_catalogue
from imaxt_pipeline.algorithms.measure._features import match_nuclei, region_features
from imaxt_pipeline.testing import blockwise_catalogue
from imaxt_pipeline.testing._segdata import two_channel_sample


@pytest.fixture(scope="module")
def sample():
    image, nuclei, cells = two_channel_sample((160, 192), seed=21)
    return image, nuclei, cells


def test_region_features_equal_regionprops(sample):
    image, _, cells = sample
    table = region_features(cells, image, channel_names=["nuc", "cyto"])
    props = {p.label: p for p in regionprops(cells, intensity_image=np.moveaxis(image, 0, -1))}
    assert table["label"].tolist() == sorted(props)
    for row in table.itertuples():
        p = props[row.label]
        assert (row.centroid_y_px, row.centroid_x_px) == pytest.approx(p.centroid)
        assert row.area_px == p.area
        assert row.perimeter_px == pytest.approx(p.perimeter)
        assert row.eccentricity == pytest.approx(p.eccentricity)
        assert row.feret_diameter_max_px == pytest.approx(p.feret_diameter_max)
        mask = cells == row.label
        for c, name in enumerate(("nuc", "cyto")):
            assert getattr(row, f"mean_{name}") == pytest.approx(image[c][mask].mean(), rel=1e-5)
            assert getattr(row, f"integrated_{name}") == pytest.approx(image[c][mask].sum(), rel=1e-4)


def test_match_nuclei_picks_largest_overlap():
    cells = np.zeros((10, 10), int)
    nuclei = np.zeros((10, 10), int)
    cells[:, :6] = 1
    cells[:, 6:] = 2
    nuclei[0:2, 0:2] = 5  # 4 px in cell 1
    nuclei[4:8, 2:5] = 7  # 12 px in cell 1
    nuclei[5:7, 5:7] = 9  # 2 px in cell 1, 2 px in cell 2
    cells[9, 9] = 3  # a cell without nucleus
    m = match_nuclei(cells, nuclei)
    assert m.to_dict() == {1: 7, 2: 9, 3: 0}


def test_cell_catalogue_units_matching_and_nucleus_columns(sample):
    image, nuclei, cells = sample
    cells = cells.copy()
    free = np.argwhere(np.lib.stride_tricks.sliding_window_view(cells, (4, 4)).max(axis=(2, 3)) == 0)[0]
    cells[free[0] : free[0] + 4, free[1] : free[1] + 4] = cells.max() + 1  # a cell without nucleus, on background
    cat, nuc = cell_catalogue(
        cells,
        nuclei,
        image,
        channel_names=["nuc", "cyto"],
        pixel_size_um=0.5,
        z_um=30.0,
        slice_index=2,
        plane=4,
        offset_yx=(100, 200),
    )
    assert len(cat) == len(np.unique(cells)) - 1 and len(nuc) == len(np.unique(nuclei)) - 1
    assert (cat["slice"] == 2).all() and (cat["plane"] == 4).all() and (cat["centroid_z_um"] == 30.0).all()
    np.testing.assert_allclose(cat["centroid_x_um"], cat["centroid_x_px"] * 0.5)
    np.testing.assert_allclose(cat["area_um2"], cat["area_px"] * 0.25)
    ref = {p.label: p.centroid for p in regionprops(cells)}
    np.testing.assert_allclose(cat["centroid_y_px"], [ref[k][0] + 100 for k in cat["label"]])
    # truth cells grow from truth nuclei with the same label
    with_nucleus = cat[cat["nucleus_label"] > 0]
    assert (with_nucleus["nucleus_label"] == with_nucleus["label"]).all()
    orphan = cat[cat["label"] == cells.max()]
    assert orphan["nucleus_label"].item() == 0 and np.isnan(orphan["nucleus_area_px"].item())
    merged = with_nucleus.set_index("label")["nucleus_area_px"]
    own = nuc.set_index("label")["area_px"]
    pd.testing.assert_series_equal(merged.loc[own.index], own, check_names=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="channel names"):
        region_features(np.zeros((4, 4), int), np.zeros((2, 4, 4)), channel_names=["a"])
    with pytest.raises(ValueError, match="image must be"):
        region_features(np.zeros((4, 4), int), np.zeros((2, 4, 5)), channel_names=["a", "b"])
    with pytest.raises(ValueError, match="pixel_size_um"):
        cell_catalogue(
            np.zeros((4, 4), int), np.zeros((4, 4), int), np.zeros((1, 4, 4)), channel_names=["a"], pixel_size_um=0
        )


def _blockwise(cells, nuclei, image, block):
    return blockwise_catalogue(cells, nuclei, image, block, channel_names=["nuc", "cyto"], pixel_size_um=0.5, plane=1)


@pytest.mark.parametrize("seed", [3, 13])
def test_blocks_merge_to_the_regionprops_values_of_the_whole_plane(seed):
    """Any block size gives regionprops' values: objects cut by seams, touching the plane edge, in pieces."""
    rng = np.random.default_rng(seed)
    image, nuclei, cells = two_channel_sample((120, 140), seed=seed, density=float(rng.uniform(0.2, 0.4)))
    cells = cells.copy()
    cells[rng.random(cells.shape) < 0.002] = cells.max()  # one object scattered over the plane, in pieces
    whole = region_features(cells, image, channel_names=["nuc", "cyto"])
    props = {p.label: p for p in regionprops(cells, intensity_image=np.moveaxis(image, 0, -1))}
    assert whole["label"].tolist() == sorted(props)
    for name in ("perimeter", "eccentricity", "feret_diameter_max", "area"):
        ref = np.array([getattr(props[lab], name) for lab in whole["label"]])
        column = f"{name}_px" if name in ("perimeter", "feret_diameter_max", "area") else name
        np.testing.assert_allclose(whole[column].to_numpy(), ref, rtol=1e-9, atol=1e-9, err_msg=name)
    ref_cells, ref_nuclei = cell_catalogue(
        cells, nuclei, image, channel_names=["nuc", "cyto"], pixel_size_um=0.5, plane=1
    )
    # atol: the eccentricity of a round object is sqrt(1 - l2 / l1), so rounding in l2 / l1 shows as ~1e-8
    for block in (int(rng.integers(17, 40)), 64):
        got_cells, got_nuclei = _blockwise(cells, nuclei, image, block)
        pd.testing.assert_frame_equal(got_cells, ref_cells, rtol=1e-9, atol=1e-7)
        pd.testing.assert_frame_equal(got_nuclei, ref_nuclei, rtol=1e-9, atol=1e-7)
