"""Pairwise registration of neighbouring tiles over their overlap.

Convention: for a pair (reference ``a``, moving ``b``) the *shift* ``s`` is
such that detector pixel ``p`` of ``a`` shows the same scene as pixel
``p - s`` of ``b``; without distortion ``s = P_b - P_a``, the difference of
the tiles' top-left positions. With distortion the local shift varies over
the overlap, so :func:`match_pair` also returns point correspondences along
the overlap (one per block) from which :mod:`._positions` fits tile
positions and the distortion model together.

Steps: masked (confidence-weighted) normalised cross-correlation over all
integer shifts within ``max_shift`` of the stage prediction (FFT, Padfield
2012), then Gauss-Newton minimisation of the weighted intensity residual
``Σ w (a(p) - g b(p - s) - o)^2`` for sub-pixel shift, gain and offset, on
the whole overlap and then block by block (:mod:`._subpixel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import fft as sfft
from scipy import ndimage as ndi

from ._seam_blocks import information, refine_blocks
from ._subpixel import MovingSpline, ShiftEstimate, window_crop

__all__ = ["PairMatch", "adjacent_pairs", "masked_ncc_shift", "match_pair"]

_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PairMatch:
    """Registration of tile ``moving`` against tile ``reference``.

    Attributes
    ----------
    reference, moving : int
        Tile indices (any global numbering the caller chooses).
    expected : (float, float)
        Shift predicted by the stage positions.
    shift : (float, float)
        Measured shift over the whole overlap (equal to ``expected`` when the
        pair failed).
    ncc : float
        Weighted normalised cross-correlation after alignment (quality).
    ok : bool
        Whether the pair carries information (enough signal and correlation).
    points_ref, points_mov : ndarray (K, 2)
        Corresponding (y, x) detector positions in the two tiles.
    point_weights : ndarray (K,)
        Inverse variance (1/px²) of each correspondence.
    information : float
        Texture energy of the overlap: the Fisher information (1/px²) a shift measurement over the
        reference's side of the overlap can carry, ``Σ |∇a|² / σ_noise²`` (NaN when not measured).
        Near zero on empty agarose; it is what the matched shift's precision would be at best.
    flat_samples : ndarray (N, 8) or None
        Block means of both tiles over the seam, for the flat's refinement (rows of
        :data:`...calibration.SEAM_SAMPLE_COLUMNS`), when the task that matched the pair took them.
    """

    reference: int
    moving: int
    expected: tuple[float, float]
    shift: tuple[float, float]
    ncc: float
    ok: bool
    points_ref: _Array = field(default_factory=lambda: np.zeros((0, 2)))
    points_mov: _Array = field(default_factory=lambda: np.zeros((0, 2)))
    point_weights: _Array = field(default_factory=lambda: np.zeros(0))
    information: float = float("nan")
    flat_samples: _Array | None = None

    def __bool__(self) -> bool:
        return self.ok


def adjacent_pairs(rows: int, cols: int) -> list[tuple[int, int]]:
    """4-neighbour pairs ``(a, b)`` of a row-major grid, ``b`` right of or below ``a``."""
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be positive, got {rows}x{cols}")
    out = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                out.append((i, i + 1))
            if r + 1 < rows:
                out.append((i, i + cols))
    return out


def masked_ncc_shift(
    reference_image: npt.ArrayLike,
    moving_image: npt.ArrayLike,
    *,
    reference_mask: npt.ArrayLike,
    moving_mask: npt.ArrayLike,
    max_shift: int,
    min_overlap: float = 0.5,
) -> tuple[tuple[int, int], float]:
    """Integer shift ``d`` maximising the masked NCC of ``ref(p)`` and ``mov(p - d)``.

    Parameters
    ----------
    reference_image, moving_image : ndarray (H, W)
        Same-shape images.
    reference_mask, moving_mask : ndarray (H, W)
        Non-negative weights (0 = ignore).
    max_shift : int
        Only ``|d_y|, |d_x| <= max_shift`` are considered.
    min_overlap : float
        Shifts whose overlapping weight is below this fraction of the best
        possible are ignored (tiny overlaps give spurious peaks).

    Returns
    -------
    shift : (int, int)
    ncc : float
        NCC at the peak (-1 if no admissible shift).

    References
    ----------
    D. Padfield, "Masked object registration in the Fourier domain",
    IEEE Trans. Image Process. 21 (2012) 2706-2718.
    """
    a = np.asarray(reference_image, np.float64)
    b = np.asarray(moving_image, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    ma = np.asarray(reference_mask, np.float64)
    mb = np.asarray(moving_mask, np.float64)
    h, w = a.shape
    shape = (sfft.next_fast_len(h + max_shift + 1), sfft.next_fast_len(w + max_shift + 1))
    fa = {k: sfft.rfft2(v, shape) for k, v in (("m", ma), ("a", ma * a), ("aa", ma * a * a))}
    fb = {k: np.conj(sfft.rfft2(v, shape)) for k, v in (("m", mb), ("b", mb * b), ("bb", mb * b * b))}

    def corr(x: str, y: str) -> _Array:
        full: _Array = sfft.irfft2(fa[x] * fb[y], shape)
        idx_y = np.arange(-max_shift, max_shift + 1) % shape[0]
        idx_x = np.arange(-max_shift, max_shift + 1) % shape[1]
        return full[np.ix_(idx_y, idx_x)]

    n = corr("m", "m")
    sa, sb = corr("a", "m"), corr("m", "b")
    saa, sbb = corr("aa", "m"), corr("m", "bb")
    fab = sfft.irfft2(sfft.rfft2(ma * a, shape) * fb["b"], shape)
    sab = fab[np.ix_(np.arange(-max_shift, max_shift + 1) % shape[0], np.arange(-max_shift, max_shift + 1) % shape[1])]
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.maximum(n, 1e-9)
        num = sab - sa * sb / nn
        den = np.sqrt(np.maximum(saa - sa * sa / nn, 0) * np.maximum(sbb - sb * sb / nn, 0))
        ncc = np.where(den > 1e-12 * max(1.0, float(np.max(den))), num / den, -1.0)
    ncc[n < min_overlap * float(np.max(n))] = -1.0
    k = int(np.argmax(ncc))
    iy, ix = np.unravel_index(k, ncc.shape)
    return (int(iy) - max_shift, int(ix) - max_shift), float(ncc[iy, ix])


def match_pair(
    reference_tile: npt.ArrayLike,
    moving_tile: npt.ArrayLike,
    expected_shift: npt.ArrayLike,
    *,
    reference_weights: npt.ArrayLike | None = None,
    moving_weights: npt.ArrayLike | None = None,
    reference: int = 0,
    moving: int = 1,
    max_shift: int = 15,
    block_size: int | None = None,
    min_ncc: float = 0.5,
    smooth: float = 1.0,
    sigma_floor: float = 0.05,
) -> PairMatch:
    """Register two neighbouring tiles and return point correspondences.

    Parameters
    ----------
    reference_tile, moving_tile : ndarray (H, W)
        Flat-field corrected tiles (sum of channels, say).
    expected_shift : (float, float)
        Stage prediction of the shift (``stage_moving - stage_reference``).
    reference_weights, moving_weights : ndarray (H, W), optional
        Confidence maps (0 on trimmed borders).
    reference, moving : int
        Indices stored in the result.
    max_shift : int
        Search radius around the prediction in px (stage error + distortion).
    block_size : int, optional
        Length of the overlap blocks along the seam that give one
        correspondence each; default 1/16 of the tile (16 px at least).
        Each block's shift averages the cubic distortion over the block,
        which biases the fitted cubic terms by ~(block / tile)**2: with
        32 px blocks on 256 px tiles k came out 5-10 % low, with 16 px
        unbiased (seeds 0-16 of tests/test_stitch_synth.py's samples).
    min_ncc : float
        Pairs (and blocks) whose NCC after alignment is lower carry no
        information (empty agarose, noise) and are marked not ok.
    smooth : float
        Gaussian sigma applied to both tiles before matching (noise).
    sigma_floor : float
        Added in quadrature to each block's uncertainty (interpolation,
        model error) before weights are formed.

    Returns
    -------
    PairMatch
        ``ok`` is False (and ``shift == expected``) when no reliable match exists.
    """
    exp = np.asarray(expected_shift, np.float64)

    def once(radius: int) -> tuple[PairMatch, bool]:
        return _match_pair_once(
            reference_tile,
            moving_tile,
            exp,
            reference_weights,
            moving_weights,
            reference,
            moving,
            radius,
            block_size=block_size,
            min_ncc=min_ncc,
            smooth=smooth,
            sigma_floor=sigma_floor,
        )

    out, at_edge = once(max_shift)
    # A correlation peak on the border of the search window means the stage (or the distortion) was
    # further off than max_shift: search a wider window (up to 4x) rather than keep a wrong peak.
    limit = 4 * max_shift
    while at_edge and max_shift < limit:
        max_shift = min(2 * max_shift, limit)
        out, at_edge = once(max_shift)
    return out


def _match_pair_once(
    reference_tile: npt.ArrayLike,
    moving_tile: npt.ArrayLike,
    exp: _Array,
    reference_weights: npt.ArrayLike | None,
    moving_weights: npt.ArrayLike | None,
    reference: int,
    moving: int,
    max_shift: int,
    *,
    block_size: int | None,
    min_ncc: float,
    smooth: float,
    sigma_floor: float,
) -> tuple[PairMatch, bool]:
    """:func:`match_pair` with one search radius; also whether the integer peak lay on its border."""
    expected = (float(exp[0]), float(exp[1]))
    e = np.rint(expected).astype(int)
    # Work on the strips that can overlap (plus the search radius and the smoothing support):
    # a seam is ~10 % of a tile, so this is most of the speed.
    margin = max_shift + int(np.ceil(4 * smooth)) + 8
    ha, wa_ = np.shape(reference_tile)
    hb, wb_ = np.shape(moving_tile)
    ya = (max(0, e[0] - margin), min(ha, hb + e[0] + margin))
    xa = (max(0, e[1] - margin), min(wa_, wb_ + e[1] + margin))
    yb = (max(0, -e[0] - margin), min(hb, ha - e[0] + margin))
    xb = (max(0, -e[1] - margin), min(wb_, wa_ - e[1] + margin))
    oa, ob = np.array([ya[0], xa[0]]), np.array([yb[0], xb[0]])

    def strip(
        tile: npt.ArrayLike, weights: npt.ArrayLike | None, ys: tuple[int, int], xs: tuple[int, int]
    ) -> tuple[_Array, _Array]:
        img = np.asarray(np.asarray(tile)[ys[0] : ys[1], xs[0] : xs[1]], np.float64)
        wts = (
            np.ones_like(img)
            if weights is None
            else np.asarray(np.asarray(weights)[ys[0] : ys[1], xs[0] : xs[1]], np.float64)
        )
        return (ndi.gaussian_filter(img, smooth) if smooth > 0 else img), wts

    a, wa = strip(reference_tile, reference_weights, ya, xa)
    b, wb = strip(moving_tile, moving_weights, yb, xb)
    info = information(np.asarray(reference_tile)[ya[0] : ya[1], xa[0] : xa[1]], a, wa, smooth)
    to_strips = ob - oa  # shift in strip coordinates = shift - oa + ob
    block_size = block_size or max(16, min(ha, wa_) // 16)
    m = _match_strips(
        a,
        b,
        np.asarray(expected) + to_strips,
        wa,
        wb,
        max_shift=max_shift,
        block_size=block_size,
        min_ncc=min_ncc,
        sigma_floor=sigma_floor,
    )
    edge = m is not None and m.at_edge
    if m is None or m.points is None:
        return PairMatch(
            reference, moving, expected, expected, -1.0 if m is None else m.ncc, False, information=info
        ), edge
    pref, pmov, pw = m.points
    shift = np.asarray(m.shift) - to_strips
    sh = (float(shift[0]), float(shift[1]))
    return PairMatch(reference, moving, expected, sh, m.ncc, True, pref + oa, pmov + ob, pw, info), edge


@dataclass(frozen=True)
class _StripMatch:
    """What :func:`_match_strips` found: the NCC, and for a good match the shift and the correspondences."""

    ncc: float
    shift: tuple[float, float] = (0.0, 0.0)
    points: tuple[_Array, _Array, _Array] | None = None  # points in a, points in b, weights; None: not ok
    at_edge: bool = False  # the integer peak lay on the border of the search window


def _match_strips(
    a: _Array,
    b: _Array,
    expected: _Array,
    wa: _Array,
    wb: _Array,
    *,
    max_shift: int,
    block_size: int,
    min_ncc: float,
    sigma_floor: float,
) -> _StripMatch | None:
    """:func:`match_pair` on smoothed strips; None when the strips cannot overlap."""
    e = np.rint(expected).astype(int)
    h, w = a.shape
    hb, wb_ = b.shape
    # Reference box = predicted overlap grown by max_shift, clipped to the tile.
    y0, y1 = max(0, e[0] - max_shift), min(h, hb + e[0] + max_shift)
    x0, x1 = max(0, e[1] - max_shift), min(w, wb_ + e[1] + max_shift)
    if y1 - y0 < 8 or x1 - x0 < 8:
        return None
    box = (slice(y0, y1), slice(x0, x1))
    ca, cwa = a[box], wa[box]
    win = (y0 - e[0], y1 - e[0], x0 - e[1], x1 - e[1])
    cb, cwb = window_crop(b, *win), window_crop(wb, *win)
    d, ncc0, on_border = _integer_peak(ca, cb, cwa, cwb, max_shift)
    # (on empty agarose the peak lands anywhere: a wider search is worth it only with some correlation)
    edge = on_border and ncc0 > 0.5 * min_ncc
    if ncc0 < min_ncc:
        return _StripMatch(ncc0, at_edge=edge)
    s0 = (float(e[0] + d[0]), float(e[1] + d[1]))
    m = max(max_shift, 6) + 4
    mov = MovingSpline(b, wb, (-m, hb + m, -m, wb_ + m))  # one spline serves every fit below

    def fit(region: tuple[slice, slice], start: tuple[float, float], max_step: float) -> ShiftEstimate:
        return mov.refine(a, wa, [region], start, max_step=max_step, tol=1e-2)[0]

    # The integer NCC peak can sit a few px off when one object (a bead) dominates the overlap:
    # allow the refinement to travel, and fall back to the stage prediction as a start.
    shape_a, shape_b = (int(a.shape[0]), int(a.shape[1])), (int(b.shape[0]), int(b.shape[1]))
    overall = fit(_overlap_box(shape_a, shape_b, s0), s0, 6.0)
    usable = bool(overall)
    if not usable:
        creeping = overall if _still_creeping(overall, s0, min_ncc) else None
        start = (float(expected[0]), float(expected[1]))
        overall = fit(_overlap_box(shape_a, shape_b, start), start, float(max_shift))
        usable = bool(overall) and overall.ncc >= min_ncc
        if not usable and creeping is not None:  # only where the restart finds nothing
            overall, usable = creeping, True
    if not usable or overall.ncc < min_ncc:
        return _StripMatch(max(ncc0, overall.ncc), at_edge=edge)
    pref: list[tuple[float, float]] = []
    pmov: list[tuple[float, float]] = []
    pw: list[float] = []
    box = _overlap_box(shape_a, shape_b, overall.shift)
    # A grid of blocks over the overlap (long seams: one row of blocks; wide overlaps: several),
    # each small enough that the distortion is nearly linear across it.
    edges = [
        np.linspace(sl.start, sl.stop, max(1, int(round((sl.stop - sl.start) / block_size))) + 1).astype(int)
        for sl in box
    ]
    regions = [
        (slice(y0, y1), slice(x0, x1))
        for y0, y1 in zip(edges[0][:-1], edges[0][1:], strict=True)
        for x0, x1 in zip(edges[1][:-1], edges[1][1:], strict=True)
    ]
    for est in refine_blocks(mov, a, wa, box, regions, overall.shift, max_shift, min_ncc):
        if not est or est.ncc < min_ncc:
            continue
        cy, cx = est.centroid
        var = max(est.sigma) ** 2 + sigma_floor**2
        pref.append((cy, cx))
        pmov.append((cy - est.shift[0], cx - est.shift[1]))
        pw.append(1.0 / var)
    if not pref:
        return _StripMatch(overall.ncc, at_edge=edge)
    return _StripMatch(overall.ncc, overall.shift, (np.array(pref), np.array(pmov), np.array(pw)), edge)


#: A whole-overlap fit that has not converged is kept only this close (px) to the integer NCC peak.
_CREEP_PX = 1.0


def _still_creeping(est: ShiftEstimate, peak: tuple[float, float], min_ncc: float) -> bool:
    """Whether a whole-overlap fit that did not converge is still a good start for the blocks.

    Where the distortion moves a long seam by px from end to end, no one shift fits it and the Gauss-Newton
    hovers about the best one, next to the integer NCC peak, past its iterations. Restarting from the stage
    then lost such pairs: a 2 x 2 grid of 1536 px tiles with 22 px of corner distortion and a 56 px overlap
    (fresh draw 1001) kept one pair of four (NCC 0.79, the fit 0.5 px from the peak). A fit still sliding
    px away is no such hover: on draw 80 (10 x 8 tiles of 256 px, beads, stray light) dozens of pairs slid
    1.5-2.5 px, and kept as starts they gave biased matches (TS median 1.2 px, 47 tiles beyond 3 sigma).
    So: within :data:`_CREEP_PX` of the peak, a finite sigma and an NCC of ``min_ncc``; and only where the
    restart from the stage finds nothing.
    """
    return (
        est.ncc >= min_ncc
        and bool(np.all(np.isfinite(est.sigma)))
        and float(np.max(np.abs(np.subtract(est.shift, peak)))) <= _CREEP_PX
    )


def _integer_peak(
    ca: _Array, cb: _Array, cwa: _Array, cwb: _Array, max_shift: int
) -> tuple[tuple[int, int], float, bool]:
    """Integer shift of the masked NCC peak, its NCC, and whether it lay on the search window's border.

    Boxes of 48 px and more a side are searched at half resolution (2 x 2 means, radius halved): a
    quarter of the pixels and a quarter of the search window, and the peak, good to a pixel or so, only
    starts the sub-pixel fit (which travels up to 6 px). Final acceptance is the full-resolution fit's
    NCC, never this one.
    """
    if min(ca.shape) >= 48 and max_shift >= 4:
        r = -(-max_shift // 2)
        (dy, dx), ncc = masked_ncc_shift(
            _half(ca), _half(cb), reference_mask=_half(cwa), moving_mask=_half(cwb), max_shift=r
        )
        return (2 * dy, 2 * dx), ncc, max(abs(dy), abs(dx)) >= r
    d, ncc = masked_ncc_shift(ca, cb, reference_mask=cwa, moving_mask=cwb, max_shift=max_shift)
    return d, ncc, max(abs(d[0]), abs(d[1])) >= max_shift


def _half(img: _Array) -> _Array:
    """2 x 2 block means (an odd last row or column dropped)."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    out: _Array = img[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return out


def _overlap_box(
    shape_a: tuple[int, int], shape_b: tuple[int, int], shift: tuple[float, float], inset: int = 2
) -> tuple[slice, slice]:
    """Pixels ``p`` of a whose partner ``p - shift`` lies inside b (minus an inset)."""
    sy, sx = shift
    y0 = int(np.ceil(max(0.0, sy) + inset))
    y1 = int(np.floor(min(shape_a[0], shape_b[0] + sy) - inset))
    x0 = int(np.ceil(max(0.0, sx) + inset))
    x1 = int(np.floor(min(shape_a[1], shape_b[1] + sx) - inset))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))
