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


def synth_score(detect, *, channel=1, min_radius=5.0):
    """Recall, precision (radius >= ``min_radius`` px) and median centre error of ``detect(plane) -> DataFrame``."""
    planes, truth = synth_planes()
    found, expected = [], []
    for s in range(planes.shape[0]):
        df = detect(planes[s, channel])
        df["slice"] = s
        found.append(df)
        det = truth.bead_detections[truth.bead_detections["slice"] == s]
        expected.append(det[["y_px", "x_px", "radius_px"]].to_numpy())
    hits = [bead_score(f, e, min_radius=min_radius) for f, e in zip(found, expected, strict=True)]
    n_big = [int((e[:, 2] >= min_radius).sum()) for e in expected]
    assert sum(n_big) >= 8  # enough beads for the fractions to mean something
    recall = sum(h[0] * n for h, n in zip(hits, n_big, strict=True)) / sum(n_big)
    precision = min(h[1] for h in hits)
    return recall, precision, float(np.median([h[2] for h in hits]))


def bead_field(seed=0, pixel_size_um=0.56, shape=(1024, 1024), diameter_um=90.0):
    """One bead-channel section drawn by the simulator's scene renderer under a randomised instrument.

    The scene (tissue blob with nuclei and section-own texture, 90 µm beads in the agarose cut at
    every height) comes from :class:`imaxt_pipeline.synth.Scene` at ``pixel_size_um``; the
    seed also draws the instrument: background level (10-400 counts), read noise (2-8 counts), PSF
    (0.5-1.5 px), bead S/N (4-80, amplitude over the background noise), tissue brightness in the
    bead channel (10-90 % of the bead amplitude, so the relative threshold cuts into some tissue),
    and Poisson + read noise. Returns the image (H, W) float32 and the truth beads (N, 4): centre y,
    x, cut radius in px and S/N.
    """
    from scipy import ndimage as ndi

    from imaxt_pipeline.synth import AGAROSE, Scene, SynthParams

    rng = np.random.default_rng(seed)
    psf = rng.uniform(0.5, 1.5)
    params = SynthParams(
        slices=3,
        rows=1,
        cols=1,
        seed=seed,
        tile_shape=shape,
        pixel_size_um=pixel_size_um,
        slice_thickness_um=50.0,  # beads centred anywhere in 150 µm: the middle section cuts them at every height
        stage_error_px=0.0,
        tissue_fraction=rng.uniform(0.2, 0.4),
        n_beads=200,
        bead_radius_um=(0.47 * diameter_um, 0.53 * diameter_um),
        bead_intensity=0.0,
        psf_sigma_px=0.0,
    )
    scene = Scene(params, rng, pad=0)
    plane = scene.render(1, rng)
    tissue = plane.planes[1] - AGAROSE * (1.0 - scene.bead_cover(1))  # tissue only, beads cut out as holes
    cover = scene.bead_cover(1)
    background, read = rng.uniform(10.0, 400.0), rng.uniform(2.0, 8.0)
    noise = np.sqrt(background + read**2)
    snr = np.exp(rng.uniform(np.log(4.0), np.log(80.0)))
    amp = snr * noise
    tissue_level = rng.uniform(0.1, 0.9) * amp / max(float(np.percentile(tissue[plane.tissue], 99)), 1e-9)
    clean = ndi.gaussian_filter(background + tissue_level * tissue + amp * cover, psf, mode="nearest")
    image = rng.poisson(np.clip(clean, 0, None)) + rng.normal(0.0, read, clean.shape)
    det = plane.detections
    truth = np.column_stack([det["y_px"], det["x_px"], det["radius_px"], np.full(len(det), snr)])
    return image.astype(np.float32), truth


def bead_truth_score(df, truth, shape, *, min_radius, edge=2.0, gate=3.0):
    """FP fraction, recall and centre errors of detections ``df`` against :func:`bead_field` truth.

    Counted cuts: radius >= ``min_radius`` px and the whole disc at least ``edge`` px inside the image.
    A detection (``good`` rows if that column exists) within ``gate`` px of a truth cut is a hit;
    one matching an uncounted cut (smaller, or cut by the image edge) is neither a hit nor a false
    positive. Returns ``(n_counted, n_found, n_false, n_detections, errors)`` with ``errors`` the
    centre error (px) of each hit on a counted cut and the S/N of that cut, shape (n_found, 2).
    """
    from scipy.spatial import cKDTree

    found = df[df["good"]] if "good" in df else df
    yx = found[["y_px", "x_px"]].to_numpy(float).reshape(-1, 2)
    h, w = shape
    y, x, r = truth[:, 0], truth[:, 1], truth[:, 2]
    inside = (y - r - edge >= 0) & (y + r + edge < h) & (x - r - edge >= 0) & (x + r + edge < w)
    counted = inside & (r >= min_radius)
    if len(truth) == 0:
        return 0, 0, len(yx), len(yx), np.zeros((0, 2))
    dist, idx = np.zeros(0), np.zeros(0, int)
    if len(yx):
        dist, idx = cKDTree(truth[:, :2]).query(yx, distance_upper_bound=gate)
    hit = np.isfinite(dist)
    idx = np.minimum(idx, len(truth) - 1)
    false = int((~hit).sum())
    on_counted = hit & counted[idx]
    found_ids = np.unique(idx[on_counted])
    errors = np.column_stack([dist[on_counted], truth[idx[on_counted], 3]])
    return int(counted.sum()), len(found_ids), false, int(len(yx)), errors
