"""TODO docstring."""

from ._bead_fit import BeadFit, disc_model, fit_bead, fit_beads, radius_outliers
from ._bead_unet import BeadUNet, DEFAULT_WEIGHTS, detect_beads_unet, load_bead_unet, normalise, predict_bead_probability
from ._beads import BeadCandidates, background_stats, bead_channel_scores, bead_mask, bead_threshold, candidates_from_labels, detect_beads, pick_bead_channel, split_beads
from ._slice_offsets import SliceOffsets, apply_offset, canvas_padding, solve_slice_offsets, track_pairs
from ._tracks import Matches, build_tracks, match_points

__all__ = ["BeadCandidates", "BeadFit", "BeadUNet", "DEFAULT_WEIGHTS", "Matches", "SliceOffsets", "apply_offset", "background_stats", "bead_channel_scores", "bead_mask", "bead_threshold", "build_tracks", "candidates_from_labels", "canvas_padding", "detect_beads", "detect_beads_unet", "disc_model", "fit_bead", "fit_beads", "load_bead_unet", "match_points", "normalise", "pick_bead_channel", "predict_bead_probability", "radius_outliers", "solve_slice_offsets", "split_beads", "track_pairs"]
