"""The compiled normal equations of the sub-pixel fit against the same sums written out with scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.stitching._gauss_newton import normal_equations
from imaxt_pipeline.algorithms.stitching._subpixel import MovingSpline, refine_shift


def _direct(tile, conf, ref, ref_w, box, shift, gain, offset):
    """Hessian, gradient, Σw, nnz of one block by map_coordinates (spline, central-difference gradient)."""
    ys, xs = np.mgrid[box[0] : box[1], box[2] : box[3]].astype(np.float64)
    qy, qx = ys - shift[0], xs - shift[1]
    coef = ndi.spline_filter(tile, order=3, mode="mirror")

    def spline(y, x):
        return ndi.map_coordinates(coef, [y, x], order=3, prefilter=False, mode="mirror")

    h = 1e-4
    v = spline(qy, qx)
    gy = (spline(qy + h, qx) - spline(qy - h, qx)) / (2 * h)
    gx = (spline(qy, qx + h) - spline(qy, qx - h)) / (2 * h)
    inside = (qy >= 0) & (qy <= tile.shape[0] - 1) & (qx >= 0) & (qx <= tile.shape[1] - 1)
    wl = ndi.map_coordinates(conf, [qy, qx], order=1, mode="constant")
    w = ref_w[box[0] : box[1], box[2] : box[3]] * wl * inside
    r = ref[box[0] : box[1], box[2] : box[3]] - gain * v - offset
    jac = np.stack([gain * gy, gain * gx, -v, -np.ones_like(v)]).reshape(4, -1)
    wf = w.ravel()
    return (jac * wf) @ jac.T, (jac * wf) @ r.ravel(), w.sum(), np.count_nonzero(w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normal_equations_match_the_sums_written_out(seed):
    rng = np.random.default_rng(seed)
    tile = ndi.gaussian_filter(rng.uniform(0, 100, (96, 80)), 2.0)
    conf = np.clip(rng.uniform(0.2, 1.5, tile.shape), 0, 1).astype(np.float32)
    conf[:, -5:] = 0  # a trimmed border
    ref = ndi.gaussian_filter(rng.uniform(0, 100, (90, 70)), 2.0)
    ref_w = rng.uniform(0.5, 1.0, ref.shape)
    # window of the moving tile larger than the tile on every side (its partners may leave the tile)
    mov = MovingSpline(tile, conf, (-12, tile.shape[0] + 12, -12, tile.shape[1] + 12))
    shifts = rng.uniform(-6, 6, (4, 2))
    shifts[3] = (3.5, 7.25)  # this block's partners leave the tile on the left: those columns drop out
    boxes = np.array([(5, 45, 4, 40), (40, 80, 30, 66), (10, 30, 20, 60), (50, 86, 0, 30)], np.int64)
    gain, offset = rng.uniform(0.8, 1.2, 4), rng.uniform(-5, 5, 4)
    first = boxes[:, [0, 2]] - shifts - (mov.y0, mov.x0)
    hess, grad, stats = normal_equations(
        mov.coef, mov.weights, ref, ref_w, boxes, first, gain, offset, tile.shape, (mov.y0, mov.x0)
    )
    for b in range(len(boxes)):
        h, g, wsum, nnz = _direct(tile, conf, ref, ref_w, boxes[b], shifts[b], gain[b], offset[b])
        scale = np.sqrt(np.outer(np.diag(h), np.diag(h)))
        np.testing.assert_allclose(hess[b] / scale, h / scale, atol=2e-5)
        np.testing.assert_allclose(grad[b], g, rtol=1e-4, atol=1e-4 * np.abs(g).max())
        assert stats[b, 0] == pytest.approx(wsum, rel=1e-6) and stats[b, 9] == nnz
    assert 0 < stats[3, 9] < (boxes[3, 1] - boxes[3, 0]) * (boxes[3, 3] - boxes[3, 2])


def test_refinement_recovers_a_shift_through_gain_offset_and_a_trimmed_border():
    rng = np.random.default_rng(5)
    img = ndi.gaussian_filter(rng.uniform(0, 1000, (140, 140)), 2.0)
    true = (1.73, -2.41)
    moved = 0.8 * ndi.shift(img, (-true[0], -true[1]), order=3) + 40.0  # ref(p) = (moved(p - s) - 40) / 0.8
    conf = np.ones_like(moved)
    conf[:, :10] = 0  # garbage the fit must ignore
    moved[:, :10] = 1e5
    est = refine_shift(img, moved, (1.0, -1.0), moving_weights=conf, region=(slice(15, 125), slice(15, 125)))
    assert est and est.ncc > 0.99
    np.testing.assert_allclose(est.shift, true, atol=0.01)
    assert all(0 < s < 0.01 for s in est.sigma)
