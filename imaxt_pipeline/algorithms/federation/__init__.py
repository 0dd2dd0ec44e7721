"""Federation: slides of other modalities (slide scanner, IMC) registered onto the STPT cube by their beads.

Steps, each numpy in / numpy out: :func:`coarse_orientation` (flip, rotation, scale and shift from
foreground maps ~32x down-sampled), :func:`find_slide_beads` (disc centres on a slide),
:func:`match_beads` (RANSAC over candidate pairs, then :func:`robust_affine`), and
:func:`identify_section` (Gaussian fit to the match counts N(z), with a significance test);
:func:`pose_from_beads` places a small bead field (IMC) on its slide from the beads alone.
Affines are (2, 3) arrays on (x, y) points: :func:`apply_affine`, :func:`compose_affine`,
:func:`invert_affine`, :func:`decompose_affine`, :func:`fit_affine` (with parameter sigmas and exact
leave-one-out residuals).
"""

from __future__ import annotations

from ._affine import (
    AffineFit,
    apply_affine,
    compose_affine,
    decompose_affine,
    fit_affine,
    invert_affine,
    robust_affine,
    similarity_from_pairs,
)
from ._coarse import CoarseMatch, block_mean, coarse_orientation, foreground_fraction
from ._match import BeadMatch, match_beads, pose_from_beads
from ._section import SectionFit, gaussian_profile, identify_section
from ._slide_beads import SLIDE_BEAD_COLUMNS, find_slide_beads

__all__ = [
    "SLIDE_BEAD_COLUMNS",
    "AffineFit",
    "BeadMatch",
    "CoarseMatch",
    "SectionFit",
    "apply_affine",
    "block_mean",
    "coarse_orientation",
    "compose_affine",
    "decompose_affine",
    "find_slide_beads",
    "fit_affine",
    "foreground_fraction",
    "gaussian_profile",
    "identify_section",
    "invert_affine",
    "match_beads",
    "pose_from_beads",
    "robust_affine",
    "similarity_from_pairs",
]
