"""Network weights: where the shipped ones live, how any of them is loaded, and one per-process cache.

The numpy layer (:mod:`imaxt_pipeline.algorithms`) only ever receives an
already-loaded model; reading checkpoints (package data, a local path or an
fsspec URL) and keeping them in memory is storage work and lives here.

* :func:`load_bead_unet` -- the bead U-Net of
  :mod:`imaxt_pipeline.algorithms.registration` from a checkpoint written by
  :mod:`imaxt_pipeline.training.train_bead_unet` (default :data:`DEFAULT_BEAD_UNET`).
* :func:`resolve_cellpose_model` / :func:`load_cellpose` -- a cellpose 3.x model
  by built-in name, weights path or ``"shipped"`` (:data:`DEFAULT_CELLPOSE`).
* :func:`cached_model` -- what Dask tasks call: one cache for both kinds, keyed
  by ``(kind, source, device)``, so a worker process loads each model once.

``torch`` and ``cellpose`` are optional (extras ``torch`` and ``gpu``) and imported on first use
only; without them those features fail with one line saying what to install (:func:`require`).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..algorithms.registration import BeadUNet

__all__ = [
    "DEFAULT_BEAD_UNET",
    "DEFAULT_CELLPOSE",
    "ModelKind",
    "cached_model",
    "clear_cache",
    "load_bead_unet",
    "load_cellpose",
    "require",
    "resolve_cellpose_model",
    "resolve_device",
]

_PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
DEFAULT_BEAD_UNET = _PRETRAINED / "bead_unet.pt"
"""Bead U-Net trained on synthetic mosaics (``python -m imaxt_pipeline.training.train_bead_unet``)."""
DEFAULT_CELLPOSE = _PRETRAINED / "cellpose" / "nuclei_synth"
"""cellpose nucleus model trained on synthetic nuclei (``python -m imaxt_pipeline.training.train_cellpose``)."""

ModelKind = Literal["bead_unet", "cellpose"]

_CACHE: dict[tuple[str, str | None, str], Any] = {}
# Dask workers run tasks in threads: without the lock two tasks could load the same model at once.
_LOCK = threading.Lock()


def resolve_device(device: str | None = None) -> str:
    """The torch device a model runs on: ``device`` itself, else ``"cuda"`` when torch sees a GPU, else ``"cpu"``.

    Parameters
    ----------
    device : str, optional
        Explicit torch device (``"cpu"``, ``"cuda:1"``...).

    Returns
    -------
    str
    """
    if device is not None:
        return str(device)
    torch = require("torch", "running a network (bead U-Net, cellpose)", "torch")
    return "cuda" if torch.cuda.is_available() else "cpu"


#: What each optional module is for, and the extra that installs it.
_EXTRAS = {"torch": "torch", "cellpose": "gpu"}
_BEAD_UNET = "the bead U-Net detector (registration detector: unet)"
_CELLPOSE = "the cellpose backend (segment backend: cellpose)"
#: The feature and extra of each model kind.
_FEATURES = {"bead_unet": (_BEAD_UNET, "torch"), "cellpose": (_CELLPOSE, "gpu")}


def require(module: str, feature: str, extra: str | None = None) -> Any:
    """Import optional ``module`` (``torch``, ``cellpose``) for ``feature``, or say in one line how to install it.

    Raises
    ------
    ConfigError
        If ``module`` is not installed (a plain ``pip install imaxt-pipeline`` has neither).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = extra or _EXTRAS.get(module, module)
        raise ConfigError(
            f"{feature} needs {module}, which is not installed: pip install 'imaxt-pipeline[{extra}]'"
        ) from None


def load_bead_unet(source: str | Path | None = None, *, device: str | None = None) -> tuple[BeadUNet, dict[str, Any]]:
    """Load bead U-Net weights from the package (default), a path or an fsspec/HTTP URL (not cached).

    Parameters
    ----------
    source : str or Path, optional
        Checkpoint written by the training script (a dict with
        ``state_dict`` and ``config``); default :data:`DEFAULT_BEAD_UNET`.
    device : str, optional
        Default: CUDA when available, else CPU.

    Returns
    -------
    (BeadUNet, dict)
        Model in eval mode on ``device``, and the checkpoint's ``config``
        (``base``, ``depth``, ``downsample``, ``threshold``).

    Raises
    ------
    FileNotFoundError
        If the checkpoint cannot be found.
    """
    torch = require("torch", _BEAD_UNET)
    from ..algorithms.registration import BeadUNet

    src = DEFAULT_BEAD_UNET if source is None else source
    if isinstance(src, str) and "://" in src:
        import fsspec

        with fsspec.open(src, "rb") as fh:
            blob = io.BytesIO(fh.read())
        ckpt = torch.load(blob, map_location="cpu", weights_only=True)
    else:
        if not Path(src).exists():
            raise FileNotFoundError(f"{src}: bead U-Net weights not found")
        ckpt = torch.load(Path(src), map_location="cpu", weights_only=True)
    config = dict(ckpt["config"])
    model = BeadUNet(base=int(config.get("base", 8)), depth=int(config.get("depth", 4)))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(torch.device(resolve_device(device))).eval(), config


def resolve_cellpose_model(model: str) -> str:
    """Turn a model setting into what ``CellposeModel(pretrained_model=...)`` takes.

    Parameters
    ----------
    model : str
        ``"shipped"`` (:data:`DEFAULT_CELLPOSE`), a cellpose built-in model name, or a weights file path.

    Returns
    -------
    str
        A path to an existing weights file, or the built-in name.

    Raises
    ------
    ConfigError
        If ``model`` is neither a built-in name nor an existing file.
    """
    if model == "shipped":
        model = str(DEFAULT_CELLPOSE)
    require("torch", _CELLPOSE, "gpu")
    models = require("cellpose.models", _CELLPOSE, "gpu")

    if model in models.MODEL_NAMES:
        return model
    if not Path(model).is_file():
        raise ConfigError(
            f"cellpose model {model!r}: no such weights file and not a built-in name "
            f"({', '.join(models.MODEL_NAMES[:6])}, ...)"
        )
    return str(Path(model).resolve())


def load_cellpose(model: str, *, device: str | None = None) -> Any:
    """A ``cellpose.models.CellposeModel`` (not cached).

    Parameters
    ----------
    model : str
        As for :func:`resolve_cellpose_model`.
    device : str, optional
        ``"cpu"`` or a CUDA device; default CUDA when torch sees one.

    Returns
    -------
    cellpose.models.CellposeModel

    Raises
    ------
    ConfigError
        If the model does not exist, or is a built-in one that is neither cached nor downloadable.
    """
    name = resolve_cellpose_model(model)
    from cellpose import models

    gpu = resolve_device(device) != "cpu"
    if name in models.MODEL_NAMES:
        try:
            path = models.model_path(name)
        except Exception as exc:  # cellpose downloads missing built-in weights
            raise ConfigError(
                f"cellpose built-in model {name!r} is not cached locally and cannot be "
                f"downloaded ({type(exc).__name__}: {exc})"
            ) from exc
        return models.CellposeModel(gpu=gpu, pretrained_model=str(path), diam_mean=17.0 if name == "nuclei" else 30.0)
    return models.CellposeModel(gpu=gpu, pretrained_model=name)


def cached_model(kind: ModelKind, source: str | None = None, *, device: str | None = None) -> Any:
    """A loaded model, loaded once per process and kind, source and device.

    Parameters
    ----------
    kind : {"bead_unet", "cellpose"}
        ``"bead_unet"`` returns :func:`load_bead_unet`'s ``(model, config)``;
        ``"cellpose"`` returns :func:`load_cellpose`'s model.
    source : str, optional
        Checkpoint path/URL or cellpose model setting; ``None`` is the shipped
        weights (``"shipped"`` for cellpose).
    device : str, optional
        Torch device; resolved (:func:`resolve_device`) before it keys the cache.

    Returns
    -------
    object
    """
    if kind in _FEATURES:
        require("torch", *_FEATURES[kind])
    dev = resolve_device(device)
    key = (kind, source, dev)
    with _LOCK:
        if key not in _CACHE:
            if kind == "bead_unet":
                _CACHE[key] = load_bead_unet(source, device=dev)
            elif kind == "cellpose":
                _CACHE[key] = load_cellpose("shipped" if source is None else source, device=dev)
            else:
                raise ValueError(f"kind must be 'bead_unet' or 'cellpose', got {kind!r}")
        return _CACHE[key]


def clear_cache() -> None:
    """Forget every cached model (frees their memory; the next :func:`cached_model` loads again)."""
    with _LOCK:
        _CACHE.clear()
