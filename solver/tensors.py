"""Tensor helpers: Voigt notation, stress and strain measures, rotations of stiffness.

Conventions (see docs/conventions.md):

* Every function works on stacks: a tensor argument has shape ``(..., 3, 3)``
  (or ``(..., 3, 3, 3, 3)``) and the leading axes broadcast.
* Voigt order is 11, 22, 33, 23, 13, 12 with *no* factor 2 on the shear
  components (a stored strain 6-vector holds the tensor components
  ``eps_23``, not the engineering shear ``2 eps_23``). Stiffness matrices in
  Voigt form act on engineering strains, as usual: ``C66[3, 3] = C44``.
* ``F`` is the deformation gradient, ``P = dW/dF`` the first Piola-Kirchhoff
  stress (``P_iJ``), ``sigma = P F^T / det F`` the Cauchy stress.
"""

from __future__ import annotations

import numpy as np

#: Voigt index pairs (i, j) in Slipstream's order 11, 22, 33, 23, 13, 12.
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def to_voigt(sym: np.ndarray) -> np.ndarray:
    """Symmetric tensors -> 6-vectors (11, 22, 33, 23, 13, 12), no factor 2.

    Off-diagonal entries are the mean of the two mirror components, so a
    slightly asymmetric input (round-off) gives its symmetric part.

    Args:
        sym: ``(..., 3, 3)``.

    Returns:
        ``(..., 6)``.
    """
    a = np.asarray(sym)
    return np.stack([a[..., 0, 0], a[..., 1, 1], a[..., 2, 2],
                     0.5 * (a[..., 1, 2] + a[..., 2, 1]),
                     0.5 * (a[..., 0, 2] + a[..., 2, 0]),
                     0.5 * (a[..., 0, 1] + a[..., 1, 0])], axis=-1)


def from_voigt(v: np.ndarray) -> np.ndarray:
    """6-vectors (11, 22, 33, 23, 13, 12) -> symmetric tensors ``(..., 3, 3)``."""
    v = np.asarray(v)
    if v.shape[-1] != 6:
        raise ValueError(f"from_voigt: last axis must have 6 entries, got shape {v.shape}")
    out = np.empty(v.shape[:-1] + (3, 3), dtype=v.dtype)
    for k, (i, j) in enumerate(VOIGT_PAIRS):
        out[..., i, j] = v[..., k]
        out[..., j, i] = v[..., k]
    return out


def stiffness_to_voigt(C: np.ndarray) -> np.ndarray:
    """Stiffness tensor ``(..., 3, 3, 3, 3)`` -> Voigt matrix ``(..., 6, 6)``.

    The matrix maps engineering strains (``2 eps_23`` ...) to stresses.
    """
    C = np.asarray(C)
    out = np.empty(C.shape[:-4] + (6, 6), dtype=C.dtype)
    for I, (i, j) in enumerate(VOIGT_PAIRS):
        for J, (k, l) in enumerate(VOIGT_PAIRS):
            out[..., I, J] = C[..., i, j, k, l]
    return out


def stiffness_from_voigt(C66: np.ndarray) -> np.ndarray:
    """Voigt stiffness matrix ``(..., 6, 6)`` -> tensor ``(..., 3, 3, 3, 3)`` with minor symmetries."""
    C66 = np.asarray(C66)
    out = np.empty(C66.shape[:-2] + (3, 3, 3, 3), dtype=C66.dtype)
    for I, (i, j) in enumerate(VOIGT_PAIRS):
        for J, (k, l) in enumerate(VOIGT_PAIRS):
            for a, b in {(i, j), (j, i)}:
                for c, d in {(k, l), (l, k)}:
                    out[..., a, b, c, d] = C66[..., I, J]
    return out


def rotate_stiffness(C: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Components of a fourth-order tensor in a rotated basis.

    ``C'_ijkl = R_ia R_jb R_kc R_ld C_abcd``. With a passive orientation ``g``
    (``v_crystal = g @ v_lab``) the lab components of a crystal stiffness are
    ``rotate_stiffness(C_crystal, g.T)``.

    Args:
        C: ``(..., 3, 3, 3, 3)``.
        R: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3, 3, 3, 3)``.
    """
    return np.einsum("...ia,...jb,...kc,...ld,...abcd->...ijkl", R, R, R, R, C, optimize=True)


def cauchy_from_pk1(P: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Cauchy stress ``sigma = P F^T / det F`` from first Piola-Kirchhoff ``P``, ``(..., 3, 3)``.

    The result is symmetrised (it is symmetric up to round-off for any balanced ``P``).
    """
    P, F = np.asarray(P), np.asarray(F)
    sigma = P @ np.swapaxes(F, -1, -2) / np.linalg.det(F)[..., None, None]
    return 0.5 * (sigma + np.swapaxes(sigma, -1, -2))


def green_lagrange(F: np.ndarray) -> np.ndarray:
    """Green-Lagrange strain ``E = (F^T F - I) / 2``, ``(..., 3, 3)``."""
    F = np.asarray(F)
    return 0.5 * (np.swapaxes(F, -1, -2) @ F - np.eye(3))


def hencky_strain(F: np.ndarray) -> np.ndarray:
    """Logarithmic (Hencky) strain ``ln V`` of the left stretch ``V`` (lab frame).

    ``ln V = 1/2 ln(F F^T)``, from the eigen-decomposition of ``B = F F^T``.

    Args:
        F: ``(..., 3, 3)`` with ``det F > 0``.

    Returns:
        ``(..., 3, 3)`` symmetric.
    """
    F = np.asarray(F, dtype=float)
    lam, vec = np.linalg.eigh(F @ np.swapaxes(F, -1, -2))
    return (vec * (0.5 * np.log(lam))[..., None, :]) @ np.swapaxes(vec, -1, -2)


def deviator(a: np.ndarray) -> np.ndarray:
    """Deviatoric part ``a - tr(a)/3 I`` of ``(..., 3, 3)`` tensors."""
    a = np.asarray(a)
    return a - np.trace(a, axis1=-2, axis2=-1)[..., None, None] / 3.0 * np.eye(3)


def von_mises_stress(sigma: np.ndarray) -> np.ndarray:
    """Von Mises equivalent stress ``sqrt(3/2 s:s)``, ``s`` the deviator, ``(...)``."""
    s = deviator(sigma)
    return np.sqrt(1.5 * np.sum(s * s, axis=(-2, -1)))


def von_mises_strain(eps: np.ndarray) -> np.ndarray:
    """Von Mises equivalent strain ``sqrt(2/3 e:e)``, ``e`` the deviator, ``(...)``.

    For uniaxial isochoric stretch ``diag(e, -e/2, -e/2)`` it returns ``|e|``.
    """
    e = deviator(eps)
    return np.sqrt(2.0 / 3.0 * np.sum(e * e, axis=(-2, -1)))
