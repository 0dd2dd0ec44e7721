"""Register slices with the beads: tracks, sparse least squares, offsets, QC.

Uses every slice present in the ``beads`` table, so the solution is refined
as slices arrive. Writes ``imaxt.register.slice_offsets_px`` (one ``[dy, dx]``
per slice from 0 to the last slice present; slices that no track connects
are interpolated from their neighbours, or set to zero, and listed in
``register.unconstrained`` with a :class:`~imaxt_pipeline.errors.DataWarning`;
an empty bead table gives zero offsets for every slice), the bead table with ``bead_id`` filled in, and
``qc/register.png`` (offsets with 1-sigma bands and the bead radius
histogram).

Fits whose disc the data's edge cuts (``rim_valid`` < 1) lean inwards: they tie nothing in
the count below, and ``edge_sigma_px`` (default 0: off) gives them a centring error of at
least that for half the rim off the data, in proportion to the part off. A slice tied to the
others by fewer than ``min_tie_beads`` whole good beads keeps its offset but is listed in
``register.weakly_tied`` (and the step's ``weakly_tied`` metric) with a logged warning saying
so: one or two fits cannot be checked against each other, a wrong one moves the slice unseen.
When no track reaches slice 0, the slices the tracks do tie together are solved relative to the
largest group of them and slice 0 is listed as unconstrained.

Samples without beads (``beads: false`` in the acquisition, or no bead found)
get zero offsets with every slice but 0 flagged unconstrained, and one warning
line; a single-section sample (a coverslip) has nothing to register: the step
writes its one zero offset and warns.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataWarning, NotEnoughOverlapError
from ..io import results
from ..qc import register_figure, to_png
from ._base import StepContext, StepResult
from ._channels import has_beads
from .params import BeadsParams
from .params import RegisterParams as Params

__all__ = ["Params", "fill_offsets", "n_slices", "register_table", "run", "tie_counts"]


def register_table(
    df: pd.DataFrame, params: Params, *, size_tolerance: float | None = None
) -> tuple[pd.DataFrame, Any]:
    """Flag radius outliers, build tracks and solve; returns (table, SliceOffsets).

    ``size_tolerance`` (the beads' relative size spread, ``beads.bead_size_tolerance``, default its
    default) is the least relative spread of honest radii the outlier test allows.
    """
    from ..algorithms.registration import build_tracks, radius_outliers, solve_slice_offsets

    if size_tolerance is None:
        size_tolerance = BeadsParams().bead_size_tolerance

    if not len(df):
        raise NotEnoughOverlapError("the bead table is empty; cannot register slices")
    df = df.copy()
    good = df["good"].to_numpy(bool)
    outlier = np.zeros(len(df), bool)
    outlier[good] = radius_outliers(
        df["radius_px"].to_numpy(float)[good], nsigma=params.radius_nsigma, rel_floor=size_tolerance
    )
    df["radius_outlier"] = outlier
    use = np.flatnonzero(good & ~outlier)
    ids = np.full(len(df), -1, int)
    yx = df[["y_px", "x_px"]].to_numpy(float)
    ids[use] = build_tracks(
        df["slice"].to_numpy(int)[use],
        yx[use],
        radius=params.match_radius_px,
        max_gap=params.max_gap,
        min_length=params.min_track,
    )
    df["bead_id"] = ids
    sigma = np.array(df[["y_err", "x_err"]].to_numpy(float))  # a copy: pandas may hand out a read-only view
    # a fit the data's edge cuts leans inwards, the more the more of its rim is off the data; edge_sigma_px (for half
    # the rim off) weighs it so. Off by default: the same bead is cut alike in neighbouring sections, so the bias
    # mostly cancels in the offsets (the demo and the sweep register better with the cut fits at full weight),
    # a cut fit that disagrees with >= min_tie_beads whole ones is clipped, and fewer whole ones are reported.
    cut = _cut_by_edge(df)
    off_data = 1.0 - df["rim_valid"].to_numpy(float)[cut] if cut.any() else np.zeros(0)
    sigma[cut] = np.maximum(sigma[cut], (2.0 * params.edge_sigma_px * off_data)[:, None])
    sol = solve_slice_offsets(
        df["slice"].to_numpy(int), yx, ids, sigma=sigma, clip=params.clip, max_iter=params.max_iter
    )
    df["inlier"] = sol.inlier
    df["resid_y"], df["resid_x"] = sol.residuals[:, 0], sol.residuals[:, 1]
    return df, sol


def _cut_by_edge(df: pd.DataFrame) -> np.ndarray:
    """Rows whose fitted disc the data's edge cuts (``rim_valid`` < 1; tables without the column: none)."""
    if "rim_valid" not in df:
        return np.zeros(len(df), bool)
    cut: np.ndarray = df["rim_valid"].to_numpy(float) < 1.0  # NaN (rows of older tables) compares False
    return cut


def tie_counts(df: pd.DataFrame, slices: np.ndarray) -> np.ndarray:
    """Whole beads (tracks) tying each of ``slices`` to the others in the final solve: the tracks of its inlier
    detections whose disc the data hold whole (a cut one's centre is biased, it ties nothing for sure)."""
    used = df[df["inlier"].to_numpy(bool) & (df["bead_id"].to_numpy(int) >= 0) & ~_cut_by_edge(df)]
    per = used.groupby("slice")["bead_id"].nunique()
    return np.array([int(per.get(int(s), 0)) for s in slices], int)


def fill_offsets(
    slices: np.ndarray, offsets: np.ndarray, errors: np.ndarray, n: int, *, mode: str = "interpolate"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets for slices 0..n-1: solved ones as they are, others interpolated or zero (error NaN).

    Returns ``(offsets, errors, missing)``; ``missing`` lists the slices
    without a solved offset (interpolation holds the end values outside the
    solved range; with no solved slice at all, or ``mode="zero"``, they get 0).
    """
    full = np.full((n, 2), np.nan)
    err = np.full((n, 2), np.nan)
    slices = np.asarray(slices, int)
    inside = slices < n
    full[slices[inside]], err[slices[inside]] = np.asarray(offsets)[inside], np.asarray(errors)[inside]
    known = np.all(np.isfinite(full), axis=1)
    missing = np.flatnonzero(~known)
    if known.any() and len(missing) and mode == "interpolate":
        idx = np.flatnonzero(known)
        for ax in range(2):
            full[missing, ax] = np.interp(missing, idx, full[idx, ax])
    else:
        full[missing] = 0.0
    return full, err, missing


def n_slices(ctx: StepContext, df: pd.DataFrame) -> int:
    """Slices to report: up to the last one in the table, processed now or done earlier."""
    present = df["slice"].to_numpy(int).tolist() if len(df) else []
    done = results.slices_done(ctx.output)
    seen = [int(s) for s in (*present, *done, *ctx.slices)]
    return max(seen) + 1 if seen else 0


def _warn(ctx: StepContext, message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)
    ctx.log.warning(message)


def _single_section(ctx: StepContext) -> StepResult:
    """One section (a coverslip): nothing to register; its offset is 0 by definition."""
    _warn(ctx, "register: the sample has one section; nothing to register (slice 0 is the reference)")
    results.write_slice_offsets(ctx.output, np.zeros((1, 2)), np.zeros((1, 2)), unconstrained=[], chi2=[None, None])
    return StepResult(
        outputs=["attrs:imaxt.register"],
        metrics={"skipped": "one section", "slices": 1, "tracks": 0, "unconstrained": [], "chi2": [None, None]},
    )


def run(ctx: StepContext, params: Params) -> StepResult:
    from ..algorithms.registration import BEAD_COLUMNS

    acq = getattr(ctx.raw, "acquisition", None)
    if acq is not None and acq.slices == 1:
        return _single_section(ctx)
    df = results.read_table_or_none(ctx.output, results.BEADS)
    beadless = acq is not None and not has_beads(acq)
    if df is None and beadless:
        df = pd.DataFrame(columns=["slice", *BEAD_COLUMNS, "good", "bead_id"])
    if df is None:
        raise FileNotFoundError(
            f"{ctx.output.url}: {results.table_path(results.BEADS)} missing; run the beads step first"
        )
    n = n_slices(ctx, df)
    reason = ""
    weak: dict[int, int] = {}
    solved = False
    try:
        if beadless:
            raise NotEnoughOverlapError("the sample has no beads (acquisition beads: false)")
        tol = ctx.output.imaxt_attrs().get("beads", {}).get("size_tolerance")
        df, sol = register_table(df, params, size_tolerance=None if tol is None else float(tol))
        offsets, errors, missing = fill_offsets(sol.slices, sol.offsets, sol.errors, n, mode=params.unconstrained)
        chi2 = sol.chi2.tolist()
        solved = True
        ties = tie_counts(df, sol.slices)
        weak = {
            int(s): int(t)
            for s, t, ok in zip(sol.slices, ties, sol.constrained, strict=True)
            if ok and t < params.min_tie_beads
        }
    except NotEnoughOverlapError as exc:
        reason = f" ({exc})"
        for col, value in (("bead_id", -1), ("radius_outlier", False), ("inlier", False)):
            df[col] = value
        df["resid_y"], df["resid_x"] = np.nan, np.nan
        offsets, errors, missing = np.zeros((n, 2)), np.full((n, 2), np.nan), np.arange(n)
        chi2 = [None, None]
    # slice 0 is the reference by definition, unless the solve had to fix another slice (no track reaches 0)
    unconstrained = [int(m) for m in missing if m != 0 or solved]
    if unconstrained:
        how = "set to 0" if params.unconstrained == "zero" or len(unconstrained) >= n - 1 else "interpolated"
        _warn(ctx, f"register: no bead track constrains slices {unconstrained}; their offsets are {how}{reason}")
    elif reason:
        ctx.log.warning("register: %s; offsets set to zero", reason.strip(" ()"))
    if weak:  # logged and recorded, not a DataWarning: the offsets are solved, their support is thin
        ties_txt = ", ".join(f"{s}: {t}" for s, t in weak.items())
        ctx.log.warning(
            "register: slices %s are tied to the others by fewer than %d good beads the data hold whole "
            "(slice: beads %s); their offsets rest on those fits (or on beads the data's edge cuts, "
            "whose centres lean inwards) and cannot be checked",
            list(weak),
            params.min_tie_beads,
            ties_txt,
        )
    outputs = [ctx.output.write_table(results.BEADS, df)]
    results.write_slice_offsets(ctx.output, offsets, errors, unconstrained=unconstrained, chi2=chi2, weakly_tied=weak)
    if params.qc and n:
        radii = df["radius_px"].to_numpy(float) if len(df) else np.zeros(0)
        outputs.append(ctx.output.write_png("register", to_png(register_figure(offsets, errors, radii))))
    n_tracks = int(df["bead_id"].max()) + 1 if len(df) else 0
    metrics = {
        "slices": n,
        "tracks": n_tracks,
        "unconstrained": unconstrained,
        "weakly_tied": list(weak),
        "chi2": chi2,
        "median_err_px": float(np.nanmedian(errors[1:])) if n > 1 and np.isfinite(errors[1:]).any() else None,
    }
    ctx.log.info("register: %d slices, %d tracks, chi2 %s", n, n_tracks, chi2)
    return StepResult(inputs=[results.table_path(results.BEADS)], outputs=outputs, metrics=metrics)
