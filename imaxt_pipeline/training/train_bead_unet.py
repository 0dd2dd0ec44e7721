"""Train the bead U-Net on synthetic mosaics (CPU, a few minutes).

Usage::

    python -m imaxt_pipeline.training.train_bead_unet --out imaxt_pipeline/pretrained/bead_unet.pt

Training pairs come from :mod:`imaxt_pipeline.synth`: the noise-free mosaic
planes (``truth.clean``) of several seeded samples, with Poisson noise at a
random exposure, and the truth bead discs (``truth.bead_detections``) as
masks. Images are binned by ``--downsample`` and normalised exactly as at
inference (:func:`imaxt_pipeline.algorithms.registration.normalise`). Random
128 x 128 crops, flips and rotations feed a BCE + Dice loss. Writes the
checkpoint (``state_dict`` + ``config``) and ``<out>.json`` with the
training metadata and the validation Dice/recall.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def disc_mask(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean mask of discs (y, x, r) on a canvas."""
    mask = np.zeros(shape, bool)
    for (cy, cx), r in zip(centres, radii, strict=True):
        y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), shape[0])
        x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), shape[1])
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


def _bin(img: np.ndarray, f: int) -> np.ndarray:
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def synthetic_pairs(
    seeds: list[int], *, downsample: int, workdir: Path, rng: np.random.Generator, slices: int = 4, tile: int = 256
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(normalised image, mask) pairs at reduced resolution, one per slice and channel."""
    from ..algorithms.registration import normalise
    from ..synth import SynthParams, synthesize

    pairs = []
    for seed in seeds:
        truth = synthesize(
            workdir / f"s{seed}", SynthParams(slices=slices, rows=2, cols=2, seed=seed, tile_shape=(tile, tile))
        )
        det = truth.bead_detections
        for s in range(truth.clean.shape[0]):
            rows = det[det["slice"] == s]
            mask = disc_mask(
                (int(truth.clean.shape[-2]), int(truth.clean.shape[-1])),
                rows[["y_px", "x_px"]].to_numpy(float),
                rows["radius_px"].to_numpy(float),
            )
            for c in range(truth.clean.shape[1]):
                clean = np.clip(truth.clean[s, c].astype(np.float64), 0, None)
                gain = rng.uniform(0.3, 3.0)
                noisy = rng.poisson(clean * gain) / gain
                img = normalise(_bin(noisy.astype(np.float32) + 1e-3, downsample))
                pairs.append((img.astype(np.float32), _bin(mask.astype(np.float32), downsample) > 0.5))
    return pairs


def render_scene(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A stand-alone synthetic bead field (used when :mod:`imaxt_pipeline.synth` is absent).

    Agarose background with a smooth gradient, a tissue region textured with
    bright nuclei-sized blobs, and beads as soft-edged discs of projected
    radius 3-50 px, some touching each other or the tissue; Poisson noise at a
    random exposure. Returns the noisy image and the bead mask.
    """
    from scipy import ndimage as ndi

    from ..algorithms.registration import disc_model

    h, w = shape
    yy, xx = np.indices(shape, dtype=np.float64)
    bg = rng.uniform(5, 60)
    img = bg * (1 + 0.3 * rng.uniform(-1, 1) * (yy / h) + 0.3 * rng.uniform(-1, 1) * (xx / w))
    tissue = ndi.gaussian_filter(rng.random((h // 16 + 1, w // 16 + 1)), 2)
    tissue = ndi.zoom(tissue, 16, order=1)[:h, :w] > np.quantile(tissue, rng.uniform(0.3, 0.8))
    spots = ndi.gaussian_filter((rng.random(shape) < 0.004).astype(np.float64), 2.5) * 60
    img += tissue * (rng.uniform(0.2, 1.5) * bg + spots * rng.uniform(0.5, 3) * bg)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    for _ in range(rng.integers(5, 25)):
        r = rng.uniform(3, 12) if rng.random() < 0.5 else rng.uniform(12, 50)  # many small caps
        c = rng.uniform(0, 1, 2) * shape
        if any(np.hypot(*(c - c2)) < r + r2 - 4 for c2, r2 in zip(centres, radii, strict=True)):
            continue
        centres.append(c)
        radii.append(r)
        img += disc_model([c[0], c[1], r, rng.uniform(0.8, 2.5), rng.uniform(0.5, 4) * bg, 0], yy, xx)
    gain = rng.uniform(0.3, 3.0)
    noisy = rng.poisson(np.clip(img, 0, None) * gain) / gain
    return noisy.astype(np.float32), disc_mask(shape, np.array(centres).reshape(-1, 2), np.array(radii))


def rendered_pairs(n: int, *, downsample: int, rng: np.random.Generator, size: int = 512):
    """(normalised image, mask) pairs from :func:`render_scene` at reduced resolution."""
    from ..algorithms.registration import normalise

    pairs = []
    for _ in range(n):
        img, mask = render_scene((size, size), rng)
        pairs.append((normalise(_bin(img + 1e-3, downsample)), _bin(mask.astype(np.float32), downsample) > 0.5))
    return pairs


def _crops(pairs, n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for _ in range(n):
        img, mask = pairs[rng.integers(len(pairs))]
        h, w = img.shape
        y0, x0 = rng.integers(0, max(h - size, 0) + 1), rng.integers(0, max(w - size, 0) + 1)
        a = np.zeros((size, size), np.float32)
        b = np.zeros((size, size), np.float32)
        ci, cm = img[y0 : y0 + size, x0 : x0 + size], mask[y0 : y0 + size, x0 : x0 + size]
        a[: ci.shape[0], : ci.shape[1]], b[: cm.shape[0], : cm.shape[1]] = ci, cm
        k = rng.integers(4)
        a, b = np.rot90(a, k), np.rot90(b, k)
        if rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        xs.append(a.copy())
        ys.append(b.copy())
    return np.stack(xs)[:, None], np.stack(ys)[:, None]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = float(np.sum(pred & truth))
    return 2 * inter / max(float(pred.sum() + truth.sum()), 1.0)


def train(
    out: Path,
    *,
    seconds: float = 240.0,
    downsample: int = 2,
    base: int = 8,
    depth: int = 4,
    patch: int = 128,
    batch: int = 8,
    seed: int = 0,
    train_seeds: int = 4,
    source: str = "auto",
) -> dict:
    """Train and save the model; returns the metadata written next to it."""
    import torch

    from ..algorithms.registration import BeadUNet

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rng = np.random.default_rng(seed)
    if source == "auto":
        try:
            from ..synth import synthesize  # noqa: F401  # availability only: synth has optional dependencies

            source = "synth"
        except ImportError:
            source = "render"
    t0 = time.perf_counter()
    seeds = [100 + i for i in range(train_seeds)]
    if source == "synth":
        with tempfile.TemporaryDirectory() as tmp:
            pairs = synthetic_pairs(seeds, downsample=downsample, workdir=Path(tmp), rng=rng)
            val = synthetic_pairs([999], downsample=downsample, workdir=Path(tmp), rng=rng)
    else:
        pairs = rendered_pairs(12 * train_seeds, downsample=downsample, rng=rng)
        val = rendered_pairs(6, downsample=downsample, rng=np.random.default_rng(999))
    t_data = time.perf_counter() - t0
    model = BeadUNet(base=base, depth=depth)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    bce = torch.nn.BCEWithLogitsLoss()
    steps, losses = 0, []
    t_start = time.perf_counter()
    model.train()
    while time.perf_counter() - t_start < seconds:
        x, y = _crops(pairs, batch, patch, rng)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        logits = model(xt)
        prob = torch.sigmoid(logits)
        soft_dice = 1 - (2 * (prob * yt).sum() + 1) / (prob.sum() + yt.sum() + 1)
        loss = bce(logits, yt) + soft_dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        steps += 1
    model.eval()
    scores = []
    with torch.no_grad():
        for img, mask in val:
            mult = 2 ** (depth - 1)
            h, w = img.shape
            pad = ((0, (-h) % mult), (0, (-w) % mult))
            p = torch.sigmoid(model(torch.from_numpy(np.pad(img, pad))[None, None])).numpy()[0, 0, :h, :w]
            scores.append(dice(p > 0.5, mask))
    config = {"base": base, "depth": depth, "downsample": downsample, "threshold": 0.5, "patch": patch}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": config}, out)
    meta = {
        "config": config,
        "source": source,
        "train_seeds": seeds,
        "val_seed": 999,
        "steps": steps,
        "batch": batch,
        "train_seconds": round(time.perf_counter() - t_start, 1),
        "data_seconds": round(t_data, 1),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "val_dice": float(np.mean(scores)) if scores else None,
        "torch": torch.__version__,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the bead U-Net on synthetic mosaics.")
    ap.add_argument("--out", type=Path, default=Path("imaxt_pipeline/pretrained/bead_unet.pt"))
    ap.add_argument("--seconds", type=float, default=240.0, help="training time budget")
    ap.add_argument("--downsample", type=int, default=2)
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--source",
        choices=("auto", "synth", "render"),
        default="auto",
        help="training images: imaxt_pipeline.synth mosaics, or the built-in renderer",
    )
    args = ap.parse_args(argv)
    meta = train(
        args.out, seconds=args.seconds, downsample=args.downsample, base=args.base, seed=args.seed, source=args.source
    )
    sys.stdout.write(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
