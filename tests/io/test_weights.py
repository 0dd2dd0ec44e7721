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


# -- torch is optional --------------------------------------------------------------------------
_BLOCK_TORCH = """
import importlib.abc, sys

class _NoTorch(importlib.abc.MetaPathFinder):  # as if torch and cellpose were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "cellpose"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
"""

_IMPORT_ALL = """
import importlib, pkgutil, sys
import imaxt_pipeline

skip = ("imaxt_pipeline.training", "imaxt_pipeline.testing", "imaxt_pipeline.algorithms.registration._bead_unet")
found = pkgutil.walk_packages(imaxt_pipeline.__path__, "imaxt_pipeline.")
names = [m.name for m in found if not m.name.startswith(skip)]
for name in names:
    importlib.import_module(name)
assert "torch" not in sys.modules and "cellpose" not in sys.modules
from imaxt_pipeline.errors import ConfigError
from imaxt_pipeline.io.weights import cached_model, resolve_cellpose_model
for call in (lambda: cached_model("bead_unet"), lambda: resolve_cellpose_model("shipped")):
    try:
        call()
    except ConfigError as exc:
        print("ERROR:", exc)
print("imported", len(names))
# The CLI's help in this same interpreter: its imports are done above, without torch.
import contextlib, io
from imaxt_pipeline.service.cli import main
for args in (["--help"], ["run", "--help"]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
    print("HELP", args, code, len(out.getvalue()), repr(err.getvalue()))
"""


@pytest.mark.slow  # a fresh interpreter imports every module, then runs the CLI's help twice
def test_a_plain_install_needs_no_torch(tmp_path):
    import subprocess
    import sys

    (tmp_path / "sitecustomize.py").write_text(_BLOCK_TORCH)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert int(lines[-3].split()[1]) > 80  # every module of the processing path, service and CLI included
    assert lines[:2] == [
        "ERROR: the bead U-Net detector (registration detector: unet) needs torch, which is not installed: "
        "pip install 'imaxt-pipeline[torch]'",
        "ERROR: the cellpose backend (segment backend: cellpose) needs torch, which is not installed: "
        "pip install 'imaxt-pipeline[gpu]'",
    ]
    # exit status 0, something on stdout, nothing on stderr (the two help lines: args, status, stdout length, stderr)
    assert not out.stderr, out.stderr
    for line, args in zip(lines[-2:], ("['--help']", "['run', '--help']"), strict=True):
        assert line.startswith(f"HELP {args} 0 ") and line.endswith(" ''") and int(line.split()[-2]) > 0, line
