"""The cellpose backend with the shipped model trained on synthetic nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.segmentation import CellposeSegmenter, Segmenter, object_f1
from imaxt_pipeline.errors import ConfigError
from imaxt_pipeline.io.weights import DEFAULT_CELLPOSE as SHIPPED_MODEL
from imaxt_pipeline.io.weights import load_cellpose
from imaxt_pipeline.io.weights import resolve_cellpose_model as resolve_model
from imaxt_pipeline.testing._segdata import two_channel_sample


@pytest.fixture(scope="module")
def segmenter():
    segmenter = CellposeSegmenter(model="shipped", diameter=10.0, threads=2)
    return segmenter.with_model(load_cellpose(segmenter.model, device=segmenter.device()))


def test_shipped_model_loads_through_cellpose_model_api():
    import torch
    from cellpose import models

    assert SHIPPED_MODEL.is_file() and SHIPPED_MODEL.stat().st_size < 25e6
    model = models.CellposeModel(gpu=False, pretrained_model=str(SHIPPED_MODEL))
    assert float(model.diam_mean) == pytest.approx(10.0)  # read from the weights file, not the default 30
    assert 8.0 < float(model.diam_labels) < 13.0  # mean training nucleus diameter
    state = torch.load(SHIPPED_MODEL, map_location="cpu", weights_only=True)
    np.testing.assert_allclose(
        model.net.state_dict()["output.2.weight"].numpy(), state["output.2.weight"].float().numpy()
    )


def test_resolve_model_names_and_errors(tmp_path):
    assert resolve_model("shipped") == str(SHIPPED_MODEL)
    assert resolve_model("nuclei") == "nuclei"  # built-in name passes through
    with pytest.raises(ConfigError, match="no such weights file"):
        resolve_model(str(tmp_path / "missing.pt"))


def test_uses_gpu_exactly_when_torch_sees_one(segmenter):
    import torch

    assert segmenter.use_gpu() == torch.cuda.is_available()
    assert CellposeSegmenter(gpu=False).use_gpu() is False
    assert isinstance(segmenter, Segmenter)


@pytest.mark.parametrize("seed", [11, 12])
def test_shipped_model_f1_above_0_85(segmenter, seed):
    image, nuclei, cells = two_channel_sample((192, 192), seed=seed, density=0.35)
    seg = segmenter.segment(image)
    score = object_f1(nuclei, seg.nuclei, min_iou=0.5)
    assert score.f1 >= 0.85, score
    nz = seg.nuclei > 0
    np.testing.assert_array_equal(seg.cells[nz], seg.nuclei[nz])
    assert object_f1(cells, seg.cells).f1 >= 0.7


def test_fixed_normalisation_keeps_empty_blocks_empty(segmenter):
    from dataclasses import replace

    rng = np.random.default_rng(0)
    background = (0.05 + 0.02 * rng.standard_normal((2, 96, 96))).astype(np.float32)
    fixed = replace(segmenter, normalize_lowhigh=(0.0, 1.5))
    assert fixed.segment(background).nuclei.max() == 0


def test_shipped_model_on_simulated_sample(tmp_path, segmenter):
    from imaxt_pipeline.testing._segdata import synth_plane

    image, nuclei, _ = synth_plane(tmp_path / "s", seed=2)
    region = (slice(100, 356), slice(100, 356))
    crop, truth = image[:, region[0], region[1]], nuclei[region]
    seg = segmenter.segment(crop)
    score = object_f1(truth, seg.nuclei)
    assert truth.max() > 0 and score.f1 >= 0.85, score


@pytest.mark.slow  # trains cellpose for a few epochs
def test_training_script_writes_a_loadable_half_precision_model(tmp_path):
    import torch
    from cellpose import models

    from imaxt_pipeline.training.train_cellpose import main

    out = tmp_path / "tiny"
    assert main(["--out", str(out), "--images", "4", "--epochs", "2", "--per-epoch", "4", "--bsize", "64"]) == 0
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state["output.2.weight"].dtype == torch.float16
    assert not any(p.name.startswith(".train-") for p in tmp_path.iterdir())  # scratch folder removed
    model = models.CellposeModel(gpu=False, pretrained_model=str(out))
    assert float(model.diam_mean) == pytest.approx(10.0)


def test_segmenter_needs_a_bound_model_and_blockwise_binds_the_cached_one():
    from imaxt_pipeline.parallel.segmentation import segment_blockwise

    image, nuclei, _ = two_channel_sample((192, 192), seed=11, density=0.35)
    unbound = CellposeSegmenter(model="shipped", diameter=10.0, gpu=False)
    with pytest.raises(ValueError, match="no cellpose model"):
        unbound.segment(image)
    labels = segment_blockwise(image, unbound, block=96).compute(scheduler="sync")
    assert unbound.net is None  # the task bound the model to its own copy
    assert object_f1(nuclei, labels[0], min_iou=0.5).f1 >= 0.85
