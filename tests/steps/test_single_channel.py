"""Single-channel samples: channel roles from names, cells grown from the nuclei, one-line channel errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from imaxt_pipeline.acquisition import Acquisition
from imaxt_pipeline.algorithms.segmentation import object_f1
from imaxt_pipeline.errors import ConfigError
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.steps import StepContext, check_channel_indices, step_module
from imaxt_pipeline.steps._channels import resolve_roles
from imaxt_pipeline.steps.params import StepsConfig
from imaxt_pipeline.testing import two_channel_sample

SHAPE = (160, 192)


def _store(path, channels=("DAPI",)):
    """A 1-slice ``mosaic`` of the nuclear channel of a known scene (0.8 um px), and the truth nuclei."""
    acq = Acquisition(
        sample="dapi",
        modality="STPT",
        pixel_size_um=0.8,
        slice_thickness_um=15.0,
        tile_shape=(96, 96),
        overlap=0.1,
        channels=list(channels),
        rows=2,
        cols=2,
        slices=1,
    )
    out = OutputStore(str(path))
    img, nuc, _ = two_channel_sample(SHAPE, seed=41, density=0.3)
    image = out.create_image(
        "mosaic",
        channel_names=acq.channels,
        shape_czyx=(len(channels), 1, *SHAPE),
        scale_zyx_um=(15.0, 0.8, 0.8),
        dtype="float32",
        levels=2,
        chunks_yx=(96, 96),
    )
    image.write_plane(0, img[: len(channels)] * 1000)
    return acq, out, nuc


def _run(acq, out, client, name, **kw):
    mod = step_module(name)
    ctx = StepContext(raw=SimpleNamespace(acquisition=acq), output=out, client=client, slices=[0])
    return mod.run(ctx, mod.Params(**kw))


@pytest.mark.parametrize(
    ("names", "nuclear", "cyto"),
    [
        (["DAPI"], 0, None),
        (["nuclear", "cyto"], 0, 1),
        (["CD45 membrane", "Hoechst"], 1, 0),
        (["Ir191 DNA", "Ir193 DNA", "E-cadherin"], 0, 2),
        (["ch1", "ch2"], 0, 1),  # names say nothing: the historical defaults
    ],
)
def test_channel_roles_from_names(names, nuclear, cyto):
    roles = resolve_roles(names)
    assert (roles.nuclear, roles.cyto) == (nuclear, cyto)


def test_wrong_channel_index_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        check_channel_indices(["DAPI"], StepsConfig.model_validate({"segment": {"cyto_channel": 3}}))
    assert str(err.value) == "steps.segment.cyto_channel: 3 is not a channel of this sample (channels: 0 'DAPI')"
    with pytest.raises(ConfigError, match=r"^steps\.beads\.channel: 2 is not a channel .*0 'a', 1 'b'\)$"):
        check_channel_indices(["a", "b"], StepsConfig.model_validate({"beads": {"channel": 2}}))
    # a disabled step's index is not checked; None / "auto" never are
    check_channel_indices(["DAPI"], StepsConfig.model_validate({"segment": {"enabled": False, "cyto_channel": 3}}))
    check_channel_indices(["DAPI"], StepsConfig.model_validate({"segment": {"cyto_channel": None}}))


def test_dapi_only_sample_segments_nuclei_and_grows_cells(tmp_path, dask_client):
    """The default cytoplasm channel used to be 1: a DAPI-only plane crashed with an IndexError."""
    acq, out, truth = _store(tmp_path / "out.zarr")
    seg = _run(acq, out, dask_client, "segment", block=96, diameter_um=8.0, max_expansion_um=3.2)
    assert seg.metrics["cells_from"] == "nuclei (grown 3.2 um)"
    nuclei = out.open_image("mosaic/labels/nuclei").read_plane(0)
    cells = out.open_image("mosaic/labels/cells").read_plane(0)
    assert object_f1(truth, nuclei).f1 >= 0.85
    inside = nuclei > 0
    np.testing.assert_array_equal(cells[inside], nuclei[inside])  # cell i contains nucleus i
    assert (cells > 0).sum() > 1.3 * inside.sum()  # and grows beyond it
    assert set(np.unique(cells)) == set(np.unique(nuclei))
    _run(acq, out, dask_client, "catalogue")
    tables = {name: out.read_table(name) for name in ("cells", "nuclei")}
    for table in tables.values():
        assert table.attrs["cells_from"] == "nuclei (grown 3.2 um)"
    assert out.imaxt_attrs()["catalogue"]["cells_from"] == "nuclei (grown 3.2 um)"
    assert out.imaxt_attrs()["segment"]["channels"]["nuclear_name"] == "DAPI"
    cells_t = tables["cells"]
    assert (cells_t["area_px"] > cells_t["nucleus_area_px"]).mean() > 0.9 and "mean_DAPI" in cells_t.columns
    _run(acq, out, dask_client, "crops", size=16)
    assert out.root["crops"].shape[:2] == (len(tables["nuclei"]), 1)


def test_cells_are_the_nuclei_when_asked_and_bad_indices_fail(tmp_path, dask_client):
    acq, out, _ = _store(tmp_path / "out.zarr")
    seg = _run(acq, out, dask_client, "segment", block=96, diameter_um=8.0, cyto_channel=None)
    assert seg.metrics["cells_from"] == "nuclei"
    np.testing.assert_array_equal(
        out.open_image("mosaic/labels/cells").read_plane(0), out.open_image("mosaic/labels/nuclei").read_plane(0)
    )
    with pytest.raises(ConfigError, match=r"^steps\.segment\.nuclear_channel: 1 is not a channel of this sample"):
        _run(acq, out, dask_client, "segment", nuclear_channel=1)
    with pytest.raises(ConfigError, match=r"^steps\.beads\.channel: 1 is not a channel"):
        _run(acq, out, dask_client, "beads", channel=1)
