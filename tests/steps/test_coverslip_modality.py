"""``modality: coverslip``: one section, no beads unless said, bead and register steps skipped with one warning each."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from imaxt_pipeline.acquisition import Acquisition
from imaxt_pipeline.errors import DataWarning
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.steps import StepContext, step_module
from imaxt_pipeline.steps._channels import has_beads


def _coverslip(**extra):
    fields = dict(
        sample="nuclei",
        modality="coverslip",
        pixel_size_um=0.65,
        slice_thickness_um=5.0,
        tile_shape=(64, 64),
        overlap=0.1,
        channels=["DAPI"],
        rows=2,
        cols=2,
        slices=1,
    )
    return Acquisition(**{**fields, **extra})


def test_a_coverslip_has_one_section_and_no_beads_unless_it_says_so():
    acq = _coverslip()
    assert acq.modality == "coverslip" and not has_beads(acq)
    assert has_beads(_coverslip(beads=True))
    with pytest.raises(ValidationError, match="a coverslip acquisition has one section, got slices=3"):
        _coverslip(slices=3)
    assert has_beads(_coverslip(modality="STPT"))  # other modalities keep beads unless told


def test_bead_and_register_steps_skip_a_coverslip_with_one_warning_each(tmp_path):
    acq = _coverslip()
    out = OutputStore(str(tmp_path / "out.zarr"))
    ctx = StepContext(raw=SimpleNamespace(acquisition=acq), output=out, client=None, slices=[0])
    for name, pattern in (("beads", r"^beads: sample 'nuclei' has no beads"), ("register", r"^register: ")):
        mod = step_module(name)
        with pytest.warns(DataWarning, match=pattern) as record:
            result = mod.run(ctx, mod.Params())
        assert len(record) == 1 and "\n" not in str(record[0].message)
        assert result.metrics["skipped"] in ("no beads", "one section")
    assert out.imaxt_attrs()["register"]["slice_offsets_px"] == [[0.0, 0.0]]
