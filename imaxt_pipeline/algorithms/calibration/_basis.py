"""Polynomial surfaces over a tile, in the normalised coordinates of :func:`..optics.tile_coordinates`.

The flat field of :mod:`._flatfield` is a monomial surface ``sum c_ij v**i u**j``
(constant included: it is the flat itself); the flat correction of
:mod:`._flat_refine` is a Legendre surface ``sum c_ij P_i(v) P_j(u)`` without
the constant (the overlaps only see differences). Both are the same object
with two choices, ``kind`` and ``constant``, made explicit here: terms
``(i, j)`` of total degree ``i + j <= degree``, ordered by ``i`` then ``j``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.polynomial import legendre, polynomial

__all__ = ["PolynomialKind", "polynomial_basis", "polynomial_surface", "polynomial_terms"]

PolynomialKind = Literal["monomial", "legendre"]

_Vander = Callable[[npt.NDArray[np.float64], int], npt.NDArray[np.float64]]
_VANDER: dict[str, _Vander] = {"monomial": polynomial.polyvander, "legendre": legendre.legvander}


def polynomial_terms(degree: int, *, constant: bool = True) -> list[tuple[int, int]]:
    """Orders ``(i, j)`` (of ``v``, of ``u``) of the terms of total degree ``<= degree``.

    Ordered by ``i`` then ``j``; with ``constant`` the first term is ``(0, 0)``.
    """
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    first = 0 if constant else 1
    return [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i) if i + j >= first]


def polynomial_basis(
    v: npt.ArrayLike, u: npt.ArrayLike, degree: int, *, kind: PolynomialKind, constant: bool = True
) -> npt.NDArray[np.float64]:
    """Values of every term of :func:`polynomial_terms` at normalised positions ``(v, u)``.

    Parameters
    ----------
    v, u : array_like
        Normalised coordinates (broadcast together: pass ``v[:, None]`` and
        ``u[None, :]`` for a grid).
    degree : int
        Total degree.
    kind : {"monomial", "legendre"}
        ``v**i u**j`` or ``P_i(v) P_j(u)``.
    constant : bool
        Include the ``(0, 0)`` term.

    Returns
    -------
    ndarray of float64, ``broadcast(v, u).shape + (n_terms,)``
    """
    vander = _VANDER[kind]
    vv, uu = np.broadcast_arrays(np.asarray(v, np.float64), np.asarray(u, np.float64))
    pv, pu = vander(vv, degree), vander(uu, degree)
    terms = polynomial_terms(degree, constant=constant)
    out: npt.NDArray[np.float64] = np.stack([pv[..., i] * pu[..., j] for i, j in terms], axis=-1)
    return out


def polynomial_surface(
    coef: npt.ArrayLike, v: npt.ArrayLike, u: npt.ArrayLike, degree: int, *, kind: PolynomialKind, constant: bool = True
) -> npt.NDArray[np.float64]:
    """Surface ``basis @ coef`` on the grid ``v`` (rows) x ``u`` (columns), evaluated separably.

    A full ``(H * W, n_terms)`` basis would not fit in memory for large
    tiles; the separable form costs two small Vandermonde matrices.

    Parameters
    ----------
    coef : array_like (n_terms,)
        Coefficients in :func:`polynomial_terms` order.
    v, u : array_like, 1-D
        Normalised coordinates of the rows and of the columns.
    degree, kind, constant
        As in :func:`polynomial_basis`.

    Returns
    -------
    ndarray (len(v), len(u)) of float64
    """
    vander = _VANDER[kind]
    terms = polynomial_terms(degree, constant=constant)
    c = np.asarray(coef, np.float64)
    if c.shape != (len(terms),):
        raise ValueError(f"{len(terms)} coefficients expected for degree {degree}, got shape {c.shape}")
    grid = np.zeros((degree + 1, degree + 1))
    grid[tuple(np.array(terms).T)] = c
    pv, pu = vander(np.asarray(v, np.float64), degree), vander(np.asarray(u, np.float64), degree)
    out: npt.NDArray[np.float64] = pv @ grid @ pu.T
    return out
