"""Pairwise tile registration against synthetic truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.algorithms.stitching import adjacent_pairs, match_pair
from imaxt_pipeline.algorithms.stitching._overlap import masked_ncc_shift
from imaxt_pipeline.algorithms.stitching._subpixel import MovingSpline, refine_shift
from imaxt_pipeline.testing import grid_tiles


def test_adjacent_pairs():
    assert adjacent_pairs(2, 3) == [(0, 1), (0, 3), (1, 2), (1, 4), (2, 5), (3, 4), (4, 5)]
    with pytest.raises(ValueError, match="rows and cols"):
        adjacent_pairs(0, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_masked_ncc_finds_integer_shift_despite_mask(dtype):
    rng = np.random.default_rng(1)
    img = ndi.gaussian_filter(rng.uniform(0, 1000, (80, 90)), 1.5)
    ref, mov = img[10:70, 10:80], img[13:73, 5:75]  # ref(p) = mov(p - (3, -5))
    mask = np.ones_like(ref)
    mask[:, :8] = 0  # trimmed border
    mov_bad = mov.copy()
    mov_bad[:, :8] = 1e5  # garbage in masked pixels must not matter
    shift, ncc = masked_ncc_shift(
        ref.astype(dtype), mov_bad.astype(dtype), reference_mask=np.ones_like(ref), moving_mask=mask, max_shift=8
    )
    assert shift == (3, -5)
    assert ncc > 0.95


def test_refine_shift_subpixel():
    rng = np.random.default_rng(2)
    img = ndi.gaussian_filter(rng.uniform(0, 1000, (120, 120)), 2.0)
    true = (2.37, -1.62)
    moved = ndi.shift(img, (-true[0], -true[1]), order=3)  # moved(q) = img(q + s)
    # ref(p) = img(p) = moved(p - s)
    est = refine_shift(img, moved, (2.0, -2.0), region=(slice(10, 110), slice(10, 110)))
    assert est
    np.testing.assert_allclose(est.shift, true, atol=0.02)
    assert est.ncc > 0.99


@pytest.mark.parametrize("seed", [0, 1])
def test_match_pair_recovers_true_shift_and_bending(seed):
    model = DistortionModel(k_y=0.006, k_x=0.006)
    tiles, true, stage = grid_tiles(seed, rows=1, cols=2, model=model)
    c = model.coefficients()
    # 32 px blocks, and the default (tile / 16, at least 16 px: half the pixels per point, noisier points)
    for block, tol in ((32, 0.2), (None, 0.3)):
        m = match_pair(tiles[0], tiles[1], stage[1] - stage[0], block_size=block)
        assert m.ok and m.ncc > 0.9
        # Each correspondence maps the same scene point: P_a + p_a + D(p_a) == P_b + p_b + D(p_b).
        gya, gxa = DistortionModel.design(m.points_ref[:, 0], m.points_ref[:, 1], (192, 192))
        gyb, gxb = DistortionModel.design(m.points_mov[:, 0], m.points_mov[:, 1], (192, 192))
        scene_a = true[0] + m.points_ref + np.stack([gya @ c, gxa @ c], 1)
        scene_b = true[1] + m.points_mov + np.stack([gyb @ c, gxb @ c], 1)
        assert len(m.points_ref) >= (3 if block else 6)
        assert np.max(np.abs(scene_a - scene_b)) < tol
    # The local shift bends along the seam by the distortion (> 0.5 px end to end).
    local = (m.points_ref - m.points_mov)[:, 1]
    assert np.ptp(local) > 0.5


def test_match_pair_empty_overlap_is_not_ok():
    rng = np.random.default_rng(5)
    a, b = rng.poisson(20.0, (2, 128, 128)).astype(float)
    m = match_pair(a, b, (0.0, 112.0), reference=4, moving=5)
    assert not m
    assert m.shift == m.expected == (0.0, 112.0)
    assert (m.reference, m.moving) == (4, 5)


def test_blocks_refined_together_match_one_by_one():
    """The batched Gauss-Newton of a seam's blocks gives each block the fit it would get alone."""
    rng = np.random.default_rng(5)
    img = ndi.gaussian_filter(rng.uniform(0, 1000, (96, 160)), 2.0)
    true = (1.3, -0.8)
    moved = ndi.shift(img, (-true[0], -true[1]), order=3) + rng.normal(0, 2, img.shape)
    regions = [(slice(10, 80), slice(x, x + 30)) for x in (10, 40, 70, 101)]  # last one a px wider
    mov = MovingSpline(moved, None, (-10, 106, -10, 170))
    together = mov.refine(img, None, regions, (1.0, -1.0))
    for reg, est in zip(regions, together, strict=True):
        alone = refine_shift(img, moved, (1.0, -1.0), region=reg)
        assert est and alone
        np.testing.assert_allclose(est.shift, alone.shift, atol=1e-6)
        np.testing.assert_allclose(est.sigma, alone.sigma, rtol=1e-3)
        np.testing.assert_allclose(est.shift, true, atol=0.03)


def test_blocks_far_from_the_seam_shift_are_found_from_their_quarter():
    """A seam whose local shift sweeps 12 px end to end (a strong distortion): the end blocks, out of reach
    from the seam's mean shift, are refitted from their quarter's shift and land on the truth."""
    rng = np.random.default_rng(3)
    img = ndi.gaussian_filter(rng.uniform(0, 1000, (300, 560)), 2.0)
    yy, xx = np.indices((256, 256), dtype=float)
    bend = 6.0 * (yy - 128) / 128  # x-shift of the moving tile's rows: -6 .. +6 px
    ref = img[10:266, 10:266]
    mov = ndi.map_coordinates(img, [yy + 10, xx + 10 + 230 + bend], order=3)  # mov(q) = img(q + (0, 230 + bend))
    m = match_pair(ref, mov, (0.0, 230.0), block_size=16, max_shift=15)
    assert m.ok
    local = (m.points_ref - m.points_mov)[:, 1]  # measured x-shift at each block
    truth = 230.0 + 6.0 * (m.points_mov[:, 0] - 128) / 128
    assert np.ptp(local) > 9.0  # the ends were found, not left at the seam's mean
    assert np.max(np.abs(local - truth)) < 0.3, np.abs(local - truth).max()
