"""The randomised-instrument generator: draws span the stated ranges, renders are deterministic and honest."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.optics import DistortionModel
from imaxt_pipeline.synth import cut_tiles, draw_instrument, render_random_sample
from imaxt_pipeline.synth._random_instrument import displacement


def test_draws_cover_the_ranges_and_are_seeded() -> None:
    draws = [draw_instrument(s) for s in range(60)]
    assert draw_instrument(7) == draws[7]
    for d in draws:
        assert 2 <= d.rows <= 10 and 2 <= d.cols <= 10 and 256 <= d.tile <= 2048 and 1 <= d.sections <= 8
        assert 0.05 <= d.overlap <= 0.20 and 1.0 <= d.jitter_px <= 10.0 and 0.1 <= d.tissue_fraction <= 0.9
        assert all(0 <= v <= 500 for v in d.dark) and 100 <= d.photons_peak <= 5000
        assert 0.1 <= d.vignetting <= 0.5 and 0 <= d.bead_density <= 10
        # corner displacement up to ~3 % of the half-field (plus the magnification error)
        assert d.corner_distortion_px <= 0.045 * d.tile / 2
    assert len({d.stray_edge for d in draws}) == 5
    assert len({len(d.dark) for d in draws}) == 3
    assert any(d.empty_fraction > 0 for d in draws) and any(d.empty_fraction == 0 for d in draws)
    assert max(d.corner_distortion_px / d.tile for d in draws) > 0.01
    capped = draw_instrument(3, max_pixels=2e6)
    assert capped.sections * capped.rows * capped.cols * capped.tile**2 <= 2e6 or capped.rows == capped.cols == 2


def test_distortion_is_outside_the_solvers_family() -> None:
    """The best fit of the solver's polynomial leaves a residual: the sweep does not flatter the solver."""
    d = draw_instrument(1, tile=512)
    assert abs(d.quintic[0]) > 0 and d.field_px > 0
    dy, dx = displacement(d, np.random.default_rng(0))
    yy, xx = np.indices((512, 512), dtype=np.float64)
    gy, gx = DistortionModel.design(yy.ravel(), xx.ravel(), (512, 512))
    for field, g in ((dy, gy), (dx, gx)):
        design = np.column_stack([np.ones(g.shape[0]), g])
        coef, *_ = np.linalg.lstsq(design, field.ravel(), rcond=None)
        resid = field.ravel() - design @ coef
        assert resid.std() > 0.05 * field.std()


def test_render_is_deterministic_with_truth() -> None:
    d = draw_instrument(106, grid=(2, 2), tile=256, sections=1)
    a, b = render_random_sample(d), render_random_sample(d)
    assert a.tiles.shape == (1, d.channels, 4, 256, 256) and a.tiles.dtype == np.uint16
    np.testing.assert_array_equal(a.tiles, b.tiles)
    np.testing.assert_array_equal(a.true_px, b.true_px)
    jitter = a.true_px[0] - a.stage_px
    assert np.all(np.abs(jitter) <= 3 * d.jitter_px + 1e-9) and np.abs(jitter).max() > 0
    for ch in range(d.channels):  # no pixel reads far below the channel's dark
        assert a.tiles[0, ch].min() >= d.dark[ch] - 6 * d.read_noise - 1
    assert a.pair_texture.shape == (1, 4) and np.all(a.pair_texture >= 0)


def test_cut_tiles_shows_the_image_at_the_true_positions() -> None:
    from scipy import ndimage as ndi

    img = ndi.gaussian_filter(np.random.default_rng(0).random((300, 300)), 3) * 5000
    tiles, stage, true = cut_tiles(img, 2, 2, overlap=0.2, jitter_px=2.0, seed=1, photons_peak=1e6, read_noise=0.0)
    assert tiles.shape[:2] == (1, 4)
    n = tiles.shape[-1]
    yy, xx = np.indices((n, n), dtype=np.float64)
    for t in range(4):
        got = tiles[0, t].astype(float) - 100.0
        want = ndi.map_coordinates(img, (yy + true[t, 0], xx + true[t, 1]), order=3, mode="mirror")
        off = ndi.map_coordinates(img, (yy + true[t, 0] + 0.5, xx + true[t, 1]), order=3, mode="mirror")
        rms, rms_off = np.sqrt(np.mean((got - want) ** 2)), np.sqrt(np.mean((got - off) ** 2))
        assert rms < 5.0 < rms_off  # shot noise (~4 ADU) only; half a pixel off is clearly worse
    assert 0 < np.abs(true - stage).max() <= 6.0 + 1e-9


def test_stray_light_enters_at_the_drawn_edge() -> None:
    from imaxt_pipeline.synth._random_instrument import _stray

    seen = set()
    for seed in range(20):
        d = draw_instrument(seed, tile=256)
        prof = _stray(d)
        seen.add(d.stray_edge)
        if d.stray_edge == "none":
            assert prof.max() == 0.0
            continue
        assert prof.max() == pytest.approx(d.stray_amplitude)
        edge = {"top": prof[0], "bottom": prof[-1], "left": prof[:, 0], "right": prof[:, -1]}[d.stray_edge]
        assert np.allclose(edge, d.stray_amplitude)
    assert len(seen) >= 4


def test_random_field_carries_no_linear_optics_unless_asked() -> None:
    """The field's slopes (magnification, rotation, shear) are projected out; the drawn ``mag`` is the linear part."""
    import dataclasses

    d = draw_instrument(4, tile=256)
    poly = dataclasses.replace(d, field_px=0.0)
    v = (np.arange(256) - 127.5) / 127.5
    vv, uu = np.meshgrid(v, v, indexing="ij")
    design = np.stack([np.ones(vv.size), vv.ravel(), uu.ravel()], axis=1)
    slopes = {}
    for keep in (False, True):
        drawn = dataclasses.replace(d, field_linear=keep)
        fields = [
            f - p
            for f, p in zip(
                displacement(drawn, np.random.default_rng(0)), displacement(poly, np.random.default_rng(0)), strict=True
            )
        ]
        for f in fields:
            assert f.std() == pytest.approx(d.field_px, rel=1e-6) and abs(f.mean()) < 1e-9
        slopes[keep] = np.array([np.linalg.lstsq(design, f.ravel(), rcond=None)[0][1:] for f in fields])
    assert np.abs(slopes[False]).max() < 1e-9
    assert np.abs(slopes[True]).max() > 0.05 * d.field_px  # a 6 x 6 random field has slopes of its own
    assert "linear kept" in dataclasses.replace(d, field_linear=True).describe() and "linear" not in d.describe()


def test_calibration_draw_sees_the_same_optics_through_a_calibration_acquisition() -> None:
    """Same seed and tile, so the same displacement (the field is drawn first from ``[seed, 1]``); a lab's settings."""
    from imaxt_pipeline.synth import calibration_draw

    for seed, field_linear in ((1, False), (4, True)):
        d = draw_instrument(seed, tile=256, max_pixels=2e6, field_linear=field_linear)
        c = calibration_draw(d)
        for got, want in zip(
            displacement(c, np.random.default_rng([seed, 1])),
            displacement(d, np.random.default_rng([seed, 1])),
            strict=True,
        ):
            np.testing.assert_array_equal(got, want)
        same = ("seed", "tile", "mag", "cubic", "quintic", "field_px", "field_linear", "photons_peak", "psf_sigma_px")
        assert [getattr(c, k) for k in same] == [getattr(d, k) for k in same] and c.dark == d.dark[:1]
        assert (c.rows, c.cols, c.sections, c.channels) == (5, 5, 1, 1)
        assert c.overlap == 0.45 and c.jitter_px == 0.1 and c.empty_fraction == 0.0 and c.bead_density == 0.0
        assert c.tissue_fraction == 0.9
    # the grid shrinks to what the render budget allows, never below 3 x 3
    assert calibration_draw(draw_instrument(0, tile=1024)).rows == 5
    assert (
        calibration_draw(draw_instrument(0, tile=1536)).rows,
        calibration_draw(draw_instrument(0, tile=2048)).rows,
    ) == (4, 3)
    assert calibration_draw(draw_instrument(0, tile=2048), grid=(4, 3)).cols == 3
    s = render_random_sample(calibration_draw(draw_instrument(2, tile=128)))
    assert s.tiles.shape[:3] == (1, 1, 25)
    assert 0 < np.abs(s.true_px - s.stage_px).max() <= 0.3 + 1e-9  # the precise stage, truncated at 3 sigma
