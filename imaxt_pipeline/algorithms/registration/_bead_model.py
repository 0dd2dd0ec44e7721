"""The bead model: a soft-edged disc (a sphere cut by the imaged layer), and its Poisson maximum likelihood.

A fluorescent sphere of radius ``R`` cut by a thin imaged layer at height
``dz`` from its centre shows as a disc of radius ``sqrt(R**2 - dz**2)``; the
optics blur its edge. The model of one cutout is

.. math::

    m(y, x) = b + A \\, \\tfrac12 \\operatorname{erfc}\\!\\left(
        \\frac{\\rho - r}{\\sqrt 2\\, w}\\right),\\qquad
    \\rho = \\sqrt{(y - y_c)^2 + (x - x_c)^2}

with background ``b``, amplitude ``A``, projected radius ``r`` and edge
width ``w``. :func:`poisson_scoring` finds the six parameters that minimise the Poisson negative
log-likelihood, by damped Fisher scoring on the analytic Jacobian (:func:`model_and_jacobian`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import erfc

__all__ = ["disc_model", "model_and_jacobian", "poisson_scoring"]

_SQRT2 = np.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def disc_model(params: ArrayLike, yy: NDArray[Any], xx: NDArray[Any]) -> NDArray[np.floating[Any]]:
    """Soft-edged disc on a flat background (see module docstring).

    Parameters
    ----------
    params : array-like of 6 floats
        ``(y, x, radius, width, amplitude, background)``.
    yy, xx : ndarray
        Pixel coordinates (broadcastable).

    Returns
    -------
    ndarray
        Expected counts per pixel.
    """
    yc, xc, r, w, a, b = (float(p) for p in np.asarray(params).ravel())
    rho = np.hypot(yy - yc, xx - xc)
    out: NDArray[np.floating[Any]] = b + a * 0.5 * erfc((rho - r) / (_SQRT2 * w))
    return out


def model_and_jacobian(
    p: NDArray[np.float64], yy: NDArray[np.float64], xx: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    yc, xc, r, w, a, b = p
    dy, dx = yy - yc, xx - xc
    rho = np.maximum(np.hypot(dy, dx), 1e-9)
    u = (rho - r) / w
    s = 0.5 * erfc(u / _SQRT2)
    phi = _INV_SQRT_2PI * np.exp(-0.5 * u * u) / w  # -dS/drho
    model = b + a * s
    jac = np.empty((6, rho.size))
    jac[0] = a * phi * dy / rho  # dm/dyc = a * (-phi) * (-(dy)/rho)
    jac[1] = a * phi * dx / rho
    jac[2] = a * phi
    jac[3] = a * phi * u
    jac[4] = s
    jac[5] = 1.0
    return model, jac


def poisson_scoring(
    d: NDArray[np.float64],
    yy: NDArray[np.float64],
    xx: NDArray[np.float64],
    start: NDArray[np.float64],
    lower: NDArray[np.float64],
    upper: NDArray[np.float64],
    *,
    max_iter: int = 100,
) -> tuple[NDArray[np.float64], bool]:
    """Poisson maximum likelihood by damped Fisher scoring (Levenberg-Marquardt on the Fisher matrix).

    Each step solves ``(F + lam diag F) dp = J (d / m - 1)`` with ``F = J diag(1/m) J^T``,
    accepted when the negative log-likelihood drops (then ``lam`` shrinks), refused otherwise
    (``lam`` grows); parameters stay inside ``[lower, upper]``. A handful of steps suffice from a
    start within a px of the rim, where quasi-Newton needed hundreds of function evaluations.
    """

    def nll(m: NDArray[np.float64]) -> float:
        return float(np.sum(m - d * np.log(m)))

    p = start.copy()
    m, jac = model_and_jacobian(p, yy, xx)
    m = np.maximum(m, 1e-12)
    cost, lam = nll(m), 1e-3
    for _ in range(max_iter):
        grad = jac @ (d / m - 1.0)
        fisher = (jac / m) @ jac.T
        diag = np.maximum(np.diag(fisher), 1e-300)
        try:
            step = np.linalg.solve(fisher + lam * np.diag(diag), grad)
        except np.linalg.LinAlgError:
            return p, False
        trial = np.clip(p + step, lower, upper)
        m_t, jac_t = model_and_jacobian(trial, yy, xx)
        m_t = np.maximum(m_t, 1e-12)
        cost_t = nll(m_t)
        if np.isfinite(cost_t) and cost_t <= cost:
            moved = np.abs(trial - p)
            p, m, jac, cost, lam = trial, m_t, jac_t, cost_t, max(lam * 0.2, 1e-9)
            if np.all(moved[:4] < 1e-5) and np.all(moved[4:] <= 1e-7 * np.maximum(np.abs(p[4:]), 1e-12)):
                return p, True
        else:
            lam *= 10.0
            if lam > 1e8:  # no downhill step left: at the optimum to numerical precision
                return p, bool(np.isfinite(cost))
    return p, False
