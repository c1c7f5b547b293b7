"""Inputs and targets of the surrogate, as pure NumPy functions over voxel maps.

Conventions (docs/surrogate.md; the same as :mod:`solver.rotations` and the store):

* Orientations are passive matrices ``g`` (lab -> crystal); the rows of ``g`` are
  the crystal axes written in the lab frame.
* Voxel maps are ``(y, x)`` (the 2-D maps of a campaign, ``z = 1`` squeezed);
  channels come first in the arrays handed to the models, ``(C, y, x)``.
* Symmetric tensors are Voigt 6-vectors 11, 22, 33, 23, 13, 12 (tensor components).

Orientation encoding. A cubic crystal's orientation is known only up to the 24
rotations of its point group, so raw Euler angles (or quaternions) give the
network two different numbers for one physical state, and jumps where the
angles wrap. We encode ``g`` by the fourth-order *cubic orientation tensor*
``T = sum_i a_i (x) a_i (x) a_i (x) a_i`` over the crystal axes ``a_i`` (rows of
``g``): it is invariant under the cubic group, smooth in ``g``, it determines
the orientation up to that group, and it is exactly the tensor through which
cubic elastic anisotropy enters the stiffness seen in the lab
(``C_lab = C12 I(x)I + 2 C44 I_sym + (C11 - C12 - 2 C44) T``). Its 15 independent
components are the orientation channels.

Load-aware physics features: the 12 Schmid factors of the nominal stress
direction of the load (in the lattice's fixed system order; they permute with
the symmetric equivalents, so they feed only the equivariant slip-system head),
the same sorted by magnitude (invariant, for the trunk), and the stiffness seen
by the load, ``S_hat : C_lab : S_hat``. Grain boundaries enter as a flag and
the largest disorientation to the four in-plane neighbours (periodic).

References:
    R. Bunge, Texture Analysis in Materials Science (1982), for the encoding of
    cubic orientations by fourth-order harmonics.
    Mianroodi, Siboni, Raabe, npj Comput. Mater. 7 (2021) 99 (voxel surrogates).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from solver import lattice as _lattice
from solver.loading import MODES, loading_from_config
from solver.rotations import cubic_symmetry_operators, euler_to_matrix
from solver.tensors import to_voigt

# index quadruples of the 15 independent components of a fully symmetric 4th-order tensor
_SYM4 = tuple(itertools.combinations_with_replacement(range(3), 4))

N_ORIENTATION = len(_SYM4)  # 15
N_MODES = len(MODES)
N_CONDITION = N_MODES + 6 + 2  # mode one-hot, nominal stress direction, applied strain, log10 rate
# regression targets per voxel: stress (6), strain (6), lattice rotation vector (3), total slip (1)
TARGETS = {"stress": slice(0, 6), "strain": slice(6, 12), "rotation": slice(12, 15), "slip": slice(15, 16)}
N_TARGETS = 16
# a voxel whose accumulated slip is below this is "elastic" and has no dominant slip system
PLASTIC_SLIP = 1.0e-4


def cubic_orientation_tensor(g: np.ndarray) -> np.ndarray:
    """Independent components of ``T = sum_i a_i^{(x)4}`` over the rows ``a_i`` of ``g``.

    Args:
        g: ``(..., 3, 3)`` passive orientation matrices.

    Returns:
        ``(..., 15)``, components ``T_abcd`` with ``a <= b <= c <= d``.
        Invariant under ``g -> S g`` for every cubic symmetry rotation ``S``.
    """
    g = np.asarray(g, dtype=float)
    out = np.empty(g.shape[:-2] + (N_ORIENTATION,))
    for k, (a, b, c, d) in enumerate(_SYM4):
        out[..., k] = np.sum(g[..., :, a] * g[..., :, b] * g[..., :, c] * g[..., :, d], axis=-1)
    return out


def nominal_stress_direction(mode: str, direction, second=None) -> np.ndarray:
    """Unit (Frobenius) macroscopic stress direction of a load mode, ``(3, 3)`` lab frame.

    Tension/compression along ``d``: ``+-d (x) d``; shear: ``sym(d (x) n)``;
    biaxial: ``d (x) d + e2 (x) e2``; plane strain (compression along ``d``,
    ``e2`` constrained): ``-(d (x) d) - 1/2 e2 (x) e2`` (Levy-Mises flow of an
    incompressible isotropic solid). ``e2`` is the loading frame's second axis
    (:func:`solver.loading.loading_frame`). This is the stress *direction*
    before any yielding: it sets the Schmid factors of the "plain Schmid"
    prediction and the load-aware features.
    """
    if mode == "deformation_gradient":
        raise ValueError("the nominal stress direction of a general deformation gradient is not defined")
    cfg = {"mode": mode, "direction": list(np.asarray(direction, dtype=float)), "strain": 0.01}
    if second is not None:
        cfg[{"shear": "normal", "plane_strain": "constrained", "biaxial": "second"}[mode]] = list(second)
    frame = loading_from_config(cfg).frame
    d, e2 = frame[:, 0], frame[:, 1]
    dd, ee = np.outer(d, d), np.outer(e2, e2)
    S = {"tension": dd, "compression": -dd, "shear": 0.5 * (np.outer(d, e2) + np.outer(e2, d)),
         "biaxial": dd + ee, "plane_strain": -dd - 0.5 * ee}[mode]
    return S / np.linalg.norm(S)


def load_condition(mode: str, direction, strain_now: float, rate: float) -> np.ndarray:
    """Conditioning vector of one load state, ``(N_CONDITION,)``.

    Mode one-hot (:data:`solver.loading.MODES` order), the nominal stress
    direction in Voigt form (shear components times sqrt 2, so the Euclidean
    norm of the 6-vector is the tensor's Frobenius norm), the applied engineering strain reached at this step and
    ``log10(rate)``.
    """
    onehot = np.zeros(N_MODES)
    onehot[MODES.index(mode)] = 1.0
    S = to_voigt(nominal_stress_direction(mode, direction))
    S[3:] *= math.sqrt(2.0)
    return np.concatenate([onehot, S, [float(strain_now), math.log10(float(rate))]])


def schmid_factors(g: np.ndarray, stress_direction: np.ndarray, lattice: str) -> np.ndarray:
    """Signed Schmid factors ``m_s = d_s . (g S g^T) n_s`` per voxel, ``(..., ns)``.

    Args:
        g: ``(..., 3, 3)`` orientations.
        stress_direction: ``(3, 3)`` lab-frame unit stress direction.
        lattice: ``'fcc'`` or ``'bcc'``; systems in :func:`solver.lattice.slip_systems` order.
    """
    P = _lattice.schmid_tensors(lattice)  # crystal frame
    S_crystal = np.einsum("...ia,ab,...jb->...ij", g, stress_direction, g)
    return np.einsum("sij,...ij->...s", P, S_crystal)


def load_stiffness(g: np.ndarray, stress_direction: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``S : C_lab : S`` per voxel (Pa): the stiffness the load direction sees, ``(...)``."""
    S_crystal = np.einsum("...ia,ab,...jb->...ij", g, stress_direction, g)
    return np.einsum("...ij,ijkl,...kl->...", S_crystal, C, S_crystal)


def boundary_features(g: np.ndarray, grain_id: np.ndarray) -> np.ndarray:
    """Grain-boundary flag and largest disorientation (rad) to the 4 in-plane neighbours.

    Args:
        g: ``(ny, nx, 3, 3)`` orientations; grain_id: ``(ny, nx)``. The map is periodic.

    Returns:
        ``(2, ny, nx)``: flag (1 where any neighbour is in another grain) and angle.
    """
    sym = cubic_symmetry_operators()
    flag = np.zeros(grain_id.shape)
    angle = np.zeros(grain_id.shape)
    for axis in (0, 1):
        for shift in (1, -1):
            other = np.roll(grain_id, shift, axis=axis)
            flag = np.maximum(flag, other != grain_id)
            g_other = np.roll(g, shift, axis=axis)
            delta = g_other @ np.swapaxes(g, -1, -2)
            cos = np.clip((np.einsum("kij,...ji->...k", sym, delta).max(-1) - 1.0) / 2.0, -1.0, 1.0)
            angle = np.maximum(angle, np.arccos(cos))
    return np.stack([flag, angle])


def lattice_rotation(g0: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Rotation vector (lab frame, rad) of the lattice rotation ``R`` with ``g^T = R g0^T``.

    Among the symmetric equivalents of ``g`` the one closest to ``g0`` is used, so
    a wrap of the stored Euler angles never shows as a large rotation.

    Args:
        g0, g: ``(..., 3, 3)`` initial and current orientations.

    Returns:
        ``(..., 3)`` axis times angle, ``|omega| <= pi``.
    """
    sym = cubic_symmetry_operators()
    # g^T S_k g0 for every symmetry operator k: (..., k, 3, 3), by broadcast matmuls (a 3-operand einsum is slow)
    candidates = (np.swapaxes(g, -1, -2)[..., None, :, :] @ sym) @ g0[..., None, :, :]
    traces = np.trace(candidates, axis1=-2, axis2=-1)
    best = np.take_along_axis(candidates, traces.argmax(-1)[..., None, None, None], axis=-3)[..., 0, :, :]
    return rotation_vector(best)


def rotation_vector(R: np.ndarray) -> np.ndarray:
    """Rotation vector (axis times angle) of rotation matrices ``(..., 3, 3)`` -> ``(..., 3)``."""
    from scipy.spatial.transform import Rotation

    shape = R.shape[:-2]
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(shape + (3,))


def rotation_matrix(omega: np.ndarray) -> np.ndarray:
    """Rotation matrices of rotation vectors ``(..., 3)`` -> ``(..., 3, 3)`` (Rodrigues)."""
    from scipy.spatial.transform import Rotation

    shape = omega.shape[:-1]
    return Rotation.from_rotvec(omega.reshape(-1, 3)).as_matrix().reshape(shape + (3, 3))


def deformed_orientation(g0: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Orientation after a lattice rotation ``omega``: ``g = g0 R(omega)^T``, ``(..., 3, 3)``."""
    return g0 @ np.swapaxes(rotation_matrix(omega), -1, -2)


def sample_inputs(euler0: np.ndarray, grain_id: np.ndarray, mode: str, direction, lattice: str,
                  stiffness: np.ndarray) -> dict[str, np.ndarray]:
    """Step-independent inputs of one sample.

    Args:
        euler0: ``(ny, nx, 3)`` Bunge angles (rad); grain_id: ``(ny, nx)``.
        mode, direction: the load; lattice: ``'fcc'``/``'bcc'``; stiffness: ``(3,3,3,3)`` crystal frame.

    Returns:
        ``fields``: ``(N_FIELD_CHANNELS, ny, nx)`` float32 invariant per-voxel channels;
        ``schmid``: ``(ns, ny, nx)`` float32 signed Schmid factors (system order).
    """
    g = euler_to_matrix(np.asarray(euler0, dtype=float))
    S = nominal_stress_direction(mode, direction)
    m = schmid_factors(g, S, lattice)
    fields = np.concatenate([
        np.moveaxis(cubic_orientation_tensor(g), -1, 0),
        np.moveaxis(-np.sort(-np.abs(m), axis=-1), -1, 0),
        load_stiffness(g, S, stiffness)[None] / 1.0e11,
        boundary_features(g, np.asarray(grain_id)),
    ])
    return {"fields": fields.astype(np.float32), "schmid": np.moveaxis(m, -1, 0).astype(np.float32)}


def microstructure_summary(fields: np.ndarray) -> np.ndarray:
    """Load-independent summary of a map's inputs, ``(N_ORIENTATION + 1,)``.

    The voxel mean of the cubic orientation tensor (the texture's fourth-order
    coefficients: isotropic for a random texture, far from it for a sharp one)
    and the grain-boundary fraction (grain size). Used to tell whether a map
    looks like the training maps.

    Args:
        fields: ``(C, ny, nx)`` channels of :func:`sample_inputs`.
    """
    fields = np.asarray(fields, dtype=np.float64)
    return np.concatenate([fields[:N_ORIENTATION].mean(axis=(1, 2)), [fields[-2].mean()]])


def n_field_channels(n_slip: int) -> int:
    """Number of per-voxel input channels of :func:`sample_inputs` (before the load condition)."""
    return N_ORIENTATION + n_slip + 1 + 2


def step_targets(g0: np.ndarray, stress: np.ndarray, strain: np.ndarray, euler: np.ndarray,
                 slip: np.ndarray) -> dict[str, np.ndarray]:
    """Regression targets and the dominant slip system of one step.

    Args:
        g0: ``(ny, nx, 3, 3)``; stress, strain: ``(ny, nx, 6)``; euler: ``(ny, nx, 3)``;
        slip: ``(ny, nx, ns)`` accumulated slip per system.

    Returns:
        ``values``: ``(N_TARGETS, ny, nx)`` float32 (Pa, 1, rad, 1);
        ``dominant``: ``(ny, nx)`` int64, the system with the most accumulated slip,
        -1 where the voxel is elastic (total slip < :data:`PLASTIC_SLIP`).
    """
    omega = lattice_rotation(g0, euler_to_matrix(np.asarray(euler, dtype=float)))
    total = slip.sum(-1, keepdims=True)
    values = np.concatenate([stress, strain, omega, total], axis=-1)
    dominant = np.where(total[..., 0] >= PLASTIC_SLIP, slip.argmax(-1), -1)
    return {"values": np.moveaxis(values, -1, 0).astype(np.float32), "dominant": dominant.astype(np.int64)}
