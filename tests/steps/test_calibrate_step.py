"""The calibrate step on a real multi-process cluster: tiles read and reduced on the workers, uncertainties recorded."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.io.rawzarr import RawStore
from imaxt_pipeline.synth import SynthParams
from imaxt_pipeline.testing import uploaded_sample

PARAMS = SynthParams(slices=1, rows=3, cols=3, seed=5, tile_shape=(256, 256))


@pytest.mark.slow  # a sample simulated and uploaded, then the step on the cluster
def test_calibrate_reads_on_workers_and_records_uncertainty(tmp_path, dask_client, monkeypatch) -> None:
    sample = uploaded_sample(tmp_path, PARAMS)

    def read_tile(*args: object, **kwargs: object) -> None:  # same name: a bound method pickles by name
        raise AssertionError("a tile was read on the client")

    # the workers are other processes: they read with the real method, the client may not read at all
    monkeypatch.setattr(RawStore, "read_tile", read_tile)
    summary = sample.run(steps=["calibrate"], client=dask_client)
    assert list(summary.steps) == ["calibrate"]
    cal = OutputStore(sample.out, mode="r").imaxt_attrs()["calibrate"]
    unc = cal["uncertainty"]
    assert unc["from_data"] == {"dark": True, "flat": True, "stray": True}
    assert len(unc["dark_adu"]) == len(unc["dark_from"]) == 2
    truth = sample.truth
    assert truth is not None
    for c in range(2):
        sigma = unc["dark_adu"][c]
        assert sigma is not None and sigma > 0
        # the simulator's dark (100 ADU) within 3 sigma of the estimate
        assert abs(cal["dark"][c] - truth.dark) <= 3 * sigma + 1.0, (c, cal["dark"][c], sigma, unc["dark_from"])
    assert all(0 < f < 0.2 for f in unc["flat_rel_rms"]) and all(
        m >= r for m, r in zip(unc["flat_rel_max"], unc["flat_rel_rms"], strict=True)
    )
    stray = np.array(unc["stray_adu"])
    sigma = np.array(unc["stray_sigma_adu"])
    # the simulator's stray light: 400 ADU at the left edge, seen in both channels
    assert np.all(np.abs(stray - PARAMS.stray_light) <= 3 * sigma + 0.1 * PARAMS.stray_light), (stray, sigma)
    assert cal["slices_used"] == [0]
