"""The stitch step's use of a calibration file's seam bias (:class:`..algorithms.stitching.SeamCalibration`).

The calibrate step loads the file; the seam bias is for the solve, so the stitch step reads the same file
(the last finished calibrate step's ``calibration_file``) for its seam keys only. The bias holds where the
seams fall on the detector band it was measured on: the same tile shape and an overlap within 1 % of the
tile of the calibrated one. Either way one plain line says what was done (``imaxt.stitch.seam_calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..algorithms.stitching import PairMatch, SeamCalibration, correct_seam_profile, overlap_px
from ..io.calibration_file import read_calibration_file

__all__ = ["SeamUse", "apply_seam_calibration", "calibration_file_url", "load_seam_calibration", "seam_estimate"]


@dataclass(frozen=True)
class SeamUse:
    """The matches the solve gets, its ``seam_sigma`` (None: not applied) and the provenance line."""

    matches: list[PairMatch]
    seam_sigma: tuple[float, float] | None
    line: str


def calibration_file_url(provenance: list[dict[str, Any]]) -> str | None:
    """The ``calibration_file`` of the last finished calibrate step in a store's provenance, if any."""
    for entry in reversed(provenance):
        if entry.get("name") == "calibrate" and entry.get("status") == "finished":
            url = (entry.get("parameters") or {}).get("calibration_file")
            return str(url) if url else None
    return None


def apply_seam_calibration(
    matches: list[PairMatch], seam: SeamCalibration | None, tile_shape: tuple[int, int], *, file_distortion: bool
) -> SeamUse:
    """The matches with the calibrated seam bias taken out where it holds for this acquisition: measured after
    the file's distortion, it holds only when the solve keeps that distortion (``file_distortion``)."""
    if seam is None:
        return SeamUse(matches, None, "no seam calibration in the calibration file: not applied")
    if not file_distortion:
        return SeamUse(
            matches, None, "the distortion is estimated here, not the file's it was measured after: not applied"
        )
    ok, line = seam.applies(overlap_px(matches, tile_shape), tile_shape)
    if not ok:
        return SeamUse(matches, None, line)
    return SeamUse(correct_seam_profile(matches, seam), seam.seam_sigma(), line)


def load_seam_calibration(
    url: str | None, storage_options: dict | None, *, n_channels: int, tile_shape: tuple[int, int]
) -> SeamCalibration | None:
    """The seam calibration a calibration file carries (None without a file or the keys)."""
    if not url:
        return None
    seam = read_calibration_file(url, storage_options, n_channels=n_channels, tile_shape=tile_shape).get("seam_bias")
    return seam if isinstance(seam, SeamCalibration) else None


def seam_estimate(use: SeamUse) -> dict[str, Any] | None:
    """``stitch.estimates.seam_bias`` when the calibration was applied (else None: the solve's own entry)."""
    if use.seam_sigma is None:
        return None
    return {
        "source": "calibration file",
        "sigma_px": {"horizontal_y": float(use.seam_sigma[0]), "vertical_x": float(use.seam_sigma[1])},
    }
