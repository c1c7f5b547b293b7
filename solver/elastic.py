"""Anisotropic hyperelasticity (St Venant-Kirchhoff in the lattice frame).

The elastic limit of the crystal-plasticity kernel, with the same NumPy-in /
NumPy-out interface as :class:`solver.constitutive.CrystalPlasticity`: used to
verify the global solver against elastic closed forms and as the "incomplete
physics" of hybrid forecasts.

Conventions: ``S = C : E`` with ``E = (F^T F - I) / 2`` (Green-Lagrange),
``P = F S``; ``C`` is the crystal stiffness rotated into the lab frame by the
passive orientation ``g``: ``C_ijkl = g_ai g_bj g_ck g_dl C^crystal_abcd``.
Tangent ``A_iJkL = dP_iJ / dF_kL = delta_ik S_LJ + F_iM C_MJLQ F_kQ``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class KernelResult:
    """What a constitutive kernel returns for all points at once."""

    stress: np.ndarray  # (n,3,3) first Piola-Kirchhoff
    tangent: np.ndarray | None  # (n,3,3,3,3) dP/dF
    state: dict
    converged: np.ndarray  # (n,) bool
    iterations: int = 0


class AnisotropicElasticity:
    """St Venant-Kirchhoff with a per-point rotated cubic (or any) stiffness.

    Args:
        stiffness: ``(3,3,3,3)`` stiffness in the crystal frame (Pa).
        orientations: ``(n,3,3)`` passive orientation matrices (lab -> crystal).
        n_slip: slip systems of the material it stands in for: the state then
            carries zero ``accumulated_slip`` and ``slip_resistance`` of that
            width, so results fit the same store as crystal plasticity's.
    """

    def __init__(self, stiffness: np.ndarray, orientations: np.ndarray, n_slip: int = 0):
        g = np.asarray(orientations, dtype=float)
        self.orientations = g
        self.stiffness = np.einsum("nai,nbj,nck,ndl,abcd->nijkl", g, g, g, g, stiffness, optimize=True)
        self.n_points = g.shape[0]
        self.n_slip = int(n_slip)

    def initial_state(self) -> dict:
        if not self.n_slip:
            return {}
        zeros = np.zeros((self.n_points, self.n_slip))
        return {"accumulated_slip": zeros, "slip_resistance": zeros.copy()}

    def update(self, F, state, dt, tangent=True) -> KernelResult:
        F = np.asarray(F, dtype=float)
        E = 0.5 * (np.swapaxes(F, 1, 2) @ F - np.eye(3))
        S = np.einsum("nijkl,nkl->nij", self.stiffness, E, optimize=True)
        P = F @ S
        A = None
        if tangent:
            A = np.einsum("ik,nlj->nijkl", np.eye(3), S, optimize=True)
            A += np.einsum("nim,nmjlq,nkq->nijkl", F, self.stiffness, F, optimize=True)
        return KernelResult(P, A, dict(state), np.ones(F.shape[0], dtype=bool), 0)

    def lattice_orientation(self, F, state):
        """Current orientation: ``g0 @ R^T`` with ``R`` the rotation of ``F``."""
        from .rotations import polar_rotation

        return self.orientations @ np.swapaxes(polar_rotation(F), 1, 2)
