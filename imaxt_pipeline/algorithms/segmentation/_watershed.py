"""Nucleus and whole-cell segmentation of one 2-D plane.

Two backends share the :class:`Segmenter` protocol so that the blockwise
Dask wrapper (:mod:`imaxt_pipeline.parallel.segmentation`) never needs to know
which one runs:

* :class:`WatershedSegmenter` -- the IMAXT IMC method: Gaussian smoothing, an
  Otsu threshold, peaks of the distance transform as seeds and a watershed for
  nuclei; whole cells by a second watershed on the nucleus + cytoplasm signal
  seeded by the nuclei.
* :class:`~imaxt_pipeline.algorithms.segmentation.CellposeSegmenter`
  -- a cellpose 3.x model for nuclei, with cells grown by the same seeded
  watershed.

Both grow cells by one parameter record, :class:`CellGrowth` (a physical
distance, converted to px once by its pixel size). Every segmenter returns a
:class:`Segmentation`: nuclei and cells as int32 label images where cell
``i`` is the cell grown from nucleus ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

__all__ = [
    "CellGrowth",
    "Segmentation",
    "Segmenter",
    "WatershedSegmenter",
    "segment_cells_watershed",
    "segment_nuclei_watershed",
    "grow_cells",
    "plane_thresholds",
    "robust_otsu",
]

Labels = NDArray[np.int32]


@dataclass(frozen=True)
class Segmentation:
    """Labels of one plane (or block).

    Attributes
    ----------
    nuclei : ndarray of int32, shape (H, W)
        Nucleus labels, 0 = background, 1..n.
    cells : ndarray of int32, shape (H, W)
        Whole-cell labels; cell ``i`` contains nucleus ``i`` (same label).
    """

    nuclei: Labels
    cells: Labels


@dataclass(frozen=True)
class CellGrowth:
    """How far and into what whole cells grow from their nuclei (shared by every backend).

    Parameters
    ----------
    max_distance_um : float
        Cells never extend more than this beyond their nucleus, in µm.
    pixel_size_um : float
        µm per pixel of the images segmented; the default 1.0 makes
        ``max_distance_um`` a distance in px.
    threshold : float, optional
        Cytoplasm foreground threshold on the smoothed cytoplasm channel
        (e.g. from :func:`plane_thresholds` on the whole plane); Otsu's per
        call when ``None``.
    """

    max_distance_um: float = 6.0
    pixel_size_um: float = 1.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.pixel_size_um <= 0:
            raise ValueError(f"pixel_size_um must be positive, got {self.pixel_size_um}")
        if self.max_distance_um < 0:
            raise ValueError(f"max_distance_um must be >= 0, got {self.max_distance_um}")

    @property
    def max_distance_px(self) -> float:
        """:attr:`max_distance_um` in px (the one place the pixel size is applied)."""
        return float(self.max_distance_um) / float(self.pixel_size_um)


@runtime_checkable
class Segmenter(Protocol):
    """What the blockwise wrapper needs from a segmentation backend.

    ``segment`` takes a ``(C, H, W)`` float image and returns a
    :class:`Segmentation` of the same (H, W). ``expected_diameter_px`` sizes
    the block overlap. Implementations must pickle (they travel to workers).
    """

    expected_diameter_px: float

    def segment(self, image: NDArray[np.float32]) -> Segmentation: ...


def _check_plane(image: ArrayLike, name: str = "image") -> NDArray[np.float32]:
    plane = np.asarray(image)
    if plane.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {plane.shape}")
    return plane.astype(np.float32, copy=False)


def _otsu(values: NDArray[np.floating[Any]]) -> float:
    return float(threshold_otsu(values))  # type: ignore[no-untyped-call]  # scikit-image is untyped


def robust_otsu(smooth: NDArray[np.floating[Any]], *, max_area: int | None = None, max_fraction: float = 0.35) -> float:
    """Otsu's threshold that ignores a few large, very bright objects (e.g. beads).

    Otsu's threshold is computed once; connected regions above it that are
    larger than ``max_area`` pixels and together cover less than
    ``max_fraction`` of the image are outliers (fiducial beads are ~100x the
    area of a nucleus and brighter), so they are masked out (with a 2-px
    rim) and the threshold is computed again on the remaining pixels.

    Parameters
    ----------
    smooth : ndarray
        Smoothed intensities.
    max_area : int, optional
        Largest expected object area in px; no outlier removal when ``None``.
    max_fraction : float
        Large regions covering more than this fraction are foreground (e.g.
        tissue in a cytoplasm channel), not outliers.

    Returns
    -------
    float
        The threshold (``inf`` for a constant image).
    """
    if np.ptp(smooth) == 0:
        return float("inf")
    t = _otsu(smooth)
    if max_area is None:
        return t
    blobs, _ = ndi.label(smooth > t)
    areas = np.bincount(blobs.ravel())
    areas[0] = 0
    big = np.flatnonzero(areas > max_area)
    if not len(big) or areas[big].sum() > max_fraction * smooth.size:
        return t
    keep = ~ndi.binary_dilation(np.isin(blobs, big), iterations=2)
    rest = smooth[keep]
    return _otsu(rest) if rest.size and np.ptp(rest) > 0 else t


def plane_thresholds(
    image: ArrayLike,
    *,
    nuclear_channel: int = 0,
    cyto_channel: int | None = 1,
    sigma: float = 1.0,
    max_area: int | None = None,
) -> tuple[float, float | None]:
    """Otsu thresholds of the smoothed nuclear and combined cell signals.

    Blocks of a large plane are segmented independently; computing the
    thresholds once on the whole plane (or a subsample of it) keeps them
    consistent across blocks and stops an empty block from thresholding noise.

    Parameters
    ----------
    image : ndarray, shape (C, H, W)
        Plane or a representative subsample of it.
    nuclear_channel, cyto_channel : int
        Channel indices; ``cyto_channel=None`` skips the cell threshold.
    sigma : float
        Gaussian smoothing in px, as used by the segmenter.
    max_area : int, optional
        Largest nucleus area in px of ``image``; larger bright objects (beads)
        are left out of the thresholds (:func:`robust_otsu`).

    Returns
    -------
    nuclear_threshold, cell_threshold : float
        Otsu thresholds of the smoothed nuclear and cytoplasm channels
        (``cell_threshold`` is ``None`` without a cytoplasm channel).
    """
    planes = np.asarray(image, np.float32)
    nuc = ndi.gaussian_filter(planes[nuclear_channel], sigma)
    t_nuc = robust_otsu(nuc, max_area=max_area)
    if cyto_channel is None:
        return t_nuc, None
    cyto = ndi.gaussian_filter(planes[cyto_channel], sigma)
    t_cell = robust_otsu(cyto, max_area=max_area)
    return t_nuc, t_cell


def segment_nuclei_watershed(
    image: ArrayLike,
    *,
    sigma: float = 1.0,
    threshold: float | None = None,
    min_distance: int = 3,
    min_area: int = 12,
    max_area: int | None = None,
) -> Labels:
    """Segment nuclei: smooth, threshold, split touching nuclei by watershed.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Nuclear-stain intensity.
    sigma : float
        Gaussian smoothing in px before thresholding.
    threshold : float, optional
        Foreground threshold on the smoothed image; when ``None``,
        :func:`robust_otsu` with ``max_area`` (Otsu's without bright outliers).
    min_distance : int
        Minimum separation of two nucleus centres in px (distance-transform
        peaks closer than this merge).
    min_area, max_area : int
        Objects outside this pixel-area range are discarded (``max_area``
        removes e.g. fiducial beads).

    Returns
    -------
    labels : ndarray of int32, shape (H, W)
        Nucleus labels 1..n in raster order of their seeds.

    Notes
    -----
    Seeds are the maxima of the smoothed Euclidean distance transform of the
    foreground; the watershed floods ``-distance`` within the foreground, as
    in the IMAXT imaging-mass-cytometry pipeline.
    """
    plane = _check_plane(image)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    smooth = ndi.gaussian_filter(plane, sigma) if sigma > 0 else plane
    if threshold is None:
        threshold = robust_otsu(smooth, max_area=max_area)
    mask = ndi.binary_fill_holes(smooth > threshold)
    mask = ndi.binary_opening(mask, iterations=1)
    labels = np.zeros(plane.shape, np.int32)
    if not mask.any():
        return labels
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0)
    blobs, n_blobs = ndi.label(mask)
    # one global peak search (per-blob searches are ~10x slower), then a seed for any blob left without one
    peaks: NDArray[np.intp] = peak_local_max(  # type: ignore[no-untyped-call]  # scikit-image is untyped
        dist, min_distance=max(1, int(min_distance)), threshold_abs=1e-6, exclude_border=False
    )
    missing = np.setdiff1d(np.arange(1, n_blobs + 1), blobs[tuple(peaks.T)])
    if len(missing):
        extra = np.array(ndi.maximum_position(dist, blobs, missing), dtype=np.intp).reshape(-1, 2)
        peaks = np.concatenate([peaks.reshape(-1, 2), extra])
    markers = np.zeros(plane.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = _watershed(-dist, markers, mask)
    return _filter_areas(labels, min_area=min_area, max_area=max_area)


def _watershed(surface: NDArray[np.floating[Any]], markers: NDArray[np.int32], mask: NDArray[np.bool_]) -> Labels:
    out = watershed(surface, markers, mask=mask)  # type: ignore[no-untyped-call]  # scikit-image is untyped
    return np.asarray(out, dtype=np.int32)


def segment_cells_watershed(
    nuclear: ArrayLike,
    cyto: ArrayLike,
    nuclei: ArrayLike,
    *,
    sigma: float = 1.0,
    threshold: float | None = None,
    max_expansion: float = 10.0,
) -> Labels:
    """Grow whole cells from nuclei by a seeded watershed on nucleus + cytoplasm.

    Parameters
    ----------
    nuclear, cyto : ndarray, shape (H, W)
        Nuclear and cytoplasm channel intensities.
    nuclei : ndarray of int, shape (H, W)
        Nucleus labels used as seeds.
    sigma : float
        Gaussian smoothing in px.
    threshold : float, optional
        Cytoplasm foreground threshold on the smoothed ``cyto``; Otsu's when
        ``None``. Cells cover the nuclei plus the cytoplasm foreground.
    max_expansion : float
        Cells never extend more than this many px beyond their nucleus.

    Returns
    -------
    cells : ndarray of int32, shape (H, W)
        Cell labels; cell ``i`` is grown from (and contains) nucleus ``i``.
    """
    nuc, cyt = _check_plane(nuclear, "nuclear"), _check_plane(cyto, "cyto")
    seeds = np.asarray(nuclei)
    if not nuc.shape == cyt.shape == seeds.shape:
        raise ValueError(f"shapes differ: nuclear {nuc.shape}, cyto {cyt.shape}, nuclei {seeds.shape}")
    if not seeds.any():
        return np.zeros(seeds.shape, np.int32)
    cyto_s = ndi.gaussian_filter(cyt, sigma) if sigma > 0 else cyt
    if threshold is None:
        threshold = robust_otsu(cyto_s, max_area=int(np.pi * (max_expansion + 10) ** 2))
    signal = (ndi.gaussian_filter(nuc, sigma) if sigma > 0 else nuc) + cyto_s
    near = ndi.distance_transform_edt(seeds == 0) <= max_expansion
    mask = ((cyto_s > threshold) & near) | (seeds > 0)
    return _watershed(-signal, seeds.astype(np.int32), mask)


def _filter_areas(labels: Labels, *, min_area: int, max_area: int | None) -> Labels:
    """Zero objects outside [min_area, max_area] and renumber 1..n."""
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    if max_area is not None:
        keep &= areas <= max_area
    keep[0] = False
    lut = np.zeros(len(areas), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    out: Labels = lut[labels]
    return out


@dataclass(frozen=True)
class WatershedSegmenter:
    """Classical nuclei + cells segmentation (the IMAXT IMC method).

    Parameters
    ----------
    nuclear_channel, cyto_channel : int
        Channel indices in the ``(C, H, W)`` input; ``cyto_channel=None``
        makes cells equal to nuclei.
    diameter : float
        Expected nucleus diameter in px; sets ``min_distance`` and area limits.
    sigma : float
        Gaussian smoothing in px (nuclear and cytoplasm channels).
    nuclear_threshold : float, optional
        Fixed nuclear threshold (e.g. from :func:`plane_thresholds` on the
        whole plane); Otsu's per call when ``None``.
    growth : CellGrowth
        Cell growth beyond the nucleus (default 6 px).
    """

    nuclear_channel: int = 0
    cyto_channel: int | None = 1
    diameter: float = 10.0
    sigma: float = 1.0
    nuclear_threshold: float | None = None
    growth: CellGrowth = field(default_factory=CellGrowth)

    @property
    def expected_diameter_px(self) -> float:
        return float(self.diameter)

    def segment(self, image: ArrayLike) -> Segmentation:
        """Segment a ``(C, H, W)`` image into nuclei and cells."""
        planes = np.asarray(image, np.float32)
        if planes.ndim != 3:
            raise ValueError(f"image must be (C, H, W), got shape {planes.shape}")
        d = self.diameter
        nuclei = segment_nuclei_watershed(
            planes[self.nuclear_channel],
            sigma=self.sigma,
            threshold=self.nuclear_threshold,
            min_distance=max(2, int(round(d * 0.3))),
            min_area=max(4, int(np.pi * (d / 4) ** 2)),
            max_area=int(np.pi * d**2),
        )
        cells = grow_cells(
            planes,
            nuclei,
            nuclear_channel=self.nuclear_channel,
            cyto_channel=self.cyto_channel,
            sigma=self.sigma,
            growth=self.growth,
        )
        return Segmentation(nuclei=nuclei, cells=cells)


def grow_cells(
    image: NDArray[np.float32],
    nuclei: Labels,
    *,
    nuclear_channel: int,
    cyto_channel: int | None,
    sigma: float,
    growth: CellGrowth,
) -> Labels:
    """Whole cells of a ``(C, H, W)`` image grown from ``nuclei`` (the nuclei themselves without a cytoplasm channel).

    Parameters
    ----------
    image : ndarray, shape (C, H, W)
        The image segmented.
    nuclei : ndarray of int32, shape (H, W)
        Nucleus labels (the seeds).
    nuclear_channel, cyto_channel : int
        Channel indices; ``cyto_channel=None`` returns a copy of ``nuclei``.
    sigma : float
        Gaussian smoothing in px.
    growth : CellGrowth
        How far and into what the cells grow.

    Returns
    -------
    ndarray of int32, shape (H, W)
    """
    if cyto_channel is None:
        return nuclei.astype(np.int32, copy=True)
    return segment_cells_watershed(
        image[nuclear_channel],
        image[cyto_channel],
        nuclei,
        sigma=sigma,
        threshold=growth.threshold,
        max_expansion=growth.max_distance_px,
    )
