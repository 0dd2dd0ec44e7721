"""How far a re-solve moves an earlier section's pixels, and which sections to rewrite.

Every stitch run solves the distortion jointly with the stored correspondences of earlier sections,
so a new section can refine the optics those sections were fused with. A detector pixel ``p`` of a
tile at ``pos`` sees the scene at ``pos + p + D(p)`` (:mod:`..optics`), so between the solve a
section was written with and the current one its pixels move by ``dpos + dD(p)``. The section's
common translation is removed first: it moves the mosaic as a whole, which slice registration
absorbs, and rewriting a section for it would redo every section at every landing. What is left
(the seams' and the scale's change) is what makes a written mosaic stale.

:func:`rewrite_plan` bounds the work per landing: sections over the tolerance, largest move first,
at most ``limit`` of them; the rest stay pending and are compared again at the next landing (when
the distortion has usually converged further, so the moves shrink as sections land).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from ..optics import DistortionModel

__all__ = ["rewrite_plan", "section_move"]

_Array = npt.NDArray[np.float64]


def section_move(
    old_positions: npt.ArrayLike,
    new_positions: npt.ArrayLike,
    old_model: DistortionModel,
    new_model: DistortionModel,
    tile_shape: tuple[int, int],
    *,
    samples: int = 5,
) -> float:
    """Largest move (px) of any pixel of a section between two solves, its common translation removed.

    Parameters
    ----------
    old_positions, new_positions : (T, 2)
        Tile positions (top-left, any common frame) of the section's tiles as written and as re-solved.
    old_model, new_model : DistortionModel
        Distortion the section was written with and the re-solved one.
    tile_shape : (int, int)
        Detector shape.
    samples : int
        Points per tile axis where the move is evaluated (corners and edges included: where the
        polynomial's change is largest).

    Examples
    --------
    >>> m = DistortionModel()
    >>> section_move([[0, 0], [0, 90]], [[1, 1], [1, 91]], m, m, (100, 100))  # a common shift: no move
    0.0
    >>> round(section_move([[0, 0], [0, 90]], [[0, 0], [0, 90.3]], m, m, (100, 100)), 3)
    0.15
    """
    old = np.asarray(old_positions, np.float64).reshape(-1, 2)
    new = np.asarray(new_positions, np.float64).reshape(-1, 2)
    if old.shape != new.shape:
        raise ValueError(f"{len(old)} written tile positions against {len(new)} re-solved ones")
    if not len(old):
        return 0.0
    h, w = tile_shape
    yy, xx = np.meshgrid(np.linspace(0, h - 1, samples), np.linspace(0, w - 1, samples), indexing="ij")
    dy0, dx0 = old_model.displacement(yy, xx, tile_shape)
    dy1, dx1 = new_model.displacement(yy, xx, tile_shape)
    optics = np.stack([(dy1 - dy0).ravel(), (dx1 - dx0).ravel()], axis=-1)  # (P, 2), the same in every tile
    moves = (new - old)[:, None, :] + optics[None, :, :]  # (T, P, 2)
    moves -= np.median(moves.reshape(-1, 2), axis=0)
    return float(np.hypot(moves[..., 0], moves[..., 1]).max())


def rewrite_plan(moves: Mapping[int, float], *, tolerance: float, limit: int) -> tuple[list[int], list[int]]:
    """Sections to rewrite now (largest move first, at most ``limit``) and those left pending.

    >>> rewrite_plan({0: 0.01, 1: 0.3, 2: 0.08, 3: 0.2}, tolerance=0.05, limit=2)
    ([1, 3], [2])
    """
    over = sorted((s for s, v in moves.items() if v > tolerance), key=lambda s: (-moves[s], s))
    return sorted(over[:limit]), sorted(over[limit:])
