"""The one polynomial-surface helper of the flat field (monomial) and the flat refinement (Legendre)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.polynomial import legendre

from imaxt_pipeline.algorithms.calibration._basis import polynomial_basis, polynomial_surface, polynomial_terms
from imaxt_pipeline.algorithms.optics import tile_coordinates


def test_terms_order_and_constant():
    assert polynomial_terms(2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    assert polynomial_terms(2, constant=False) == [(0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    assert len(polynomial_terms(4, constant=False)) == 14
    with pytest.raises(ValueError, match="degree"):
        polynomial_terms(-1)


def test_monomial_and_legendre_terms():
    rng = np.random.default_rng(0)
    v, u = rng.uniform(-1, 1, (2, 30))
    mono = polynomial_basis(v, u, 3, kind="monomial")
    np.testing.assert_allclose(mono[:, polynomial_terms(3).index((2, 1))], v**2 * u, rtol=1e-12)
    leg = polynomial_basis(v, u, 3, kind="legendre", constant=False)
    p2 = legendre.legval(v, [0, 0, 1])
    np.testing.assert_allclose(leg[:, polynomial_terms(3, constant=False).index((2, 1))], p2 * u, rtol=1e-12)
    assert mono.shape == (30, 10) and leg.shape == (30, 9)


@pytest.mark.parametrize("kind", ["monomial", "legendre"])
@pytest.mark.parametrize("constant", [True, False])
def test_separable_surface_equals_basis_times_coefficients(kind, constant):
    shape = (12, 17)
    v, u = tile_coordinates(np.arange(shape[0]), np.arange(shape[1]), shape)
    coef = np.random.default_rng(1).normal(size=len(polynomial_terms(3, constant=constant)))
    full = polynomial_basis(v[:, None], u[None, :], 3, kind=kind, constant=constant) @ coef
    np.testing.assert_allclose(
        polynomial_surface(coef, v, u, 3, kind=kind, constant=constant), full, rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="coefficients"):
        polynomial_surface(coef[:-1], v, u, 3, kind=kind, constant=constant)
