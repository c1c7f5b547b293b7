"""Orientations and rotations as pure NumPy functions over stacked arrays.

Conventions (see docs/conventions.md; the same as DAMASK and orix):

* Euler angles are Bunge ZXZ ``(phi1, Phi, phi2)`` in radians.
* An orientation matrix ``g`` is *passive*, lab -> crystal: the components of a
  vector in the crystal frame are ``v_c = g @ v_lab``. Its rows are the crystal
  axes written in the lab frame. ``g = Rz(phi2) @ Rx(Phi) @ Rz(phi1)`` with the
  passive elementary rotations ``Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]``.
* Quaternions are ``(w, x, y, z)`` with ``w >= 0`` and P = -1 (Rowenhorst et
  al. 2015), also passive.
* Every function takes arrays of shape ``(..., 3)`` (Euler), ``(..., 3, 3)``
  (matrices) or ``(..., 4)`` (quaternions) and broadcasts over the leading axes.

References:
    D. Rowenhorst et al., Consistent representations of and conversions
    between 3D rotations, Modelling Simul. Mater. Sci. Eng. 23 (2015) 083501.
"""

from __future__ import annotations

import numpy as np

_TWO_PI = 2.0 * np.pi


def euler_to_matrix(euler: np.ndarray) -> np.ndarray:
    """Bunge Euler angles -> passive orientation matrix (lab -> crystal).

    Args:
        euler: ``(..., 3)`` angles ``(phi1, Phi, phi2)`` in radians.

    Returns:
        ``(..., 3, 3)`` matrices ``g`` with ``v_crystal = g @ v_lab``.
    """
    euler = np.asarray(euler, dtype=float)
    c1, c, c2 = np.cos(euler[..., 0]), np.cos(euler[..., 1]), np.cos(euler[..., 2])
    s1, s, s2 = np.sin(euler[..., 0]), np.sin(euler[..., 1]), np.sin(euler[..., 2])
    g = np.empty(euler.shape[:-1] + (3, 3))
    g[..., 0, 0] = c1 * c2 - s1 * c * s2
    g[..., 0, 1] = s1 * c2 + c1 * c * s2
    g[..., 0, 2] = s * s2
    g[..., 1, 0] = -c1 * s2 - s1 * c * c2
    g[..., 1, 1] = -s1 * s2 + c1 * c * c2
    g[..., 1, 2] = s * c2
    g[..., 2, 0] = s1 * s
    g[..., 2, 1] = -c1 * s
    g[..., 2, 2] = c
    return g


def matrix_to_euler(g: np.ndarray) -> np.ndarray:
    """Passive orientation matrix -> Bunge Euler angles in the fundamental ranges.

    ``phi1, phi2`` in ``[0, 2 pi)``, ``Phi`` in ``[0, pi]``. At the Gimbal-lock
    points (``Phi`` = 0 or pi) the rotation is put on ``phi1`` and ``phi2 = 0``.

    Args:
        g: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` Euler angles in radians.
    """
    g = np.asarray(g, dtype=float)
    cos_Phi = np.clip(g[..., 2, 2], -1.0, 1.0)
    Phi = np.arccos(cos_Phi)
    zeta = np.sqrt(np.clip(1.0 - cos_Phi**2, 0.0, None))
    regular = zeta > 1e-10
    safe = np.where(regular, zeta, 1.0)
    phi1 = np.where(regular, np.arctan2(g[..., 2, 0] / safe, -g[..., 2, 1] / safe),
                    np.arctan2(g[..., 0, 1], g[..., 0, 0]))
    phi2 = np.where(regular, np.arctan2(g[..., 0, 2] / safe, g[..., 1, 2] / safe), 0.0)
    # at Phi = pi the single remaining angle is phi1 - phi2
    Phi = np.where(regular, Phi, np.where(cos_Phi > 0, 0.0, np.pi))
    return np.stack([np.mod(phi1, _TWO_PI), Phi, np.mod(phi2, _TWO_PI)], axis=-1)


def matrix_to_quaternion(g: np.ndarray) -> np.ndarray:
    """Passive rotation matrix -> unit quaternion ``(w, x, y, z)``, ``w >= 0``, P = -1."""
    g = np.asarray(g, dtype=float)
    w = 0.5 * np.sqrt(np.clip(1.0 + g[..., 0, 0] + g[..., 1, 1] + g[..., 2, 2], 0.0, None))
    x = 0.5 * np.sqrt(np.clip(1.0 + g[..., 0, 0] - g[..., 1, 1] - g[..., 2, 2], 0.0, None))
    y = 0.5 * np.sqrt(np.clip(1.0 - g[..., 0, 0] + g[..., 1, 1] - g[..., 2, 2], 0.0, None))
    z = 0.5 * np.sqrt(np.clip(1.0 - g[..., 0, 0] - g[..., 1, 1] + g[..., 2, 2], 0.0, None))
    # signs from the off-diagonal terms (Rowenhorst eq. A.11 with P = -1)
    x = np.where(g[..., 2, 1] < g[..., 1, 2], -x, x)
    y = np.where(g[..., 0, 2] < g[..., 2, 0], -y, y)
    z = np.where(g[..., 1, 0] < g[..., 0, 1], -z, z)
    q = np.stack([w, x, y, z], axis=-1)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` (P = -1, passive) -> rotation matrix."""
    q = np.asarray(q, dtype=float)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    qbar = w * w - (x * x + y * y + z * z)
    g = np.empty(q.shape[:-1] + (3, 3))
    g[..., 0, 0] = qbar + 2 * x * x
    g[..., 1, 1] = qbar + 2 * y * y
    g[..., 2, 2] = qbar + 2 * z * z
    g[..., 0, 1] = 2 * (x * y - w * z)
    g[..., 1, 0] = 2 * (x * y + w * z)
    g[..., 0, 2] = 2 * (x * z + w * y)
    g[..., 2, 0] = 2 * (x * z - w * y)
    g[..., 1, 2] = 2 * (y * z - w * x)
    g[..., 2, 1] = 2 * (y * z + w * x)
    return g


def random_matrices(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orientation matrices uniformly distributed on SO(3) (Haar measure).

    Uses uniformly distributed unit quaternions (Shoemake 1992).
    """
    u1, u2, u3 = rng.random((3, n))
    q = np.stack([np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
                  np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
                  np.sqrt(u1) * np.sin(2 * np.pi * u3),
                  np.sqrt(u1) * np.cos(2 * np.pi * u3)], axis=-1)
    q[q[:, 0] < 0] *= -1
    return quaternion_to_matrix(q)


def axis_angle_to_matrix(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """*Active* rotation matrix about ``axis`` (``(..., 3)``) by ``angle`` (radians).

    ``R @ v`` turns the vector ``v`` by ``angle`` about ``axis`` (right-hand rule).
    Rotating a crystal actively by ``R`` changes its orientation matrix from
    ``g`` to ``g @ R.T``.
    """
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.asarray(angle, dtype=float)[..., None, None]
    K = np.zeros(axis.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2] = -axis[..., 2], axis[..., 1]
    K[..., 1, 0], K[..., 1, 2] = axis[..., 2], -axis[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -axis[..., 1], axis[..., 0]
    return np.eye(3) + np.sin(angle) * K + (1.0 - np.cos(angle)) * (K @ K)


def polar_rotation(F: np.ndarray) -> np.ndarray:
    """Rotation ``R`` of the polar decomposition ``F = R U`` (``(..., 3, 3)``).

    Computed from the SVD ``F = W S V^T``, ``R = W V^T``; exact for any
    invertible ``F`` with ``det F > 0``.
    """
    W, _, Vt = np.linalg.svd(np.asarray(F, dtype=float))
    return W @ Vt


def cubic_symmetry_operators() -> np.ndarray:
    """The 24 proper rotations of the cubic point group 432, ``(24, 3, 3)``."""
    ops = []
    for perm in ([0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1], [2, 1, 0], [1, 0, 2]):
        for signs in np.ndindex(2, 2, 2):
            M = np.zeros((3, 3))
            M[[0, 1, 2], perm] = np.where(np.array(signs) == 1, -1.0, 1.0)
            if np.linalg.det(M) > 0:
                ops.append(M)
    return np.array(ops)


def misorientation_angle(g_a: np.ndarray, g_b: np.ndarray, symmetry: np.ndarray | None = None) -> np.ndarray:
    """Disorientation angle (radians) between orientation matrices ``g_a`` and ``g_b``.

    Args:
        g_a, g_b: ``(..., 3, 3)`` passive orientation matrices.
        symmetry: ``(k, 3, 3)`` crystal symmetry operators (default: cubic 432).
            For no symmetry reduction pass ``np.eye(3)[None]``.

    Returns:
        ``(...)`` smallest rotation angle among the symmetric equivalents.
    """
    if symmetry is None:
        symmetry = cubic_symmetry_operators()
    delta = np.asarray(g_b) @ np.swapaxes(np.asarray(g_a), -1, -2)  # crystal a -> crystal b
    traces = np.einsum("kij,...ji->...k", symmetry, delta)
    cos = np.clip((traces.max(axis=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.arccos(cos)


def validate_euler(euler: np.ndarray, what: str = "Euler angles") -> np.ndarray:
    """Check Bunge angles (radians) for NaN and range; returns a float copy.

    Accepted ranges: ``phi1, phi2`` in ``[0, 2 pi]`` and ``Phi`` in ``[0, pi]``
    with a tolerance of 1e-6 rad (values written in degrees are caught here).

    Raises:
        InputFileError: naming the first bad value.
    """
    from .errors import InputFileError

    euler = np.array(euler, dtype=float)
    if euler.shape[-1:] != (3,):
        raise InputFileError(f"{what}: expected 3 angles per point, got shape {euler.shape}")
    if not np.all(np.isfinite(euler)):
        raise InputFileError(f"{what}: {int(np.sum(~np.isfinite(euler)))} values are NaN or infinite")
    tol = 1e-6
    for k, (name, hi) in enumerate((("phi1", _TWO_PI), ("Phi", np.pi), ("phi2", _TWO_PI))):
        bad = (euler[..., k] < -tol) | (euler[..., k] > hi + tol)
        if np.any(bad):
            val = euler[..., k][bad].flat[0]
            raise InputFileError(
                f"{what}: {name} = {val:.6g} is outside [0, {hi:.6g}] rad (angles must be Bunge radians)")
    return euler
