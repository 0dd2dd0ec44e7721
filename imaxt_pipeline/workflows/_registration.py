"""The registration of one slide onto the reference: coarse pose, bead matches against every section, N(z).

:func:`register_direct` matches a slide against every section of the reference (the slice
identification); :func:`register_via` chains an IMC acquisition through its registered Axioscan slide.
Both return the affine (slide px -> cube level-0 px), the section, N(z), the expected counts and
the fit's details; ``imaxt register-modality`` (:mod:`.federate`) writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..algorithms.federation import (
    AffineFit,
    BeadMatch,
    apply_affine,
    coarse_orientation,
    compose_affine,
    find_slide_beads,
    identify_section,
    invert_affine,
    match_beads,
    pose_from_beads,
)
from ..errors import InputError, StoreError
from ._slides import Reference, Slide

__all__ = ["FederationParams", "cube_levels", "register_direct", "register_via", "section_plane", "slide_beads"]


@dataclass(frozen=True)
class FederationParams:
    """Tuning of :func:`register_modality` (defaults for STPT pixels of 1-2 um and 10-50 um beads)."""

    coarse_um: float = 32.0  # coarse pixel of the orientation search (~32 slide pixels at 1 um)
    min_coarse_px: int = 48  # ... but the reference at least this many coarse pixels across
    coarse_sections: int = 5  # reference sections the coarse search tries
    search_px: float = 40.0  # how far (cube px) a bead may lie from its coarse position
    tol_px: float = 3.0  # match tolerance (cube px) of the final pose
    min_fiducials: int = 6  # fewer slide beads (or matches): "not enough fiducials"
    min_recall: float = 0.5  # share of the section's STPT beads in the field the slide must match
    alpha: float = 1e-3  # significance of the N(z) peak
    seed: int = 0


def not_found(where: str, what: str) -> InputError:
    return InputError(where, what)


def slide_beads(slide: Slide, ref_radii_um: np.ndarray) -> np.ndarray:
    """Bead discs (x, y, radius in slide px) of the channel that shows the most bead-sized ones.

    Channels named for beads (``Ho165_Bead``) are tried alone when there are any. A disc counts as
    bead-sized when it is at least as large as most STPT cuts (a slide shows the bead's whole
    silhouette): nuclei in an IMC DNA channel are discs too, and more numerous, but smaller.
    """
    lo = max(1.5, 0.4 * float(np.min(ref_radii_um)) / slide.pixel_size_um)
    hi = 1.3 * float(np.max(ref_radii_um)) / slide.pixel_size_um
    typical = 0.8 * float(np.percentile(ref_radii_um, 10)) / slide.pixel_size_um
    named = [c for c, name in enumerate(slide.channels) if "bead" in name.lower()]
    best, best_score = np.zeros((0, 4)), (-1, -1)
    for ch in named or range(slide.image.shape[0]):
        found = find_slide_beads(slide.image[ch].astype(np.float64), min_radius_px=lo, max_radius_px=hi)
        score = (int(np.sum(found[:, 2] >= typical)), len(found))
        if score > best_score:
            best, best_score = found, score
    return best[:, :3]


def section_plane(ref: Reference, k: int, level: int) -> np.ndarray:
    cube = ref.store.open_image("cube")
    level = min(level, cube.levels - 1)
    plane = np.asarray(cube.read_plane(k * ref.optical_sections, level), np.float64)
    return plane.sum(axis=0)


def _compatible(src_r: np.ndarray, dst_r: np.ndarray, scale: float) -> np.ndarray:
    # the section holds the whole STPT cut: a slide disc is at least as large (1.5 px of slack)
    return np.asarray(dst_r[None, :] <= src_r[:, None] * scale + 1.5)


def _coarse(slide: Slide, ref: Reference, p: FederationParams) -> list[Any]:
    """Coarse poses (both flips) against the reference section whose outline agrees best."""
    img = slide.image.sum(axis=0).astype(np.float64)
    ref_px = ref.pixel_size_um
    short = min(ref.cube_shape[2:]) * ref_px
    coarse_um = min(p.coarse_um, short / p.min_coarse_px)
    level = max(0, int(np.floor(np.log2(max(coarse_um / ref_px, 1.0)))))
    level = min(level, cube_levels(ref) - 1)
    f_ref = max(1, int(round(coarse_um / (ref_px * 2**level))))
    f_slide = max(1, int(round(coarse_um / slide.pixel_size_um)))
    nominal = slide.pixel_size_um / ref_px
    ks = np.unique(np.linspace(0, ref.n_sections - 1, min(p.coarse_sections, ref.n_sections)).round().astype(int))
    planes, origins = zip(*(_section_data(ref, int(k), level) for k in ks), strict=True)
    best = coarse_orientation(img, f_slide, list(planes), f_ref, nominal_scale=nominal * 2**-level)
    # poses map to the cropped level-`level` plane: add its origin, bring them to level 0
    up = np.diag([2.0**level, 2.0**level])
    out = []
    for pose in best:
        t = pose.affine[:, 2] + origins[pose.reference_index]
        aff = np.hstack([up @ pose.affine[:, :2], (up @ t + 0.5 * (2**level - 1))[:, None]])
        out.append((pose, aff))
    return out


def _section_data(ref: Reference, k: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Section ``k``'s plane at ``level`` cropped to where the cube holds its data, and the crop's origin (x, y).

    The cube's padding is empty (zeros): left in, it would be the "background" the foreground maps are
    measured against, and the whole imaged field (agarose included) would look like tissue.
    """
    plane = section_plane(ref, k, level)
    s = 2.0**level
    pad_b, pad_a = np.asarray(ref.pad_before, np.float64), np.asarray(ref.pad_after, np.float64)
    size = np.floor((np.asarray(ref.cube_shape[2:], np.float64) - pad_b - pad_a) / s).astype(int)
    lo = np.rint((pad_b - ref.offsets[k]) / s).astype(int)
    lo = np.clip(lo, 0, np.maximum(np.asarray(plane.shape) - size, 0))
    crop = plane[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1]]
    return crop, lo[::-1].astype(np.float64)


def cube_levels(ref: Reference) -> int:
    return int(ref.store.open_image("cube").levels)


def _match_all(
    slide_b: np.ndarray, ref: Reference, initial: np.ndarray, p: FederationParams, scale: float
) -> list[BeadMatch]:
    out = []
    for k in range(ref.n_sections):
        rb = ref.beads[k]
        comp = _compatible(slide_b[:, 2], rb[:, 2], scale) if len(rb) else None
        out.append(
            match_beads(
                slide_b[:, :2], rb[:, :2], initial, search_px=p.search_px, tol_px=p.tol_px, compatible=comp, seed=p.seed
            )
        )
    return out


def _in_field(xy: np.ndarray, affine: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    """Points (cube px) whose slide position lies inside the slide image (``margin`` slide px inside its edge)."""
    q = apply_affine(invert_affine(affine), xy)
    h, w = shape
    return (q[:, 0] > margin) & (q[:, 0] < w - margin) & (q[:, 1] > margin) & (q[:, 1] < h - margin)


def register_direct(slide: Slide, slide_b: np.ndarray, ref: Reference, p: FederationParams, scale: float, where: str):
    poses = _coarse(slide, ref, p)
    trials = []
    for pose, initial in poses:
        matches = _match_all(slide_b, ref, initial, p, scale)
        trials.append((max(mm.n for mm in matches), matches, pose))
    _, matches, pose = max(trials, key=lambda t: t[0])
    counts = np.array([mm.n for mm in matches])
    expected = np.zeros(len(counts))
    for kk, mm in enumerate(matches):
        if mm.fit is not None and len(ref.beads[kk]):
            expected[kk] = _in_field(
                ref.beads[kk][:, :2], mm.fit.affine, (slide.image.shape[1], slide.image.shape[2]), 2.0 / scale
            ).sum()
    sid = identify_section(counts, expected, min_matches=p.min_fiducials, min_recall=p.min_recall, alpha=p.alpha)
    info: dict[str, Any] = {
        "section_fit": {
            "mu": _f(sid.mu),
            "sigma": _f(sid.sigma),
            "p_value": _f(sid.p_value),
            "coarse_score": round(pose.score, 4),
        },
        "gauss": (sid.amplitude, sid.mu, sid.sigma, sid.background),
    }
    if sid.section is None:
        top = int(np.argmax(counts))
        if counts[top] < p.min_fiducials and len(slide_b) < 2 * p.min_fiducials:
            raise not_found(where, f"not enough fiducials ({len(slide_b)} beads found, at most {counts[top]} match)")
        if slide.modality == "imc":
            # an IMC field is far smaller than a section: too few beads (and no outline) to pick its section
            raise not_found(
                where,
                f"not enough fiducials to place an IMC field directly ({len(slide_b)} beads, at most "
                f"{int(counts[top])} match a section); register its Axioscan slide and pass --via",
            )
        raise not_found(where, f"no partner section ({sid.reason})")
    m = matches[sid.section]
    assert m.fit is not None
    info["match"] = m
    return m.fit.affine, sid.section, counts, expected, info


def register_via(
    slide: Slide, slide_b: np.ndarray, ref: Reference, p: FederationParams, scale: float, where: str, via: str, so: Any
):
    """IMC -> Axioscan by beads, composed with the Axioscan's affine, refined against the STPT section's beads."""
    from ..io.output import OutputStore

    try:
        axio = OutputStore(via, so, mode="r")
        fed = axio.imaxt_attrs().get("federation") or {}
        axio_beads = axio.read_table("beads")
    except (OSError, KeyError, ValueError) as exc:
        raise StoreError(f"{via}: not a registered slide store ({type(exc).__name__})") from None
    if "affine_px" not in fed:
        raise StoreError(f"{via}: not a registered slide store (no imaxt.federation)")
    if fed.get("reference") != ref.url:
        raise StoreError(f"{via}: registered onto {fed.get('reference')!r}, not onto {ref.url!r}")
    k = int(fed["section"])
    axio_px = float(fed["pixel_size_um"])
    to_axio = slide.pixel_size_um / axio_px
    ab = axio_beads[["x_px", "y_px", "radius_px"]].to_numpy(np.float64)
    tol_axio = p.tol_px * ref.pixel_size_um / axio_px
    # IMC on its own slide: known scale, no flip, a small turn; the beads alone place it
    initial_axio, _ = pose_from_beads(slide_b[:, :2], ab[:, :2], scale=to_axio, bin_px=2 * tol_axio)
    m1 = match_beads(slide_b[:, :2], ab[:, :2], initial_axio, search_px=3 * tol_axio, tol_px=tol_axio, seed=p.seed)
    if m1.fit is None or m1.n < p.min_fiducials:
        raise not_found(where, f"not enough fiducials ({m1.n} beads match the slide {via}, {p.min_fiducials} needed)")
    axio_affine = np.asarray(fed["affine_px"], np.float64)
    chained = compose_affine(axio_affine, m1.fit.affine)
    # refined directly against the STPT beads of the section: a shift only (an IMC window holds too few
    # beads, over too small a field, for a better-determined affine than the chain's)
    rb = ref.beads[k]
    tree_xy = rb[:, :2]
    mapped = apply_affine(chained, slide_b[:, :2])
    d2 = np.hypot(mapped[:, None, 0] - tree_xy[None, :, 0], mapped[:, None, 1] - tree_xy[None, :, 1])
    comp = _compatible(slide_b[:, 2], rb[:, 2], scale)
    d2[~comp] = np.inf
    j = np.argmin(d2, axis=1) if len(rb) else np.zeros(len(slide_b), int)
    ok = np.isfinite(d2[np.arange(len(slide_b)), j]) & (d2[np.arange(len(slide_b)), j] < p.tol_px) if len(rb) else j < 0
    pairs = np.column_stack([np.flatnonzero(ok), j[ok]]).astype(np.int64)
    if len(pairs) == 0:
        raise not_found(where, f"not enough fiducials (no bead matches section {k} through {via})")
    delta = tree_xy[pairs[:, 1]] - mapped[pairs[:, 0]]
    n = len(pairs)
    # a shift needs 3 beads to be worth more than the chain; with fewer the chain stands and every
    # direct match is a held-out bead
    shift = delta.mean(axis=0) if n >= 3 else np.zeros(2)
    affine = chained.copy()
    affine[:, 2] += shift
    resid = np.hypot(*(delta - shift).T)
    loo = np.hypot(*(delta - (n * shift - delta) / (n - 1)).T) if n >= 3 else resid
    sigma = np.abs(axio_affine[:, :2]) @ m1.fit.sigma
    if n >= 3:
        sigma[:, 2] = np.hypot(sigma[:, 2], delta.std(axis=0, ddof=1) / np.sqrt(n))
    fit = AffineFit(affine=affine, sigma=sigma, inliers=np.ones(n, bool), residual_px=resid, loo_residual_px=loo)
    counts = np.zeros(ref.n_sections, np.int64)
    counts[k] = n
    info = {
        "section_fit": {"via_section": k, "via_matched_beads": int(m1.n), "shift_px": np.round(shift, 4).tolist()},
        "gauss": None,
        "match": BeadMatch(pairs, fit),
        "min_matches": 1,
    }
    return affine, k, counts, np.zeros(ref.n_sections), info


def _f(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)
