"""cellpose 3.x backend of the :class:`~imaxt_pipeline.algorithms.segmentation.Segmenter` protocol.

Nuclei come from a loaded cellpose model (``net``); whole cells are grown from
them by the seeded watershed of the watershed backend (:class:`CellGrowth`).
The segmenter itself carries only settings, so it pickles and tokenises
cheaply: ``model`` names the weights (``"shipped"``, a built-in cellpose name
or a weights path), which :mod:`imaxt_pipeline.io.weights` loads, and the
caller binds the loaded model with :meth:`CellposeSegmenter.with_model` (the
blockwise Dask wrapper does so on each worker). ``torch`` is imported on
first use only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._watershed import CellGrowth, Segmentation, grow_cells

__all__ = ["CellposeSegmenter"]


@dataclass(frozen=True)
class CellposeSegmenter:
    """Nuclei by a cellpose model, cells by a seeded watershed.

    Parameters
    ----------
    model : str
        ``"shipped"``, a built-in cellpose model name or a weights file path:
        which weights :mod:`imaxt_pipeline.io.weights` loads into ``net``.
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
    sigma : float
        Gaussian smoothing in px before cells are grown.
    growth : CellGrowth
        Cell growth beyond the nucleus (default 6 px), as in
        :class:`~imaxt_pipeline.algorithms.segmentation.WatershedSegmenter`.
    net : cellpose.models.CellposeModel, optional
        The loaded model (see :meth:`with_model`); needed by :meth:`segment`.
        Not part of equality.
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
    growth: CellGrowth = field(default_factory=CellGrowth)
    net: Any = field(default=None, compare=False, repr=False)

    @property
    def expected_diameter_px(self) -> float:
        return float(self.diameter)

    def use_gpu(self) -> bool:
        """Whether the model should run on the GPU (``gpu``, else whether torch sees one)."""
        if self.gpu is not None:
            return self.gpu
        import torch

        return bool(torch.cuda.is_available())

    def device(self) -> str:
        """The torch device to load :attr:`model` on: ``"cuda"`` or ``"cpu"``."""
        return "cuda" if self.use_gpu() else "cpu"

    def with_model(self, net: Any) -> CellposeSegmenter:
        """This segmenter with a loaded ``cellpose.models.CellposeModel``."""
        return replace(self, net=net)

    def segment(self, image: ArrayLike) -> Segmentation:
        """Segment a ``(C, H, W)`` image into nuclei (cellpose) and cells.

        Raises
        ------
        ValueError
            If the image is not 3-D or no model is bound (:meth:`with_model`).
        """
        import torch

        planes = np.asarray(image, np.float32)
        if planes.ndim != 3:
            raise ValueError(f"image must be (C, H, W), got shape {planes.shape}")
        if self.net is None:
            raise ValueError(
                f"no cellpose model bound: use .with_model(imaxt_pipeline.io.weights.cached_model("
                f"'cellpose', {self.model!r}))"
            )
        torch.set_num_threads(max(1, int(self.threads)))
        normalize: Any = True
        if self.normalize_lowhigh is not None:
            lo, hi = (float(v) for v in self.normalize_lowhigh)
            # cellpose makes two channels from channels=[0, 0]; the second is all zeros and must stay so
            normalize = {"normalize": True, "lowhigh": [[lo, hi], [0.0, 1.0]]}
        masks, _flows, _styles = self.net.eval(
            planes[self.nuclear_channel],
            diameter=self.diameter,
            channels=[0, 0],
            flow_threshold=self.flow_threshold,
            cellprob_threshold=self.cellprob_threshold,
            normalize=normalize,
        )
        nuclei = np.asarray(masks, np.int32)
        cells = grow_cells(
            planes,
            nuclei,
            nuclear_channel=self.nuclear_channel,
            cyto_channel=self.cyto_channel,
            sigma=self.sigma,
            growth=self.growth,
        )
        return Segmentation(nuclei=nuclei, cells=cells)
