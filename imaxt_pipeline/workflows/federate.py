"""``imaxt register-modality``: a slide-scanner slide or IMC acquisition registered onto the STPT cube.

1. **Coarse pose**: the slide and a few reference sections ~32x down-sampled, foreground maps
   correlated over both flips, every rotation and a scale range
   (:func:`~imaxt_pipeline.algorithms.federation.coarse_orientation`); both flips' best poses are
   kept and the bead matches decide.
2. **Beads**: disc centres on the slide (:func:`find_slide_beads`); radii from the reference's own
   bead radii, converted by the pixel sizes.
3. **Slice identification**: for every reference section, RANSAC bead matches near the coarse pose,
   then a robust affine (:func:`match_beads`; a slide disc must be at least as large as the STPT cut
   it matches, the section holds the whole cut); N(z) is fitted by a Gaussian and tested
   (:func:`identify_section`). An orphan raises "no partner section", a slide with too few beads
   "not enough fiducials": nothing is written.
4. **Affine**: the chosen section's robust fit, its parameter sigmas, residuals of held-out beads
   (exact leave-one-out). IMC with ``via``: IMC -> Axioscan from the slide's beads, composed with
   the slide's affine, then refined directly against the STPT beads.
5. **Store**: the slide image, its bead table, ``qc/federation.png`` and ``imaxt.federation``,
   written into a temporary sibling and moved into place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..algorithms.federation import (
    AffineFit,
    BeadMatch,
    apply_affine,
    coarse_orientation,
    compose_affine,
    decompose_affine,
    find_slide_beads,
    identify_section,
    invert_affine,
    match_beads,
    pose_from_beads,
)
from ..errors import InputError, StoreError
from ..io.ownership import Owner
from ..io.provenance import software_versions, utcnow
from ..qc import federation_figure, to_png
from ._slides import (
    FEDERATION_TOOL,
    Reference,
    Slide,
    beads_table,
    commit_store,
    discard,
    new_store,
    prepare_destination,
    read_reference,
    read_slide,
)

__all__ = ["FEDERATION_VERSION", "FederationParams", "register_modality"]

log = logging.getLogger(__name__)
FEDERATION_VERSION = 1


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


def _nothing(where: str, what: str) -> InputError:
    return InputError(where, what)


def _slide_beads(slide: Slide, ref_radii_um: np.ndarray) -> np.ndarray:
    """Bead discs of the channel that shows the most (x, y, radius in slide px)."""
    lo = max(1.5, 0.4 * float(np.min(ref_radii_um)) / slide.pixel_size_um)
    hi = 1.3 * float(np.max(ref_radii_um)) / slide.pixel_size_um
    best = np.zeros((0, 4))
    for ch in range(slide.image.shape[0]):
        found = find_slide_beads(slide.image[ch].astype(np.float64), min_radius_px=lo, max_radius_px=hi)
        if len(found) > len(best):
            best = found
    return best[:, :3]


def _section_plane(ref: Reference, k: int, level: int) -> np.ndarray:
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
    level = min(level, _levels(ref) - 1)
    f_ref = max(1, int(round(coarse_um / (ref_px * 2**level))))
    f_slide = max(1, int(round(coarse_um / slide.pixel_size_um)))
    nominal = slide.pixel_size_um / ref_px
    ks = np.unique(np.linspace(0, ref.n_sections - 1, min(p.coarse_sections, ref.n_sections)).round().astype(int))
    best: list[Any] | None = None
    for k in ks:
        plane = _section_plane(ref, int(k), level)
        poses = coarse_orientation(img, f_slide, plane, f_ref, nominal_scale=nominal * 2**-level)
        if best is None or poses[0].score > best[0].score:
            best = poses
    assert best is not None
    # poses map to level-`level` px: bring them to level 0
    up = np.diag([2.0**level, 2.0**level])
    out = []
    for pose in best:
        aff = np.hstack([up @ pose.affine[:, :2], (up @ pose.affine[:, 2] + 0.5 * (2**level - 1))[:, None]])
        out.append((pose, aff))
    return out


def _levels(ref: Reference) -> int:
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


def register_modality(
    slide_url: str,
    reference_url: str,
    out_url: str,
    *,
    via: str | None = None,
    scene: int | None = None,
    roi: int | None = None,
    pixel_size_um: float | None = None,
    storage_options: dict[str, Any] | None = None,
    params: FederationParams | None = None,
) -> dict[str, Any]:
    """Register a slide onto the STPT cube of ``reference_url``; write ``out_url``; return ``imaxt.federation``.

    Raises
    ------
    InputError
        One line: unreadable slide, "no partner section", "not enough fiducials".
    StoreError
        One line: the reference is not a processed store, the destination holds foreign content.
    """
    p = params or FederationParams()
    start = utcnow()
    t0 = time.perf_counter()
    slide = read_slide(slide_url, scene=scene, roi=roi, pixel_size_um=pixel_size_um, storage_options=storage_options)
    ref = read_reference(reference_url, storage_options)
    sources = [slide_url, reference_url] + ([via] if via else [])
    dest = prepare_destination(out_url, slide, sources, storage_options)
    all_r = np.concatenate([b[:, 2] for b in ref.beads.values() if len(b)]) if ref.beads else np.zeros(0)
    if len(all_r) == 0:
        raise StoreError(f"{reference_url}: the reference bead table is empty")
    slide_b = _slide_beads(slide, all_r * ref.pixel_size_um)
    if len(slide_b) < p.min_fiducials:
        raise _nothing(slide_url, f"not enough fiducials ({len(slide_b)} beads found, {p.min_fiducials} needed)")
    scale = slide.pixel_size_um / ref.pixel_size_um
    chain: list[str] = []
    if via is None:
        affine, k, counts, expected, fit_info = _register_direct(slide, slide_b, ref, p, scale, slide_url)
    else:
        affine, k, counts, expected, fit_info = _register_via(
            slide, slide_b, ref, p, scale, slide_url, via, storage_options
        )
        chain = [via]
    m: BeadMatch = fit_info["match"]
    assert m.fit is not None
    if m.n < fit_info.get("min_matches", p.min_fiducials):
        raise _nothing(slide_url, f"not enough fiducials ({m.n} beads match section {k}, {p.min_fiducials} needed)")
    flip, rot, _ = decompose_affine(affine)
    loo = m.fit.loo_residual_px
    attrs = {
        "version": FEDERATION_VERSION,
        "reference": reference_url,
        "reference_cube": {"shape": ref.cube_shape, "pad_before": ref.pad_before, "pad_after": ref.pad_after},
        "section": int(k),
        "affine_px": np.round(affine, 8).tolist(),
        "affine_sigma_px": np.round(m.fit.sigma, 8).tolist(),
        "matched_beads": int(m.n),
        "residual_px": {"median": round(float(np.median(loo)), 4), "max": round(float(np.max(loo)), 4)},
        "flip": bool(flip),
        "rotation_deg": round(float(rot), 4),
        "chain": chain,
        "modality": slide.modality,
        "pixel_size_um": slide.pixel_size_um,
        "n_z": [int(c) for c in counts],
        "section_fit": fit_info["section_fit"],
    }
    _write(dest, slide, slide_b, ref, k, affine, m, counts, fit_info, attrs, start, t0, p)
    log.info(
        "register-modality: %s -> section %d, %d beads, median held-out %.2f px", slide_url, k, m.n, np.median(loo)
    )
    return attrs


def _register_direct(slide: Slide, slide_b: np.ndarray, ref: Reference, p: FederationParams, scale: float, where: str):
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
            raise _nothing(where, f"not enough fiducials ({len(slide_b)} beads found, at most {counts[top]} match)")
        raise _nothing(where, f"no partner section ({sid.reason})")
    m = matches[sid.section]
    assert m.fit is not None
    info["match"] = m
    return m.fit.affine, sid.section, counts, expected, info


def _register_via(
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
        raise _nothing(where, f"not enough fiducials ({m1.n} beads match the slide {via}, {p.min_fiducials} needed)")
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
        raise _nothing(where, f"not enough fiducials (no bead matches section {k} through {via})")
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


def _write(
    dest, slide: Slide, slide_b, ref: Reference, k, affine, m: BeadMatch, counts, info, attrs, start, t0, p
) -> None:
    store, tmp = new_store(dest)
    try:
        c, h, w = slide.image.shape
        dtype = "uint16" if slide.modality == "axioscan" and slide.image.max() < 65536 else "float32"
        img = store.create_image(
            "slide",
            channel_names=slide.channels,
            shape_czyx=(c, 1, h, w),
            scale_zyx_um=(1.0, slide.pixel_size_um, slide.pixel_size_um),
            dtype=dtype,
            levels=3,
        )
        img.write_plane(0, slide.image.astype(dtype))
        mapped = apply_affine(affine, slide_b[:, :2])
        rb = ref.beads[k]
        assert m.fit is not None
        store.write_table("beads", beads_table(slide_b, m.pairs, rb, mapped, m.fit.loo_residual_px))
        factor = max(1, int(max(ref.cube_shape[2:]) // 1024))
        level = min(int(np.log2(factor)), _levels(ref) - 1) if factor > 1 else 0
        plane = _section_plane(ref, k, level)
        s = 2.0**level
        fig = federation_figure(
            np.asarray(counts),
            info.get("gauss"),
            k,
            plane,
            rb[:, :2] / s,
            mapped / s,
            m.fit.loo_residual_px * 1.0,
            title=f"{slide.name} -> section {k} of {ref.url}",
        )
        store.write_png("federation", to_png(fig))
        store.update_imaxt_attrs("federation", attrs)
        store.append_provenance(
            {
                "step": "register-modality",
                "status": "done",
                "start": start,
                "end": utcnow(),
                "seconds": round(time.perf_counter() - t0, 3),
                "input": slide.url,
                "reference": ref.url,
                "params": {k_: v for k_, v in p.__dict__.items()},
                "software": software_versions(),
            }
        )
        commit_store(store, tmp, dest, Owner(tool=FEDERATION_TOOL, sample=slide.name, sample_id=slide.identity))
    except BaseException:
        discard(tmp)
        raise
