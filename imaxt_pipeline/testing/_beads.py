"""Bead scenes with truth and the recall / precision / centre-error score of a bead detector."""

from __future__ import annotations

import functools
import tempfile

import numpy as np


def bead_scene(seed=0, shape=(640, 640), n=30, amp=25.0, bg=20.0):
    """Poisson image with beads (some touching) on agarose plus a tissue-like textured region.

    Returns the image (H, W) float32 and the truth beads (N, 3): centre y, x and radius in px.
    """
    from imaxt_pipeline.algorithms.registration import disc_model

    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape, dtype=float)
    img = np.full(shape, bg)
    tissue = np.hypot(yy - shape[0] * 0.5, xx - shape[1] * 0.5) < shape[0] * 0.18
    spots = np.zeros(shape)
    for cy, cx in rng.uniform(0.3, 0.7, (150, 2)) * shape:
        spots += disc_model([cy, cx, 4.0, 1.0, 15.0, 0.0], yy, xx)
    img += tissue * (10.0 + spots)
    truth: list[np.ndarray] = []  # (y, x, radius) per bead
    for _ in range(n):
        r = rng.uniform(3, 45)
        c = rng.uniform(r, np.array(shape) - r)
        if np.hypot(*(c - np.array(shape) / 2)) < shape[0] * 0.18 + r + 5:
            continue
        if any(np.hypot(*(c - t[:2])) < r + t[2] - 2 for t in truth):  # may touch, not overlap much
            continue
        truth.append(np.array([c[0], c[1], r]))
        img += disc_model([c[0], c[1], r, 1.5, amp, 0.0], yy, xx)
    return rng.poisson(img).astype(np.float32), np.array(truth)


def bead_score(df, truth, *, min_radius=5.0, gate=3.0):
    """Recall/precision for beads with radius >= min_radius and the median centre error.

    ``df`` holds the detections (``y_px``, ``x_px``, optionally a boolean ``good``), ``truth`` the
    beads as (N, 3) centre y, x and radius; a detection within ``gate`` px of a truth bead is a hit.

    >>> import pandas as pd
    >>> truth = np.array([[10.0, 10.0, 8.0], [50.0, 50.0, 6.0], [90.0, 20.0, 2.0]])
    >>> found = pd.DataFrame({"y_px": [10.5, 90.0, 70.0], "x_px": [10.0, 20.0, 70.0]})
    >>> [float(v) for v in bead_score(found, truth)]  # the find of the tiny bead is not a false positive
    [0.5, 0.5, 0.25]
    """
    from scipy.spatial import cKDTree

    found = df[df["good"]] if "good" in df else df
    yx = found[["y_px", "x_px"]].to_numpy()
    tree = cKDTree(truth[:, :2])
    dist, idx = tree.query(yx, distance_upper_bound=gate)
    hit = np.isfinite(dist)
    big = truth[:, 2] >= min_radius
    recall = np.isin(np.flatnonzero(big), idx[hit]).mean()
    relevant = ~hit | big[np.minimum(idx, len(truth) - 1)]  # a find of a tiny truth bead is not a false positive
    precision = hit[relevant].mean() if relevant.any() else 1.0
    return recall, precision, float(np.median(dist[hit]))


@functools.lru_cache(maxsize=1)
def synth_planes(seed=0):
    """Seeded synthetic sample (imaxt_pipeline.synth): noisy truth planes (S, C, H, W) and the truth.

    Channel 0 holds ~3000 bright nuclei/mm² (radius 4-6 px) in the tissue and
    the beads, channel 1 the tissue at 300-800 counts and the beads.
    """
    from imaxt_pipeline.synth import SynthParams, synthesize

    truth = synthesize(tempfile.mkdtemp(), SynthParams(slices=3, rows=2, cols=2, seed=seed, tile_shape=(256, 256)))
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(np.clip(truth.clean, 0, None)).astype(np.float32) + rng.normal(0, 5, truth.clean.shape)
    return noisy.astype(np.float32), truth


def synth_score(detect, *, channel=1):
    """Recall, precision (radius >= 5 px) and median centre error of ``detect(plane) -> DataFrame`` on synth."""
    planes, truth = synth_planes()
    found, expected = [], []
    for s in range(planes.shape[0]):
        df = detect(planes[s, channel])
        df["slice"] = s
        found.append(df)
        det = truth.bead_detections[truth.bead_detections["slice"] == s]
        expected.append(det[["y_px", "x_px", "radius_px"]].to_numpy())
    hits = [bead_score(f, e) for f, e in zip(found, expected, strict=True)]
    n_big = [int((e[:, 2] >= 5).sum()) for e in expected]
    assert sum(n_big) >= 8  # enough beads for the fractions to mean something
    recall = sum(h[0] * n for h, n in zip(hits, n_big, strict=True)) / sum(n_big)
    precision = min(h[1] for h in hits)
    return recall, precision, float(np.median([h[2] for h in hits]))
