"""cellpose 3.x backend of the :class:`~imaxt_pipeline.algorithms.segmentation.Segmenter` protocol.

Nuclei come from a cellpose model (a built-in name such as ``"nuclei"``
when its weights are cached locally, a path to a weights file, or
``"shipped"``: the small model trained on synthetic nuclei by
:mod:`imaxt_pipeline.training.train_cellpose` and shipped in
``imaxt_pipeline/pretrained/cellpose/``). Whole cells are grown from them by the
seeded watershed of the watershed backend. ``cellpose`` and ``torch`` are
imported on first use only; the model runs on the GPU when torch sees one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ._watershed import Segmentation, grow_cells

__all__ = ["SHIPPED_MODEL", "CellposeSegmenter", "resolve_model"]

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "pretrained" / "cellpose" / "nuclei_synth"

_MODELS: dict[tuple[str, bool], Any] = {}  # per-process cache: workers load a model once


def resolve_model(model: str) -> str:
    """Turn a model setting into what ``CellposeModel(pretrained_model=...)`` takes.

    Parameters
    ----------
    model : str
        ``"shipped"``, a cellpose built-in model name, or a weights file path.

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
        model = str(SHIPPED_MODEL)
    from cellpose import models

    if model in models.MODEL_NAMES:
        return model
    if not Path(model).is_file():
        raise ConfigError(f"cellpose model {model!r}: no such weights file and not a built-in name "
                          f"({', '.join(models.MODEL_NAMES[:6])}, ...)")
    return str(Path(model).resolve())


def _load(model: str, gpu: bool) -> Any:
    key = (model, gpu)
    if key not in _MODELS:
        from cellpose import models

        if model in models.MODEL_NAMES:
            try:
                path = models.model_path(model)
            except Exception as exc:  # cellpose downloads missing built-in weights
                raise ConfigError(f"cellpose built-in model {model!r} is not cached locally and cannot be "
                                  f"downloaded ({type(exc).__name__}: {exc})") from exc
            _MODELS[key] = models.CellposeModel(gpu=gpu, pretrained_model=str(path),
                                                diam_mean=17.0 if model == "nuclei" else 30.0)
        else:
            _MODELS[key] = models.CellposeModel(gpu=gpu, pretrained_model=model)
    return _MODELS[key]


@dataclass(frozen=True)
class CellposeSegmenter:
    """Nuclei by a cellpose model, cells by a seeded watershed.

    Parameters
    ----------
    model : str
        ``"shipped"``, a built-in cellpose model name or a weights file path.
    diameter : float
        Expected nucleus diameter in px (images are rescaled so that it
        matches the model's training diameter).
    nuclear_channel, cyto_channel : int
        Channel indices in the ``(C, H, W)`` input; ``cyto_channel=None``
        makes cells equal to nuclei.
    flow_threshold, cellprob_threshold : float
        cellpose's mask-quality and foreground thresholds.
    normalize_lowhigh : tuple of float, optional
        Fixed intensity range mapped to [0, 1] (e.g. the plane's 1st/99.9th
        percentiles), so that blocks share one normalisation; cellpose's
        per-image percentiles when ``None``.
    gpu : bool, optional
        Force or forbid the GPU; ``None`` uses it when torch sees one.
    threads : int
        torch CPU threads.
    sigma, cell_threshold, max_expansion
        Cell growth, as in :class:`~imaxt_pipeline.algorithms.segmentation.WatershedSegmenter`.
    """

    model: str = "shipped"
    diameter: float = 10.0
    nuclear_channel: int = 0
    cyto_channel: int | None = 1
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    normalize_lowhigh: tuple[float, float] | None = None
    gpu: bool | None = None
    threads: int = 1
    sigma: float = 1.0
    cell_threshold: float | None = None
    max_expansion: float = 6.0

    @property
    def expected_diameter_px(self) -> float:
        return float(self.diameter)

    def use_gpu(self) -> bool:
        if self.gpu is not None:
            return self.gpu
        import torch

        return bool(torch.cuda.is_available())

    def load(self) -> Any:
        """The ``cellpose.models.CellposeModel`` (cached per process)."""
        return _load(resolve_model(self.model), self.use_gpu())

    def segment(self, image: np.ndarray) -> Segmentation:
        """Segment a ``(C, H, W)`` image into nuclei (cellpose) and cells."""
        import torch

        image = np.asarray(image, np.float32)
        if image.ndim != 3:
            raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
        torch.set_num_threads(max(1, int(self.threads)))
        model = self.load()
        normalize: Any = True
        if self.normalize_lowhigh is not None:
            lo, hi = (float(v) for v in self.normalize_lowhigh)
            # cellpose makes two channels from channels=[0, 0]; the second is all zeros and must stay so
            normalize = {"normalize": True, "lowhigh": [[lo, hi], [0.0, 1.0]]}
        masks, _flows, _styles = model.eval(image[self.nuclear_channel], diameter=self.diameter, channels=[0, 0],
                                            flow_threshold=self.flow_threshold,
                                            cellprob_threshold=self.cellprob_threshold, normalize=normalize)
        nuclei = np.asarray(masks, np.int32)
        return Segmentation(nuclei=nuclei, cells=grow_cells(self, image, nuclei))
