"""Writing a registered slide's store: the image, its bead table, the QC figure and ``imaxt.federation``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..algorithms.federation import BeadMatch, apply_affine, block_mean
from ..io.ownership import Owner
from ..io.provenance import software_versions, utcnow
from ..io.urls import Location
from ..qc import federation_figure, to_png
from ._registration import FederationParams, cube_levels, section_plane
from ._slides import FEDERATION_TOOL, Reference, Slide, beads_table, commit_store, discard, new_store

__all__ = ["write_slide_store"]


def write_slide_store(
    dest: Location,
    slide: Slide,
    slide_b: np.ndarray,
    ref: Reference,
    k: int,
    affine: np.ndarray,
    m: BeadMatch,
    counts: np.ndarray,
    info: dict[str, Any],
    attrs: dict[str, Any],
    start: str,
    t0: float,
    p: FederationParams,
) -> None:
    """Write the slide store into a temporary sibling of ``dest``, then move it into place (or leave nothing)."""
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
        # the panel is ~500 px wide: a plane of at most ~1000 px, then block means down to ~500
        factor = max(1, int(max(ref.cube_shape[2:]) // 1024))
        level = min(int(np.log2(factor)), cube_levels(ref) - 1) if factor > 1 else 0
        plane = section_plane(ref, k, level)
        shrink = max(1, int(max(plane.shape) // 500))
        plane = block_mean(plane, shrink)
        s = 2.0**level * shrink
        fig = federation_figure(
            np.asarray(counts),
            info.get("gauss"),
            k,
            plane,
            rb[:, :2],
            mapped,
            m.fit.loo_residual_px * 1.0,
            title=f"{slide.name} -> section {k} of {ref.url}",
            image_scale=s,
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
