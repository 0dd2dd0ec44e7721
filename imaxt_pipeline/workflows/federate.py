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

A file of several sections (CZI scenes, MCD acquisitions) registers each into its own store
(:func:`register_sections`, :func:`section_store_url`: ``slide.zarr`` -> ``slide-scene1.zarr``).
:func:`refresh_mapping` follows a reference cube re-padded later (sections landing): the mapping
moves by the change of the section's place in the cube, or is marked stale.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..algorithms.federation import BeadMatch, decompose_affine
from ..errors import InputError, StoreError
from ..io.output import OutputStore
from ..io.provenance import utcnow
from ..io.urls import Location
from ._registration import FederationParams, not_found, register_direct, register_via, slide_beads
from ._slide_store import write_slide_store
from ._slides import (
    FEDERATION_TOOL,
    Reference,
    Slide,
    prepare_destination,
    read_reference,
    read_slide,
    section_offsets,
    slide_sections,
)

__all__ = [
    "FEDERATION_VERSION",
    "FederationParams",
    "SectionOutcome",
    "describe_outcome",
    "describe_refresh",
    "refresh_mapping",
    "register_modality",
    "register_sections",
    "section_store_url",
    "sections_error",
]

log = logging.getLogger(__name__)
FEDERATION_VERSION = 1


@dataclass(frozen=True)
class SectionOutcome:
    """One section of a slide file: its scene/ROI (``None``: a file of one section), store, result or error."""

    index: int | None
    out_url: str
    federation: dict[str, Any] | None
    error: InputError | None = None
    what: str = ""
    """``scene`` or ``roi``: what the file calls its sections."""


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
    """Register one slide section onto the STPT cube of ``reference_url``; write ``out_url``; return its attrs.

    Raises
    ------
    InputError
        One line: unreadable slide, a file of several sections and no ``scene``/``roi``, "no partner
        section", "not enough fiducials".
    StoreError
        One line: the reference is not a processed store, the destination holds foreign content.
    """
    slide = read_slide(slide_url, scene=scene, roi=roi, pixel_size_um=pixel_size_um, storage_options=storage_options)
    ref = read_reference(reference_url, storage_options)
    dest = prepare_destination(out_url, slide, _sources(slide_url, reference_url, via), storage_options)
    return _register(slide, ref, dest, via, storage_options, params or FederationParams())


def section_store_url(out_url: str, what: str, index: int) -> str:
    """The store of section ``index`` of a file of several: ``slides/s.zarr`` -> ``slides/s-scene1.zarr``.

    >>> section_store_url("s3://b/slides/s.zarr", "roi", 2)
    's3://b/slides/s-roi2.zarr'
    >>> section_store_url("out/s", "scene", 0)
    'out/s-scene0'
    """
    base = out_url.rstrip("/")
    stem, ext = (base[:-5], ".zarr") if base.endswith(".zarr") else (base, "")
    return f"{stem}-{what}{index}{ext}"


def register_sections(
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
) -> list[SectionOutcome]:
    """Register every section of a slide file (each CZI scene, each MCD acquisition), or the one picked.

    A file of one section, or ``scene``/``roi`` given, writes ``out_url``; otherwise section ``k``
    goes to :func:`section_store_url` ``(out_url, "scene" | "roi", k)``. Every destination is checked
    before any work; a section that fails ("no partner section", "not enough fiducials") is reported in
    its :class:`SectionOutcome` and writes nothing, the others are written.

    Raises
    ------
    InputError, StoreError
        One line, as :func:`register_modality`, for what concerns the whole file (nothing written).
    """
    so = storage_options
    what, n = slide_sections(slide_url, pixel_size_um=pixel_size_um, storage_options=so)
    picked = {"scene": scene, "roi": roi}.get(what)
    if n <= 1 or picked is not None:
        fed = register_modality(
            slide_url, reference_url, out_url, via=via, scene=scene, roi=roi, pixel_size_um=pixel_size_um,
            storage_options=so, params=params,
        )  # fmt: skip
        return [SectionOutcome(picked, out_url, fed, what=what)]
    p = params or FederationParams()
    ref = read_reference(reference_url, so)
    sources = _sources(slide_url, reference_url, via)
    todo = []
    for k in range(n):
        slide = read_slide(slide_url, pixel_size_um=pixel_size_um, storage_options=so, **{what: k})
        url = section_store_url(out_url, what, k)
        todo.append((k, slide, url, prepare_destination(url, slide, sources, so)))
    out = []
    for k, slide, url, dest in todo:
        try:
            out.append(SectionOutcome(k, url, _register(slide, ref, dest, via, so, p), what=what))
        except InputError as exc:
            log.warning("register-modality: %s %s %d: %s", slide_url, what, k, exc)
            out.append(SectionOutcome(k, url, None, exc, what))
    return out


def refresh_mapping(store_url: str, *, storage_options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Check a slide store's mapping against its reference cube as it is now; move it or mark it stale.

    The cube places section ``k`` at its mosaic px + ``pad_before`` - the section's offset (the one
    it was built with, ``imaxt.cube.written``). When the cube is re-created (sections landing, a
    refined registration) only that translation can change: the mapping moves by the difference
    (x, y), the bead table's cube columns with it, and ``refreshed`` records it. A cube that is
    gone, no longer holds the section, or has another pixel size makes the mapping ``stale``
    (``stale_reason`` says why) until ``register-modality`` is run again. Returns ``"current"``,
    ``"moved"`` or ``"stale"`` and the (updated) ``imaxt.federation``.

    Raises
    ------
    StoreError
        One line: not a slide store written by ``register-modality``.
    """
    try:
        store = OutputStore(store_url, storage_options, mode="r")
        owner = store.owner()
        fed = dict(store.imaxt_attrs().get("federation") or {})
    except (OSError, KeyError, ValueError) as exc:
        raise StoreError(f"{store_url}: not a slide store ({type(exc).__name__})") from None
    if owner is None or owner.tool != FEDERATION_TOOL or "affine_px" not in fed:
        raise StoreError(f"{store_url}: not a slide store written by register-modality")
    if fed.get("stale"):
        return "stale", fed
    old = fed["reference_cube"]
    k = int(fed["section"])
    reason, now = _cube_frame(fed["reference"], k, storage_options)
    if reason is None and "pixel_size_um" in old and not np.isclose(now["pixel_size_um"], old["pixel_size_um"]):
        reason = f"the reference cube's pixel size is now {now['pixel_size_um']} um, not {old['pixel_size_um']}"
    store = OutputStore(store_url, storage_options)
    if reason is not None:
        fed.update(stale=True, stale_reason=reason)
        store.update_imaxt_attrs("federation", fed)
        log.warning("register-modality: %s is stale: %s", store_url, reason)
        return "stale", fed
    before = np.asarray(old["pad_before"], np.float64) - np.asarray(old.get("section_offset_px", [0.0, 0.0]))
    after = np.asarray(now["pad_before"], np.float64) - np.asarray(now["section_offset_px"])
    delta_xy = (after - before)[::-1]
    if np.allclose(delta_xy, 0.0, atol=1e-6) and now["shape"] == old["shape"]:
        return "current", fed
    affine = np.asarray(fed["affine_px"], np.float64)
    affine[:, 2] += delta_xy
    history = list(fed.get("refreshed") or [])
    history.append({"at": utcnow(), "delta_px": np.round(delta_xy, 4).tolist(), "from": old, "to": now})
    fed.update(affine_px=np.round(affine, 8).tolist(), reference_cube=now, refreshed=history)
    beads = store.read_table("beads")
    for axis, d in zip("xy", delta_xy, strict=True):
        for col in (f"{axis}_cube_px", f"stpt_{axis}_px"):
            beads[col] = beads[col] + d
    store.write_table("beads", beads)
    store.update_imaxt_attrs("federation", fed)
    log.info("register-modality: %s moved by %s px (x, y) onto the re-made cube", store_url, delta_xy.tolist())
    return "moved", fed


def _cube_frame(reference: str, k: int, so: Any) -> tuple[str | None, dict[str, Any]]:
    """The reference cube's frame of section ``k`` now (as ``reference_cube``), or why there is none."""
    try:
        ref = OutputStore(reference, so, mode="r")
        meta = ref.imaxt_attrs()
        cube_meta = meta.get("cube") or {}
        if not ref.has("cube") or "pad_before" not in cube_meta:
            return f"the reference {reference} has no cube", {}
        cube = ref.open_image("cube")
    except (OSError, KeyError, ValueError) as exc:
        return f"the reference {reference} cannot be read ({type(exc).__name__})", {}
    written = cube_meta.get("written")
    if written is not None and str(k) not in written:
        return f"the reference cube no longer holds section {k}", {}
    n_opt = int((meta.get("acquisition") or {}).get("optical_sections", 1) or 1)
    offsets = section_offsets(meta, max(k + 1, int(cube.shape[1]) // n_opt))
    return None, {
        "shape": [int(v) for v in cube.shape],
        "pad_before": [int(v) for v in cube_meta["pad_before"]],
        "pad_after": [int(v) for v in cube_meta.get("pad_after", [0, 0])],
        "pixel_size_um": float(cube.scale_zyx(0)[2]),
        "section_offset_px": [round(float(v), 4) for v in offsets[k]],
    }


def describe_outcome(slide_url: str, o: SectionOutcome) -> str:
    """One line for a registered section (what ``imaxt register-modality`` prints)."""
    fed = o.federation or {}
    res = fed.get("residual_px") or {}
    part = "" if o.index is None else f" ({o.what} {o.index})"
    return (
        f"{slide_url}{part}: section {fed.get('section')}, {fed.get('matched_beads')} beads, held-out residual "
        f"median {res.get('median', float('nan')):.2f} px (max {res.get('max', float('nan')):.2f}), flip "
        f"{fed.get('flip')}, rotation {fed.get('rotation_deg', float('nan')):.1f} deg -> {o.out_url}"
    )


def describe_refresh(store_url: str, state: str, fed: dict[str, Any]) -> str:
    """One line for :func:`refresh_mapping`'s outcome: stale (why), moved (by how much), or current."""
    if state == "stale":
        return f"{store_url}: stale ({fed.get('stale_reason')}); run register-modality again"
    if state == "moved":
        delta = fed["refreshed"][-1]["delta_px"]
        return f"{store_url}: moved by {delta} px (x, y) onto the re-made cube of {fed['reference']}"
    return f"{store_url}: current (the cube frame of {fed['reference']} is unchanged)"


def sections_error(slide_url: str, outcomes: list[SectionOutcome]) -> InputError | None:
    """One error naming every section that failed (the others were written), or ``None``."""
    failed = [o for o in outcomes if o.error is not None]
    if not failed:
        return None
    parts = "; ".join(f"{o.what} {o.index}: {o.error.problem if o.error else ''}" for o in failed)
    n = f"{len(failed)} of {len(outcomes)}"
    return InputError(slide_url, f"{n} sections not registered, the others written ({parts})")


def _sources(slide_url: str, reference_url: str, via: str | None) -> list[str]:
    return [slide_url, reference_url] + ([via] if via else [])


def _register(
    slide: Slide, ref: Reference, dest: Location, via: str | None, so: Any, p: FederationParams
) -> dict[str, Any]:
    start = utcnow()
    t0 = time.perf_counter()
    slide_url = slide.url
    all_r = np.concatenate([b[:, 2] for b in ref.beads.values() if len(b)]) if ref.beads else np.zeros(0)
    if len(all_r) == 0:
        raise StoreError(f"{ref.url}: the reference bead table is empty")
    slide_b = slide_beads(slide, all_r * ref.pixel_size_um)
    if len(slide_b) < p.min_fiducials:
        raise not_found(slide_url, f"not enough fiducials ({len(slide_b)} beads found, {p.min_fiducials} needed)")
    scale = slide.pixel_size_um / ref.pixel_size_um
    chain: list[str] = []
    if via is None:
        affine, k, counts, _, fit_info = register_direct(slide, slide_b, ref, p, scale, slide_url)
    else:
        affine, k, counts, _, fit_info = register_via(slide, slide_b, ref, p, scale, slide_url, via, so)
        chain = [via]
    m: BeadMatch = fit_info["match"]
    assert m.fit is not None
    if m.n < fit_info.get("min_matches", p.min_fiducials):
        raise not_found(slide_url, f"not enough fiducials ({m.n} beads match section {k}, {p.min_fiducials} needed)")
    flip, rot, _ = decompose_affine(affine)
    loo = m.fit.loo_residual_px
    attrs = {
        "version": FEDERATION_VERSION,
        "reference": ref.url,
        "reference_cube": {
            "shape": ref.cube_shape,
            "pad_before": ref.pad_before,
            "pad_after": ref.pad_after,
            "pixel_size_um": ref.pixel_size_um,
            "section_offset_px": [round(float(v), 4) for v in ref.offsets[k]],
        },
        "section": int(k),
        "affine_px": np.round(affine, 8).tolist(),
        "affine_sigma_px": np.round(m.fit.sigma, 8).tolist(),
        "matched_beads": int(m.n),
        "residual_px": {"median": round(float(np.median(loo)), 4), "max": round(float(np.max(loo)), 4)},
        "flip": bool(flip),
        "rotation_deg": round(float(rot), 4),
        "chain": chain,
        "stale": False,
        "modality": slide.modality,
        "pixel_size_um": slide.pixel_size_um,
        "n_z": [int(c) for c in counts],
        "section_fit": fit_info["section_fit"],
    }
    write_slide_store(dest, slide, slide_b, ref, k, affine, m, counts, fit_info, attrs, start, t0, p)
    log.info(
        "register-modality: %s -> section %d, %d beads, median held-out %.2f px", slide_url, k, m.n, np.median(loo)
    )
    return attrs
