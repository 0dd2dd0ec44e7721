"""A small U-Net that predicts bead masks, and its tiled inference.

The network sees the bead channel at a reduced resolution (``downsample``),
normalised by its robust background and noise, and outputs one logit per
pixel. Inference runs over overlapping patches (only each patch's centre is
kept), so any image size fits in memory; the probability map is brought
back to full resolution and split into beads by
:func:`imaxt_pipeline.algorithms.registration.split_beads`.

Functions here take an already-loaded network: the shipped weights
(``imaxt_pipeline/pretrained/bead_unet.pt``, trained on synthetic mosaics by
``python -m imaxt_pipeline.training.train_bead_unet``) or a user's checkpoint
are read by :func:`imaxt_pipeline.io.weights.load_bead_unet`. This module
imports ``torch``; the package imports it only when one of its names is used.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from torch import nn

from ._beads import BeadCandidates, candidates_from_labels, normalise, split_beads

__all__ = ["BeadUNet", "detect_beads_unet", "predict_bead_probability"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BeadUNet(nn.Module):
    """U-Net with ``depth`` resolution levels and ``base`` channels at the top.

    Parameters
    ----------
    base : int
        Channels of the first level (doubling at each level down).
    depth : int
        Number of levels (``depth - 1`` poolings); inputs should be a
        multiple of ``2 ** (depth - 1)`` in size.
    """

    def __init__(self, base: int = 8, depth: int = 4) -> None:
        super().__init__()
        self.base, self.depth = base, depth
        chans = [base * 2**i for i in range(depth)]
        self.down = nn.ModuleList([_block(1 if i == 0 else chans[i - 1], chans[i]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth - 1)])
        self.merge = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in range(depth - 1)])
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth - 1:
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
        for i in reversed(range(self.depth - 1)):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        out: torch.Tensor = self.head(x)
        return out


def predict_bead_probability(
    image: ArrayLike,
    model: BeadUNet,
    *,
    downsample: int = 2,
    patch: int = 256,
    overlap: int = 32,
    device: str | torch.device | None = None,
) -> NDArray[np.float32]:
    """Bead probability per pixel of ``image`` (full resolution).

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image.
    model : BeadUNet
        Trained network.
    downsample : int, optional
        Integer binning applied before the network (must match training).
    patch, overlap : int, optional
        Patch edge and the margin discarded on each side, at the reduced
        resolution.
    device : str or torch.device, optional
        Default: the model's device.

    Returns
    -------
    ndarray (H, W) of float32 in [0, 1]
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    h, w = img.shape
    f = int(downsample)
    hp, wp = -(-h // f) * f, -(-w // f) * f
    small = np.pad(img, ((0, hp - h), (0, wp - w))).reshape(hp // f, f, wp // f, f).mean(axis=(1, 3))
    x = normalise(small)
    mult = 2 ** (model.depth - 1)
    core = patch - 2 * overlap
    if core <= 0:
        raise ValueError(f"patch ({patch}) must exceed 2 * overlap ({overlap})")
    sh, sw = x.shape
    ny, nx = -(-sh // core), -(-sw // core)
    padded = np.pad(x, ((overlap, ny * core - sh + overlap), (overlap, nx * core - sw + overlap)))
    out = np.zeros((ny * core, nx * core), np.float32)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    batch: list[tuple[int, int, NDArray[np.float32]]] = []
    for iy in range(ny):
        for ix in range(nx):
            batch.append((iy, ix, padded[iy * core : iy * core + patch, ix * core : ix * core + patch]))
    with torch.no_grad():
        for start in range(0, len(batch), 16):
            chunk = batch[start : start + 16]
            arr = np.stack([c[2] for c in chunk])[:, None]
            pad = (-arr.shape[-1]) % mult
            t = torch.from_numpy(np.pad(arr, ((0, 0), (0, 0), (0, pad), (0, pad)))).to(dev)
            prob = torch.sigmoid(model(t)).cpu().numpy()[:, 0, :patch, :patch]
            for (iy, ix, _), p in zip(chunk, prob, strict=True):
                out[iy * core : (iy + 1) * core, ix * core : (ix + 1) * core] = p[
                    overlap : overlap + core, overlap : overlap + core
                ]
    out = out[:sh, :sw]
    full = ndi.zoom(out, f, order=1, grid_mode=True, mode="nearest")[:h, :w] if f > 1 else out
    return np.clip(full, 0.0, 1.0).astype(np.float32)


def detect_beads_unet(
    image: ArrayLike,
    model: BeadUNet,
    *,
    downsample: int = 2,
    threshold: float = 0.5,
    min_radius: float = 4.0,
    max_radius: float = 80.0,
    min_solidity: float = 0.85,
    device: str | torch.device | None = None,
) -> BeadCandidates:
    """U-Net detector: probability, threshold, distance-transform watershed.

    Parameters
    ----------
    image : ndarray (H, W)
        Bead-channel image.
    model : BeadUNet
        Trained network (see :func:`imaxt_pipeline.io.weights.load_bead_unet`).
    downsample : int, optional
        As used in training (stored in the checkpoint's config).
    threshold : float, optional
        Probability above which a pixel is bead.
    min_radius, max_radius, min_solidity : float, optional
        See :func:`imaxt_pipeline.algorithms.registration.candidates_from_labels`.
    device : str or torch.device, optional
        Default: the model's device.

    Returns
    -------
    BeadCandidates
    """
    prob = predict_bead_probability(image, model, downsample=downsample, device=device)
    mask = ndi.binary_fill_holes(prob > threshold)
    labels = split_beads(mask, min_radius=min_radius)
    return candidates_from_labels(labels, min_radius=min_radius, max_radius=max_radius, min_solidity=min_solidity)
