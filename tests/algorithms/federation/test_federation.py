"""Federation kernels: affine fits, section identification, and the slide -> STPT chain on synthetic truth."""

from __future__ import annotations

import numpy as np
import pytest

from imaxt_pipeline.algorithms.federation import (
    apply_affine,
    coarse_orientation,
    compose_affine,
    decompose_affine,
    find_slide_beads,
    fit_affine,
    identify_section,
    invert_affine,
    match_beads,
    robust_affine,
    similarity_from_pairs,
)


def _random_affine(rng, flip):
    t = rng.uniform(-np.pi, np.pi)
    m = 0.6 * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.array([[1.01, 0.005], [0, 1]])
    if flip:
        m = m @ np.diag([-1.0, 1.0])
    return np.hstack([m, rng.uniform(-50, 50, (2, 1))]), np.degrees(t)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_affine_recovers_parameters_within_their_sigmas(seed):
    rng = np.random.default_rng(seed)
    a, _ = _random_affine(rng, flip=bool(seed % 2))
    src = rng.uniform(0, 1000, (40, 2))
    dst = apply_affine(a, src) + rng.normal(0, 0.3, (40, 2))
    fit = fit_affine(src, dst)
    z = np.abs(fit.affine - a) / fit.sigma
    assert z.max() < 5
    assert 0.05 < np.median(fit.sigma[:, 2]) < 0.3  # translation known to ~0.3 / sqrt(40) per axis, times leverage
    # held-out residuals are larger than the in-sample ones (each point left out of its own fit)
    assert np.all(fit.loo_residual_px >= fit.residual_px - 1e-12)
    # exact leave-one-out: refit without point 0
    keep = np.arange(1, 40)
    refit = fit_affine(src[keep], dst[keep])
    r0 = np.hypot(*(apply_affine(refit.affine, src[:1]) - dst[:1]).T)[0]
    assert fit.loo_residual_px[0] == pytest.approx(r0, rel=1e-6)
    np.testing.assert_allclose(compose_affine(invert_affine(a), a), np.hstack([np.eye(2), np.zeros((2, 1))]), atol=1e-9)


def test_robust_affine_rejects_outliers_and_decompose_reads_flip_and_rotation():
    rng = np.random.default_rng(5)
    a, rot = _random_affine(rng, flip=True)
    src = rng.uniform(0, 1000, (30, 2))
    dst = apply_affine(a, src) + rng.normal(0, 0.2, (30, 2))
    dst[:4] += rng.uniform(20, 40, (4, 2))
    fit = robust_affine(src, dst)
    assert not fit.inliers[:4].any() and fit.inliers[4:].all()
    assert np.abs(fit.affine - a).max() < 0.05 * np.abs(a).max()
    flip, got, scale = decompose_affine(a)
    assert flip and scale == pytest.approx(0.6 * np.sqrt(1.01), rel=1e-3)
    assert abs((got - rot + 180) % 360 - 180) < 1.0


@pytest.mark.parametrize("flip", [False, True])
def test_similarity_from_two_pairs(flip):
    rng = np.random.default_rng(3)
    a, _ = _random_affine(rng, flip)
    a[:, :2] /= np.sqrt(abs(np.linalg.det(a[:, :2]))) / 0.6  # a similarity
    a[:, :2] = 0.6 * (a[:, :2] / (0.6 * np.sqrt(1.01)))
    m = a[:, :2] @ (np.diag([-1.0, 1.0]) if flip else np.eye(2))
    m = 0.5 * np.array([[m[0, 0] + m[1, 1], m[0, 1] - m[1, 0]], [m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]]])
    sim = np.hstack([m @ (np.diag([-1.0, 1.0]) if flip else np.eye(2)), a[:, 2:]])
    src = rng.uniform(0, 100, (5, 2, 2))
    dst = np.stack([apply_affine(sim, s) for s in src])
    got = similarity_from_pairs(src, dst, flip=flip)
    np.testing.assert_allclose(got, np.broadcast_to(sim, got.shape), atol=1e-9)


def test_identify_section_peak_flat_and_recall():
    rng = np.random.default_rng(0)
    z = np.arange(30)
    for mu in (3.2, 14.0, 26.8):
        counts = rng.poisson(2 + 25 * np.exp(-0.5 * ((z - mu) / 0.9) ** 2))
        fit = identify_section(counts)
        assert fit.section == int(round(mu)), fit
        assert fit.p_value < 1e-6
    flat = identify_section(rng.poisson(3.0, 30))
    assert flat.section is None
    # the end section matched at a low share of its own beads: a neighbour of the stack (orphan)
    edge = np.array([20, 6, 1, 2, 2, 1])
    assert identify_section(edge, np.full(6, 60)).section is None
    assert identify_section(edge, np.full(6, 24)).section == 0


# -- the chain on synthetic slides ----------------------------------------------------------------
@pytest.fixture(scope="module")
def stpt_truth(tmp_path_factory):
    from imaxt_pipeline.synth import SynthParams, synthesize

    params = SynthParams(
        slices=5, rows=2, cols=2, tile_shape=(256, 256), pixel_size_um=2.0, bead_radius_um=(9.0, 14.0),
        n_beads=150, tissue_fraction=0.35, seed=11,
    )  # fmt: skip
    return synthesize(tmp_path_factory.mktemp("fed") / "s", params)


def _register(img, st, truth, rng):
    """Coarse pose, beads, per-section RANSAC matches, N(z): the workflow's chain on truth reference beads."""
    px = truth.params.pixel_size_um
    det = truth.bead_detections
    ref = {}
    for k in range(truth.params.slices):
        d = det[(det["slice"] == k) & (det["radius_px"] >= 4)]
        xy = d[["x_px", "y_px"]].to_numpy() + rng.normal(0, 0.15, (len(d), 2))  # STPT centre error
        ref[k] = np.column_stack([xy, d["radius_px"].to_numpy()])
    beads = find_slide_beads(
        img[0].astype(float), min_radius_px=4.0 / st.pixel_size_um, max_radius_px=18.0 / st.pixel_size_um
    )
    scale = st.pixel_size_um / px
    poses = coarse_orientation(
        img[0].astype(float), round(32 / st.pixel_size_um), truth.clean[2].sum(0), 16, nominal_scale=scale
    )
    best = None
    for pose in poses:
        counts, fits, expected = [], [], []
        for k in range(truth.params.slices):
            comp = ref[k][None, :, 2] <= beads[:, None, 2] * scale + 1.5
            m = match_beads(beads[:, :2], ref[k][:, :2], pose.affine, search_px=40, tol_px=3, compatible=comp)
            counts.append(m.n)
            fits.append(m)
            inside = 0
            if m.fit is not None:
                q = apply_affine(invert_affine(m.fit.affine), ref[k][:, :2])
                inside = int(np.sum((q > 2).all(1) & (q[:, 0] < img.shape[2] - 2) & (q[:, 1] < img.shape[1] - 2)))
            expected.append(inside)
        if best is None or max(counts) > max(best[0]):
            best = (counts, fits, expected, pose)
    counts, fits, expected, pose = best
    return identify_section(np.array(counts), np.array(expected)), fits, pose, beads, counts


@pytest.mark.slow
def test_slides_find_their_section_flip_and_pose(stpt_truth):
    """Every slide (random pixel size, flip, rotation, warp) finds its section; the orphan none; error <= 1 px."""
    from imaxt_pipeline.synth import render_slide

    truth = stpt_truth
    worst = 0.0
    rng = np.random.default_rng(1)
    cases = [(-1, 3), (0, 4), (3, 6)]  # orphan; unflipped end section; flipped inner section
    flips = set()
    for section, seed in cases:
        img, st = render_slide(truth, section, seed=seed)
        sid, fits, pose, beads, counts = _register(img, st, truth, rng)
        if section < 0:
            assert sid.section is None, (counts, sid)
            continue
        assert sid.section == section, (section, counts, sid)
        fit = fits[section].fit
        flip, rot, _ = decompose_affine(fit.affine)
        assert flip == st.flip and abs((rot - st.rotation_deg + 180) % 360 - 180) < 0.5
        flips.add(st.flip)
        true_xy = st.beads[["x_px", "y_px"]].to_numpy()
        err = np.hypot(*(apply_affine(fit.affine, true_xy) - apply_affine(st.affine_px, true_xy)).T)
        worst = max(worst, float(np.median(err)))
        assert np.median(err) <= 1.0 and fits[section].n >= 10
        assert np.median(fit.loo_residual_px) <= 1.0
    print(f"worst median bead error {worst:.3f} STPT px ({worst * truth.params.pixel_size_um:.2f} um)")
    assert flips == {False, True}


def test_coarse_orientation_picks_the_reference_the_slide_was_cut_from():
    """Several references share the slide's warps: the best pose is on the right one, as if searched alone."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:160, 0:160]
    shapes = [
        ((yy > 30) & (yy < 130) & (xx > 40) & (xx < 65)) | ((yy > 105) & (yy < 130) & (xx > 40) & (xx < 120)),  # an L
        np.hypot(yy - 80, xx - 80) < 45,  # a disc
        (yy > 45) & (yy < 115) & (xx > 20) & (xx < 140),  # a bar
    ]
    refs = [100.0 + 900.0 * ndi.gaussian_filter(s.astype(float), 1) + rng.normal(0, 20, s.shape) for s in shapes]
    theta = np.radians(70.0)
    lin = 0.5 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag([-1.0, 1.0])
    true = np.hstack([lin, (np.array([80.0, 80.0]) - lin @ [160.0, 160.0])[:, None]])  # slide -> ref 0, mirrored
    slide = ndi.affine_transform(refs[0], lin[::-1, ::-1], offset=true[::-1, 2], output_shape=(320, 320), cval=100.0)
    slide += rng.normal(0, 20, slide.shape)
    poses = coarse_orientation(slide, 8, refs, 4, nominal_scale=0.5)
    best = poses[0]
    assert best.reference_index == 0 and best.flip and abs((best.rotation_deg - 70.0 + 180) % 360 - 180) <= 3.0
    centre = np.array([[160.0, 160.0]])
    assert np.hypot(*(apply_affine(best.affine, centre) - apply_affine(true, centre))[0]) <= 8.0  # 2 coarse px
    alone = coarse_orientation(slide, 8, refs[0], 4, nominal_scale=0.5)[0]
    assert alone.flip == best.flip and alone.rotation_deg == best.rotation_deg
    np.testing.assert_allclose(alone.affine, best.affine)
