"""The compiled bilinear shift equals scipy's order-1 shift (grid-constant) to float32 rounding.

Random planes (positive and signed), canvases smaller and larger than the plane, and offsets that are
sub-pixel, negative, integral, a hair (1e-10) off an integer and several pixels beyond the plane are
drawn over seeds; a real image shipped with scikit-image is shifted too. A window of a plane with its
``origin`` gives the plane's values bit for bit (what the cube's block tasks rely on).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from imaxt_pipeline.algorithms.registration import SNAP, shift_linear, split_shift


def _scipy(data: np.ndarray, offset: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """scipy's reference: the data on a canvas of ``out_shape`` at its origin, shifted by ``-offset``."""
    canvas = np.zeros((*data.shape[:-2], *out_shape), np.float32)
    h, w = min(data.shape[-2], out_shape[0]), min(data.shape[-1], out_shape[1])
    canvas[..., :h, :w] = data[..., :h, :w]
    shift = (0.0,) * (data.ndim - 2) + tuple(-float(v) for v in offset)
    return ndi.shift(canvas, shift, order=1, mode="grid-constant", cval=0.0, prefilter=False)


def _assert_float32_equal(got: np.ndarray, want: np.ndarray, scale: float) -> None:
    # float32 rounding: relative to each value, and to the image's scale where weights of 1e-10
    # (a near-integral offset snapped to a copy) or cancelling signs leave less than one ulp of it
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("seed", range(6))
def test_equals_scipy_shift_for_drawn_offsets(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 70, 2))
    data = (rng.random((2, h, w)) * rng.uniform(1, 5000)).astype(np.float32)
    if seed % 2:
        data -= np.float32(data.mean())  # signed values: cancelling taps
    out_shape = (h + int(rng.integers(-8, 12)), w + int(rng.integers(-8, 12)))
    offsets = [
        rng.uniform(-9, 9, 2),  # sub-pixel, either sign, several px
        -rng.uniform(0, 1, 2),  # negative, under a pixel
        np.round(rng.uniform(-9, 9, 2)),  # integral
        np.round(rng.uniform(-9, 9, 2)) + rng.choice([-1e-10, 1e-10], 2),  # a hair off an integer
        np.array([rng.uniform(h, h + 3), -rng.uniform(w, w + 3)]),  # (nearly) off the canvas
    ]
    for offset in offsets:
        got = shift_linear(data[..., : out_shape[0], : out_shape[1]], offset, out_shape)
        _assert_float32_equal(got, _scipy(data, offset, out_shape), float(np.abs(data).max()))
    # the sub-pixel shift moved content: not the input, not zero
    moved = shift_linear(data, offsets[0], (h, w))
    assert np.abs(moved).max() > 0.1 * np.abs(data).max() and not np.array_equal(moved, data)


def test_integral_offsets_copy_exactly():
    data = np.random.default_rng(3).random((3, 30, 40)).astype(np.float32)
    got = shift_linear(data, (2.0, -3.0 + 1e-12), (30, 40))
    np.testing.assert_array_equal(got[:, :28, 3:], data[:, 2:, :37])
    assert not got[:, 28:].any() and not got[:, :, :3].any()
    assert split_shift((2.0, -3.0 + 1e-12)) == ((2, -3), (0.0, 0.0))
    assert split_shift((0.5 * SNAP, 1 - 0.5 * SNAP)) == ((0, 1), (0.0, 0.0))
    assert split_shift((-0.25, 7.75)) == ((-1, 7), (0.75, 0.75))


def test_equals_scipy_on_a_real_image():
    from skimage import data as skdata

    image = skdata.camera().astype(np.float32)  # 512 x 512 uint8 photograph
    for offset in ([3.37, -5.81], [-0.5, 0.25], [-12.01, 40.6]):
        got = shift_linear(image, offset, image.shape)
        _assert_float32_equal(got, _scipy(image, np.array(offset), image.shape), 255.0)
        assert np.abs(got - image).max() > 10  # it moved


def test_a_window_with_its_origin_equals_the_plane_bit_for_bit():
    rng = np.random.default_rng(5)
    plane = rng.random((2, 90, 80)).astype(np.float32)
    offset = (rng.uniform(-4, 4), rng.uniform(-4, 4))
    whole = shift_linear(plane, offset, (90, 80))
    (iy, ix), _ = split_shift(offset)
    for y0, x0, h, w in [(0, 0, 32, 32), (40, 23, 30, 41), (70, 60, 20, 20)]:
        # the part of the plane the block's taps reach (cut where it leaves the plane)
        wy0, wx0 = max(y0 + iy, 0), max(x0 + ix, 0)
        window = plane[:, wy0 : y0 + iy + h + 1, wx0 : x0 + ix + w + 1]
        got = shift_linear(window, offset, (h, w), origin=(y0 - wy0, x0 - wx0))
        np.testing.assert_array_equal(got, whole[:, y0 : y0 + h, x0 : x0 + w])
