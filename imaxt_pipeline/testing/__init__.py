"""Test support shipped with the package: synthetic raw samples, grids, an S3 endpoint, schema checks.

Every name used by more than one test module lives here (test modules never import each other):

* :func:`processed_sample` / :func:`uploaded_sample`: the synth -> upload -> run fixture of the
  end-to-end tests (:class:`Sample` holds the paths and the truth);
* :func:`only_steps`: config overrides that switch on exactly the named steps;
* tile grids and stitching scores: :func:`one_slice_grid`, :func:`grid_tiles`,
  :func:`position_errors`, :func:`band_error`; random pair-match grids scoring the stage-placed sigma:
  :func:`stage_sigma_scores`;
* beads: :func:`bead_scene`, :func:`bead_score`, :func:`synth_planes`, :func:`synth_score`;
* slice registration after stitching a drawn sample, against its truth: :func:`score_registration`
  (:class:`RegistrationScore`), :func:`drawn_truth`, :func:`capture_stitch`, :func:`true_offsets`;
* segmentation data: :func:`two_channel_sample`, :func:`synth_plane`;
* a raw-layout writer independent of the simulator: :func:`write_raw_sample`, :func:`rewrite_csv`;
* coverslip grids of real nuclei texture and a peak-RSS sampler: :func:`write_coverslip_grid`, :class:`PeakRss`.

The S3 endpoint (``imaxt_pipeline.testing._s3``, a pytest fixture) and the Kubernetes schema checks
(``imaxt_pipeline.testing._k8s``, which need the ``k8s`` extra) are imported from their modules.

Truth comes from :mod:`imaxt_pipeline.synth` only, never from ``imaxt_pipeline.training``.
"""

from __future__ import annotations

from ._beads import bead_scene, bead_score, synth_planes, synth_score
from ._catalogue import blockwise_catalogue
from ._coverslip import PeakRss, write_coverslip_grid
from ._grids import band_error, grid_tiles, one_slice_grid, position_errors
from ._pipeline import Sample, processed_sample, uploaded_sample
from ._raw import rewrite_csv, write_raw_sample
from ._segdata import synth_plane, two_channel_sample
from ._stage_grids import StageSigmaScores, stage_sigma_scores
from ._steps import only_steps
from ._sweep_registration import RegistrationScore, capture_stitch, drawn_truth, score_registration, true_offsets

__all__ = [
    "PeakRss",
    "RegistrationScore",
    "Sample",
    "StageSigmaScores",
    "band_error",
    "bead_scene",
    "bead_score",
    "blockwise_catalogue",
    "capture_stitch",
    "drawn_truth",
    "grid_tiles",
    "one_slice_grid",
    "only_steps",
    "position_errors",
    "processed_sample",
    "rewrite_csv",
    "score_registration",
    "stage_sigma_scores",
    "synth_plane",
    "synth_planes",
    "synth_score",
    "true_offsets",
    "two_channel_sample",
    "uploaded_sample",
    "write_coverslip_grid",
    "write_raw_sample",
]
