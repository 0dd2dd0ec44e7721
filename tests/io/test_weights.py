"""Network weights: shipped defaults, loading, and the one per-process model cache."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from imaxt_pipeline.algorithms.registration import BeadUNet
from imaxt_pipeline.io import weights


@pytest.fixture(autouse=True)
def _fresh_cache():
    weights.clear_cache()
    yield
    weights.clear_cache()


def test_shipped_weights_are_package_files():
    assert weights.DEFAULT_BEAD_UNET.is_file() and weights.DEFAULT_BEAD_UNET.suffix == ".pt"
    assert weights.DEFAULT_CELLPOSE.is_file()
    assert weights.resolve_cellpose_model("shipped") == str(weights.DEFAULT_CELLPOSE)


def test_cache_is_keyed_by_kind_source_and_device(tmp_path):
    first = weights.cached_model("bead_unet", device="cpu")
    assert weights.cached_model("bead_unet", device="cpu") is first  # loaded once
    model, config = first
    assert isinstance(model, BeadUNet) and not model.training and config["downsample"] >= 1
    # an unset device keys the cache by the device it resolves to
    assert weights.cached_model("bead_unet", device=None) is weights.cached_model(
        "bead_unet", device=weights.resolve_device(None)
    )

    path = tmp_path / "other.pt"
    torch.save({"state_dict": BeadUNet(base=4, depth=3).state_dict(), "config": {"base": 4, "depth": 3}}, path)
    other = weights.cached_model("bead_unet", str(path), device="cpu")
    assert other is not first and other[0].base == 4
    weights.clear_cache()
    assert weights.cached_model("bead_unet", device="cpu") is not first


def test_cellpose_models_share_the_cache():
    model = weights.cached_model("cellpose", "shipped", device="cpu")
    assert weights.cached_model("cellpose", "shipped", device="cpu") is model
    assert float(model.diam_mean) == pytest.approx(10.0)  # the shipped nucleus model, not a default
    assert weights.cached_model("bead_unet", device="cpu") is not model


def test_unknown_kind_and_missing_weights_fail():
    with pytest.raises(ValueError, match="kind"):
        weights.cached_model("nope", device="cpu")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="not found"):
        weights.cached_model("bead_unet", "/no/such/weights.pt", device="cpu")


def test_importing_the_numpy_and_dask_layers_does_not_import_torch():
    code = (
        "import sys; import imaxt_pipeline.algorithms.registration, imaxt_pipeline.algorithms.segmentation, "
        "imaxt_pipeline.parallel.registration, imaxt_pipeline.parallel.segmentation, imaxt_pipeline.io.weights; "
        "print(sorted(m for m in ('torch', 'cellpose') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
