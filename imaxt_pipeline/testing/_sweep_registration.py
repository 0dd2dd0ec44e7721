"""Slice registration measured on randomised-instrument samples, the way the pipeline's steps go.

Stitched tiles -> ``mosaic`` (:func:`fuse_sections`: the step's blocks, :func:`...parallel.fusion.fuse_blocks`,
on one canvas shared by every section, with the solved distortion) -> ``beads`` (:func:`section_beads`: the
step's channel choice, shared bead plateau, blockwise detection and fits, :func:`good_beads`) -> ``register``
(:func:`...steps.register.register_table`: radius outliers, tracks, the slice-offset solve). Nothing here
re-implements a step's science: it calls the same functions with the step defaults, on an in-memory image
(:class:`MemoryMosaic`) instead of a store. Used by ``benchmarks/stitching_registration.py`` and its test.

Truth (:func:`drawn_truth`): section ``k``'s content is the specimen displaced by the scene's drift
``drift_k`` (:class:`imaxt_pipeline.synth.Scene`), and its mosaic pixel ``m`` shows the section's own frame
at ``m + a_k``, ``a_k`` the translation of true minus stitched tile positions. A bead at specimen ``P`` is
then at ``P + drift_k - a_k`` in the mosaic, and ``solve_slice_offsets`` (``p = P_b + D_s``, slice 0 fixed)
should find ``D_k = drift_k - a_k + a_0`` (:func:`true_offsets`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._sweep_beads import BeadView, bead_view

__all__ = [
    "MemoryMosaic",
    "OffsetScore",
    "RegistrationScore",
    "SampleTruth",
    "capture_stitch",
    "drawn_truth",
    "fuse_sections",
    "offset_errors",
    "register_beads",
    "score_registration",
    "section_beads",
    "true_offsets",
]


@dataclass(frozen=True)
class SampleTruth:
    """What :func:`render_random_sample` does not return: the scene's drift (S, 2) and its beads (specimen frame)."""

    drift_px: np.ndarray
    beads: pd.DataFrame
    true_px: np.ndarray


def drawn_truth(draw: Any, true_px: np.ndarray | None = None) -> SampleTruth:
    """The drift and beads of the scene :func:`imaxt_pipeline.synth.render_random_sample` renders for ``draw``.

    Replays the renderer's random stream up to the true tile positions (cheap: no tile is rendered) and,
    when ``true_px`` (the sample's own truth) is given, checks that the replay drew the same ones, so a
    changed generator fails here instead of scoring against a wrong drift.
    """
    from imaxt_pipeline.synth import Scene
    from imaxt_pipeline.synth._random_instrument import _scene_params, displacement

    rng = np.random.default_rng([draw.seed, 1])  # the renderer's order of draws
    params = _scene_params(draw)
    dy, dx = displacement(draw, rng)
    scene = Scene(params, rng, pad=int(math.ceil(max(np.abs(dy).max(), np.abs(dx).max()))) + 8)
    (sy, sx), m = params.step_px, params.margin_px
    rr, cc = np.meshgrid(np.arange(draw.rows), np.arange(draw.cols), indexing="ij")
    stage = np.stack([m + rr * sy, m + cc * sx], axis=-1).reshape(-1, 2).astype(np.float64)
    err = rng.normal(0.0, draw.jitter_px, (draw.sections, len(stage), 2))
    true = stage[None] + np.clip(err, -3 * draw.jitter_px, 3 * draw.jitter_px)
    if true_px is not None and not np.allclose(true, true_px, atol=1e-9):
        raise ValueError(f"seed {draw.seed}: replaying the renderer gave other tile positions (generator changed?)")
    return SampleTruth(np.asarray(scene.offsets, np.float64), scene.beads.copy(), true)


@contextmanager
def capture_stitch() -> Iterator[dict[str, Any]]:
    """Record the solution and calibration a stitching run (``stitching_sweep.ours``) made.

    Inside the block, :func:`...algorithms.stitching.solve_positions` and :func:`...parallel.stitching.match_tiles`
    (looked up at call time by the sweep) are wrapped: the record gets ``solution`` (the last solve) and
    ``calibration`` (the one the pairs were first matched with: the calibrate step's, dark checked, not the
    seam-refined flat of a re-match round).
    """
    import imaxt_pipeline.algorithms.stitching as stitching
    import imaxt_pipeline.parallel.stitching as pstitching

    record: dict[str, Any] = {}
    solve, match = stitching.solve_positions, pstitching.match_tiles

    def solve_rec(*args: Any, **kw: Any) -> Any:
        record["solution"] = solve(*args, **kw)
        return record["solution"]

    def match_rec(read: Any, a: int, b: int, expected: Any, calibration: Any, *args: Any, **kw: Any) -> Any:
        record.setdefault("calibration", calibration)
        return match(read, a, b, expected, calibration, *args, **kw)

    stitching.solve_positions, pstitching.match_tiles = solve_rec, match_rec  # type: ignore[assignment]
    try:
        yield record
    finally:
        stitching.solve_positions, pstitching.match_tiles = solve, match


@dataclass
class MemoryMosaic:
    """The ``mosaic`` image in memory: pyramid ``levels`` of (C, Z, h, w) arrays (Z = sections), read by the
    beads step's readers as an :class:`~imaxt_pipeline.io.ome.OmeImage` (``shape``, ``levels``, ``array``)."""

    data: list[np.ndarray]
    origin_px: tuple[float, float] = (0.0, 0.0)
    margin: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.data[0].shape)

    @property
    def levels(self) -> int:
        return len(self.data)

    def level_shape(self, level: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.data[level].shape)

    def array(self, level: int, mode: str = "r") -> np.ndarray:
        return self.data[level]

    def to_mosaic(self, stage_px: np.ndarray) -> np.ndarray:
        """Stage-frame (y, x) to this canvas (the mosaic step's :meth:`MosaicGeometry.to_mosaic`)."""
        return np.asarray(stage_px, np.float64) - np.asarray(self.origin_px) + self.margin


def fuse_sections(
    tiles: np.ndarray,
    positions: np.ndarray,
    stage: np.ndarray,
    calibration: Any,
    *,
    rows: int,
    cols: int,
    params: Any = None,
) -> MemoryMosaic:
    """Every section fused as the ``mosaic`` step does, on the canvas of section 0's stage.

    ``tiles`` (S, C, T, H, W) raw, ``positions`` (S, T, 2) stitched top-lefts in the stage frame,
    ``calibration`` with the distortion to resample through. Blocks, their first pyramid levels and the
    coarser ones (2 x 2 means of the last) as the step writes them; computed in this process.
    """
    import dask

    from imaxt_pipeline.algorithms.fusion import downsample_mean
    from imaxt_pipeline.algorithms.optics import mosaic_geometry
    from imaxt_pipeline.io.ome import BLOCK_LEVELS, pyramid_levels
    from imaxt_pipeline.parallel.fusion import fuse_blocks
    from imaxt_pipeline.steps.params import MosaicParams

    p = params or MosaicParams()
    n_s, n_c, _n_t, h, w = tiles.shape
    step = np.median(np.diff(np.unique(np.round(stage[:, 1]))), axis=0) if cols > 1 else w
    geom = mosaic_geometry(stage, rows=rows, cols=cols, tile_shape=(h, w), overlap=float(1.0 - step / w))
    levels = p.levels or pyramid_levels(geom.shape)
    in_block = min(levels, BLOCK_LEVELS)
    data = [
        np.zeros((n_c, n_s, -(-geom.shape[0] // 2**lv), -(-geom.shape[1] // 2**lv)), np.float32)
        for lv in range(in_block)
    ]
    lazy = []
    for k in range(n_s):

        def write(level: int, region: tuple[int, int, int, int], image: np.ndarray, _w: Any, k: int = k) -> None:
            y0, y1, x0, x1 = region
            data[level][:, k, y0:y1, x0:x1] = image

        def read(i: int, k: int = k) -> np.ndarray:
            return np.asarray(tiles[k, :, i])

        lazy += fuse_blocks(
            read,
            write,
            geom.to_mosaic(positions[k]),
            (h, w),
            geom.shape,
            calibration,
            chunk=p.chunk,
            levels=in_block,
            feather=p.feather,
            n_channels=n_c,
        )
    dask.compute(*lazy, scheduler="synchronous")
    for _ in range(in_block, levels):
        data.append(downsample_mean(data[-1]))
    return MemoryMosaic(data, geom.origin_px, geom.margin)


def section_beads(mosaic: MemoryMosaic, pixel_size_um: float, params: Any = None) -> tuple[pd.DataFrame, int]:
    """The ``beads`` step on every section of ``mosaic``: (bead table with ``slice`` and ``good``, channel).

    The step's pieces with its defaults: bead channel from the scores of up to three sections at
    :func:`...steps.beads.score_level`, one bead plateau over all sections for the thresholds, blockwise
    classical detection and rim fits (:func:`...parallel.registration.find_plane_beads`), :func:`good_beads`.
    """
    import dask

    from imaxt_pipeline.algorithms.registration import good_beads, pick_bead_channel
    from imaxt_pipeline.parallel.registration import channel_scores, find_plane_beads, threshold_levels
    from imaxt_pipeline.steps.beads import bead_spec, score_level
    from imaxt_pipeline.steps.params import BeadsParams

    p = params or BeadsParams()
    img: Any = mosaic  # read through the OmeImage interface
    planes = list(range(mosaic.shape[1]))
    if mosaic.shape[0] == 1:
        channel = 0
    else:
        lazy = channel_scores(
            img, planes[:3], level=score_level(img, pixel_size_um), sigma=1.0, rel=max(p.rel_threshold, 0.5)
        )
        per_plane = dask.compute(*lazy, scheduler="synchronous")
        channel = pick_bead_channel(np.sum(np.asarray(per_plane, np.float64), axis=0))
    levels = dask.compute(
        *threshold_levels(img, planes, channel, level=mosaic.levels - 1, sigma=1.0, nsigma=p.nsigma),
        scheduler="synchronous",
    )
    top = max(lv.top for lv in levels)
    spec = bead_spec(p, pixel_size_um)
    parts = []
    for plane, lv in zip(planes, levels, strict=True):
        lazy_df = find_plane_beads(
            img,
            channel,
            plane,
            spec,
            block=p.block,
            detector="classical",
            nsigma=p.nsigma,
            rel=p.rel_threshold,
            threshold=lv.threshold(p.rel_threshold, peak=top),
        )
        (df,) = dask.compute(lazy_df, scheduler="synchronous")
        df = df.copy()
        df.insert(0, "slice", plane)
        df["good"] = good_beads(
            df, spec, min_snr=p.min_snr, max_chi2_ratio=p.max_chi2_ratio, min_amplitude_ratio=p.min_amplitude_ratio
        )
        df["bead_id"] = -1
        parts.append(df)
    return pd.concat(parts, ignore_index=True), int(channel)


def register_beads(beads: pd.DataFrame, params: Any = None) -> tuple[pd.DataFrame, Any]:
    """The ``register`` step's solve (:func:`...steps.register.register_table`) with its defaults."""
    from imaxt_pipeline.steps.params import RegisterParams
    from imaxt_pipeline.steps.register import register_table

    return register_table(beads, params or RegisterParams())


def true_offsets(
    positions: np.ndarray, true: np.ndarray, drift: np.ndarray, keep: np.ndarray | None = None
) -> np.ndarray:
    """The (S, 2) offsets ``solve_slice_offsets`` should find: ``drift_k - a_k + a_0`` (module docstring).

    ``a_k`` is the mean of true minus stitched positions over the tiles ``keep`` (the solver did not flag;
    all of a section's tiles when it flagged every one).
    """
    pos, tru = np.asarray(positions, np.float64), np.asarray(true, np.float64)
    keep_ = np.ones(pos.shape[:2], bool) if keep is None else np.asarray(keep, bool)
    a = np.array([(tru[k] - pos[k])[keep_[k] if keep_[k].any() else slice(None)].mean(axis=0) for k in range(len(pos))])
    return np.asarray(drift, np.float64) - a + a[0]


@dataclass(frozen=True)
class OffsetScore:
    """Registration error per section after removing the stack's common translation (px)."""

    error: np.ndarray  # (S, 2), NaN where the section has no solved offset
    spread: float  # rms over the solved sections of |error|
    max: float  # largest |error|
    pair: float  # largest |error_j - error_k|: the worst relative offset of two sections


def offset_errors(solved: np.ndarray, truth: np.ndarray) -> OffsetScore:
    """:class:`OffsetScore` of ``solved`` (S, 2; NaN unconstrained) against ``truth`` (S, 2)."""
    e = np.asarray(solved, np.float64) - np.asarray(truth, np.float64)
    ok = np.all(np.isfinite(e), axis=1)
    if ok.sum() < 2:
        return OffsetScore(np.full_like(e, np.nan), math.nan, math.nan, math.nan)
    e = np.where(ok[:, None], e - e[ok].mean(axis=0), np.nan)
    r = np.hypot(e[ok, 0], e[ok, 1])
    d = e[ok][:, None] - e[ok][None]
    return OffsetScore(e, float(np.sqrt(np.mean(r**2))), float(r.max()), float(np.hypot(d[..., 0], d[..., 1]).max()))


@dataclass(frozen=True)
class RegistrationScore:
    """One sample registered from mosaics fused at ``positions``, against the truth.

    ``good`` beads per section, ``tracks``, the ``solved`` and ``truth`` offsets (S, 2; solved NaN where no
    track reaches a section), their :class:`OffsetScore`; ``beads``: the fits against the true beads
    (:class:`BeadView`); ``failure`` says why nothing was solved ("" when solved), ``warnings`` what the
    steps warned, ``seconds`` the time from fusion to offsets; ``ties`` the beads tying each section
    (:func:`...steps.register.tie_counts`, 0 where none), so :attr:`weak` lists what the step reports as
    weakly tied.
    """

    good: list[int]
    tracks: int
    solved: np.ndarray
    truth: np.ndarray
    score: OffsetScore
    beads: BeadView
    failure: str
    warnings: list[str]
    seconds: float
    ties: list[int] = field(default_factory=list)  # whole beads tying each section in the solve
    min_ties: int = 3  # the register step's ``min_tie_beads``: fewer is reported as weakly tied

    @property
    def weak(self) -> list[int]:
        """Solved sections tied by fewer than ``min_ties`` whole beads (the register step's ``weakly_tied``)."""
        solved = np.all(np.isfinite(self.solved), axis=1)
        return [k for k, t in enumerate(self.ties) if solved[k] and t < self.min_ties]


def score_registration(
    tiles: np.ndarray,
    stage: np.ndarray,
    positions: np.ndarray,
    calibration: Any,
    truth: SampleTruth,
    *,
    rows: int,
    cols: int,
    pixel_size_um: float,
    keep: np.ndarray | None = None,
) -> RegistrationScore:
    """Fuse (:func:`fuse_sections`), find beads (:func:`section_beads`), register (:func:`register_beads`) and
    score against :func:`true_offsets` (translation over the tiles ``keep``)."""
    import time
    import warnings

    from imaxt_pipeline.errors import NotEnoughOverlapError
    from imaxt_pipeline.steps.params import RegisterParams

    t0 = time.perf_counter()
    n_s = tiles.shape[0]
    want = true_offsets(positions, truth.true_px, truth.drift_px, keep)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mosaic = fuse_sections(tiles, positions, stage, calibration, rows=rows, cols=cols)
        beads, channel = section_beads(mosaic, pixel_size_um)
        good = [int(beads[beads["slice"] == k]["good"].sum()) for k in range(n_s)]
        solved, failure, tracks, ties = np.full((n_s, 2), np.nan), "", 0, [0] * n_s
        try:
            table, sol = register_beads(beads)
            solved[np.asarray(sol.slices, int)] = sol.offsets
            tracks = int(table["bead_id"].max()) + 1
            ties = _ties(table, n_s)
        except NotEnoughOverlapError as exc:
            failure = str(exc)
    view = bead_view(beads, truth, positions, mosaic, channel, pixel_size_um)
    return RegistrationScore(
        good=good,
        tracks=tracks,
        solved=solved,
        truth=want,
        score=offset_errors(solved, want),
        beads=view,
        failure=failure,
        warnings=sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
        seconds=time.perf_counter() - t0,
        ties=ties,
        min_ties=RegisterParams().min_tie_beads,
    )


def _ties(table: pd.DataFrame, n_sections: int) -> list[int]:
    """Beads tying each section 0..n-1 in the solve (the register step's count)."""
    from imaxt_pipeline.steps.register import tie_counts

    return [int(v) for v in tie_counts(table, np.arange(n_sections))]
