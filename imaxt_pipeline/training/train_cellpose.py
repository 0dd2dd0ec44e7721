"""Train the small cellpose 3.x nuclei model shipped in ``imaxt_pipeline/pretrained/cellpose``.

No pretrained weights can be downloaded where this project is built, so the
``cellpose`` backend ships its own model: a standard cellpose 3 ``CPnet``
(``nbase = [2, 32, 64, 128, 256]``, the size ``CellposeModel`` builds) trained
from scratch with cellpose's own :func:`cellpose.train.train_seg` on rendered
synthetic nuclei (blurred ellipses of 8-13 px diameter, the size of the
synthetic sample's nuclei at 1 µm/px, on a noisy background).

The weights are stored in float16 (half the size, ~13 MB); ``CPnet.load_model``
copies them into its float32 parameters, so the file loads through the normal
path ``CellposeModel(pretrained_model=path)``.

Usage::

    python -m imaxt_pipeline.training.train_cellpose --out imaxt_pipeline/pretrained/cellpose/nuclei_synth

Training takes ~5 minutes on two CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from imaxt_pipeline.synth import render_cells
from imaxt_pipeline.synth import render_nuclei_plane as render_nuclei

__all__ = ["DIAM_MEAN", "main", "render_cells", "render_nuclei", "train", "training_set"]

DIAM_MEAN = 10.0  # px; the model's native nucleus diameter (no rescaling at 1 µm/px)


def training_set(
    n_images: int, *, shape: tuple[int, int] = (128, 128), seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n_images`` rendered images and their truth labels (varying density)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    area = shape[0] * shape[1]
    for _ in range(n_images):
        n = int(rng.uniform(0.2, 0.6) * area / (np.pi * 25))
        img, lab = render_nuclei(shape, n=n, rng=rng)
        images.append(img)
        labels.append(lab)
    return images, labels


def train(
    out: Path,
    *,
    n_images: int = 64,
    n_epochs: int = 90,
    nimg_per_epoch: int = 8,
    batch_size: int = 8,
    bsize: int = 128,
    learning_rate: float = 0.02,
    threads: int = 2,
    seed: int = 0,
) -> Path:
    """Train a CPnet from scratch and save float16 weights to ``out``."""
    import torch
    from cellpose import models
    from cellpose import train as cp_train

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = training_set(n_images, seed=seed)
    test_images, test_labels = training_set(8, seed=seed + 1)
    model = models.CellposeModel(gpu=torch.cuda.is_available(), pretrained_model=None, diam_mean=DIAM_MEAN, nchan=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = out.parent / f".train-{out.name}"
    workdir.mkdir(parents=True, exist_ok=True)
    path, train_losses, test_losses = cp_train.train_seg(
        model.net,
        train_data=images,
        train_labels=labels,
        test_data=test_images,
        test_labels=test_labels,
        channels=[0, 0],
        normalize=True,
        batch_size=batch_size,
        learning_rate=learning_rate,
        n_epochs=n_epochs,
        nimg_per_epoch=nimg_per_epoch,
        weight_decay=1e-5,
        bsize=bsize,
        rescale=True,
        min_train_masks=1,
        save_path=str(workdir),
        model_name=out.name,
        save_every=n_epochs + 1,
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, out)
    for leftover in sorted(workdir.rglob("*"), reverse=True):
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    workdir.rmdir()
    logging.getLogger(__name__).info(
        "losses: train %.3f -> %.3f, test %.3f",
        train_losses[0],
        train_losses[-1],
        test_losses[test_losses > 0][-1] if (test_losses > 0).any() else float("nan"),
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output weights file")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--per-epoch", type=int, default=8, help="images per epoch")
    parser.add_argument("--bsize", type=int, default=128, help="training patch edge, px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    path = train(
        args.out,
        n_images=args.images,
        n_epochs=args.epochs,
        nimg_per_epoch=args.per_epoch,
        bsize=args.bsize,
        threads=args.threads,
        seed=args.seed,
    )
    logging.getLogger(__name__).info(
        "wrote %s (%.1f MB) in %.0f s", path, path.stat().st_size / 1e6, time.perf_counter() - t0
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
