"""The estimates' own uncertainties cover their true errors on drawn instruments (not our fixed simulator).

Every sample draws its own dark per channel (0-500 ADU), photon budget, vignetting (off-centre), stray light
edge, amplitude and decay length, and scene. Measured (tiles of 256 px, 3 x 3 tiles, 2 sections): the dark
used (after the check's clipping) within 1.4 sigma of the truth on every channel of seeds 1-12; the flat's
error over its sigma 0.2-2.1 rms on seeds 1-8 except seed 5 (5.0: stray light of 16 px decay biases the flat
near that border); the stray light within 2.1 sigma on 12 of the 13 channels of seeds 1-8 where every side
was measured, the 13th seed 2 channel 0 (decay 21 px against a 20 px window: -5.5 sigma); sides with no
agarose next to them are reported unmeasured, with no sigma, rather than as no stray light.
"""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.calibration import calibration_estimate, summarise
from imaxt_pipeline.synth import draw_instrument, render_random_sample

SEEDS = (1, 2, 3)  # the first three draws, none left out


def _true_flat_blocks(draw, b: int, h: int, w: int) -> np.ndarray:
    v = np.linspace(-1.0, 1.0, draw.tile)
    cy, cx = draw.vignetting_centre
    flat = 1.0 - draw.vignetting * ((v[:, None] - cy) ** 2 + (v[None, :] - cx) ** 2) / (
        2.0 * (1 + max(abs(cy), abs(cx))) ** 2
    )  # the simulator's vignetting (synth._random_instrument)
    hb, wb = h // b, w // b
    out = flat[: hb * b, : wb * b].reshape(hb, b, wb, b).mean(axis=(1, 3))
    return out / out.mean()


@pytest.mark.slow
def test_sigmas_cover_the_true_errors_on_drawn_instruments() -> None:
    stray_z, flat_zrms, refused = [], [], 0
    for seed in SEEDS:
        draw = draw_instrument(seed, grid=(3, 3), tile=256, sections=2)
        s = render_random_sample(draw)
        n_s, n_c, n_t, h, w = s.tiles.shape
        pool = s.tiles.transpose(1, 0, 2, 3, 4).reshape(n_c, n_s * n_t, h, w)
        stats = [summarise(pool[c], noise_every=max(1, pool.shape[1] // 8)) for c in range(n_c)]
        est = calibration_estimate(stats, max_trim_px=int(0.25 * draw.overlap * h), bootstrap=16, check_darks=True)
        cal = est.calibration
        assert len(est.checks) == n_c and len(est.dark_sigma_from) == n_c
        for c in range(n_c):
            err = cal.dark[c] - draw.dark[c]
            assert np.isfinite(est.dark_sigma[c]) and abs(err) <= 2 * est.dark_sigma[c], (seed, c, err, est.dark_sigma)
            truth = draw.stray_amplitude if draw.stray_edge != "none" else 0.0
            if est.stray_unmeasured[c]:
                # a side it could not measure: no sigma, never a confident "no stray light"
                assert np.isnan(est.stray_sigma[c])
            else:
                stray_z.append((est.stray_amplitude[c] - truth) / est.stray_sigma[c])
        if cal.source["flat"].startswith("estimated: uniform"):
            # seed 2: the fitted flat's corners at 0.02 of its centre (1.57 off the truth), refused for a uniform
            # one (0.20 off): no flat sigma then, the flat is not pinned
            refused += 1
            assert est.flat_sigma is None and np.ptp(cal.flat) == 0.0
        elif est.flat_sigma is not None:
            b = stats[0].block
            fb = cal.flat[0][: (h // b) * b, : (w // b) * b].reshape(h // b, b, w // b, b).mean(axis=(1, 3))
            rel = (fb / fb.mean()) / _true_flat_blocks(draw, b, h, w) - 1.0
            flat_zrms.append(float(np.sqrt(np.mean((rel / est.flat_sigma[0]) ** 2))))
    z = np.abs(stray_z)
    assert len(z) >= 5 and np.mean(z <= 3.0) >= 0.8, stray_z  # measured: 5 of 6 within 2.1, the sixth -5.5
    assert refused <= 1 and len(flat_zrms) + refused == len(SEEDS), (refused, flat_zrms)
    assert max(flat_zrms) <= 3.0, flat_zrms  # measured 0.56, 0.70 (seed 2, refused, read 2.1)
