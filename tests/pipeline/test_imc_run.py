"""An IMC acquisition (.mcd, float32 counts, one tile per section) through upload and every step."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.errors import DataWarning
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.synth import ImcAcquisition, write_mcd
from imaxt_pipeline.testing import Sample

PANEL = [("DNA1", "Ir", 191), ("CD45", "Sm", 152), ("Vim", "Nd", 148)]


def _counts(rng: np.random.Generator, n_cells: int = 60) -> np.ndarray:
    """Nuclei (DNA, CD45) with a wider vimentin rim, as Poisson counts."""
    yy, xx = np.indices((200, 240))
    img = np.zeros((3, 200, 240), np.float32)
    for cy, cx in rng.uniform((12, 12), (188, 228), (n_cells, 2)):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img[0][d2 < 25] += 20
        img[1][d2 < 25] += 5
        img[2][d2 < 64] += 3
    return rng.poisson(img + 0.5).astype(np.float32)


@pytest.mark.slow  # upload + nine steps
def test_an_mcd_acquisition_runs_through_every_step(tmp_path, dask_client):
    write_mcd(tmp_path / "s.mcd", [ImcAcquisition(_counts(np.random.default_rng(0)), (1000.0, 2000.0), "ROI")], PANEL)
    store = str(tmp_path / "raw.zarr")
    upload(str(tmp_path / "s.mcd"), store, progress=False)
    sample = Sample(raw=tmp_path / "s.mcd", store=store, out=str(tmp_path / "out.zarr"))
    with pytest.warns(DataWarning, match="one section"):  # an IMC ROI is a sample of one section
        summary = sample.run(client=dask_client)
    assert list(summary.steps) == [
        "calibrate", "stitch", "mosaic", "beads", "register", "cube", "segment", "catalogue", "crops",
    ]  # fmt: skip
    out = OutputStore(sample.out, mode="r")
    assert out.imaxt_attrs()["slices_done"] == [0]
    assert list(out.imaxt_attrs()["stitch"]["tile_positions_px"]) == ["0/0/0"]
    cells = out.read_table("cells")
    assert 20 <= len(cells) <= 80, len(cells)  # 60 drawn, some touching
