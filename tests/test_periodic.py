"""Periodic mixed boundary conditions and the global solver, on elastic crystals.

Checked against closed forms: single-crystal directional moduli of Cu
(validation.md: 66.8 GPa along <100>, 192.1 GPa along <111>), uniaxial stress
state, periodicity of the fluctuation, the prescribed mean deformation, and
serial == parallel.
"""

import numpy as np
import pytest

from solver.elastic import AnisotropicElasticity
from solver.loading import loading_from_config
from solver.microstructure import Microstructure
from solver.rotations import euler_to_matrix, random_matrices, matrix_to_euler

pytest.importorskip("dolfinx")
from mpi4py import MPI  # noqa: E402

from solver.fem import CrystalPlasticitySolver  # noqa: E402

# Cu, Takeuchi 1975 (reference/materials.md)
C11, C12, C44 = 168.9e9, 121.8e9, 75.8e9


def cubic_stiffness(c11, c12, c44):
    C = np.zeros((3, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            C[i, i, j, j] = c12
        C[i, i, i, i] = c11
        for j in range(3):
            if i != j:
                C[i, j, i, j] = C[i, j, j, i] = c44
    return C


def elastic_solver(comm, euler, loading_cfg, boundary="periodic", size=1e-4):
    nz, ny, nx = euler.shape[:3]
    ms = Microstructure(euler=euler, grain_id=np.zeros(euler.shape[:3], dtype=np.int32),
                        size=np.array([size * nx / max(nx, ny, nz), size * ny / max(nx, ny, nz), size * nz / max(nx, ny, nz)]))
    C = cubic_stiffness(C11, C12, C44)
    return CrystalPlasticitySolver(comm, ms, lambda g: AnisotropicElasticity(C, g),
                                   loading_from_config(loading_cfg), boundary=boundary, stress_tolerance=1e-3)


@pytest.mark.mpi
@pytest.mark.parametrize("direction, modulus_gpa", [([1, 0, 0], 66.8), ([1, 1, 1], 192.1), ([0, 0, 1], 66.8)])
def test_single_crystal_directional_modulus(direction, modulus_gpa):
    euler = np.zeros((2, 2, 2, 3))
    s = elastic_solver(MPI.COMM_WORLD, euler, {"mode": "tension", "direction": direction, "strain": 1e-5,
                                               "increments": 1})
    s.advance(s.loading.duration)
    F, sigma, _ = s.macro_fields()
    d = s.loading.direction
    strain = d @ (F - np.eye(3)) @ d
    E = d @ sigma @ d / strain
    assert E / 1e9 == pytest.approx(modulus_gpa, rel=0.01)
    # uniaxial: every stress component but sigma_dd vanishes (to solver tolerance)
    assert np.abs(sigma - (d @ sigma @ d) * np.outer(d, d)).max() < 1e-6 * abs(d @ sigma @ d)
    s.destroy()


def _node_displacements(s):
    V = s.V
    n = V.dofmap.index_map.size_local
    X = V.tabulate_dof_coordinates()[:n]
    u = s.u.x.array[: 3 * n].reshape(n, 3)
    return X, u


@pytest.mark.mpi
def test_periodic_fluctuation_and_mean_deformation():
    """Heterogeneous cell in shear: u(X + L e_k) - u(X) = (F - I) L e_k and <F> = F_mean."""
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(4)
    euler = matrix_to_euler(random_matrices(3 * 4 * 5, rng)).reshape(3, 4, 5, 3)  # (z, y, x)
    s = elastic_solver(comm, euler, {"mode": "shear", "direction": [1, 0, 0], "normal": [0, 1, 0],
                                     "strain": 2e-3, "increments": 1})
    s.advance(s.loading.duration)
    F_mean, sigma, P_mean = s.macro_fields()
    # prescribed part as prescribed: F = I + 0.002 e1 (x) e2 plus free normal stretches only
    assert F_mean[0, 1] == pytest.approx(2e-3, rel=1e-9)
    for i, j in [(1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]:
        assert abs(F_mean[i, j]) < 1e-12
    # free components: normal mean stresses vanish (PK1, conjugate to the free stretches)
    assert np.abs(np.diag(P_mean)).max() < 1e-6 * np.abs(P_mean).max()
    # periodicity of the fluctuation w = u - (F - I) X on all node pairs, gathered on every rank
    X, u = _node_displacements(s)
    X = np.concatenate(comm.allgather(X))
    u = np.concatenate(comm.allgather(u))
    L = np.array([5, 4, 3]) * 1e-4 / 5
    w = u - X @ (F_mean - np.eye(3)).T
    key = {tuple(np.rint(x / (L / np.array([5, 4, 3]))).astype(int) % np.array([5, 4, 3])): wi for x, wi in zip(X, w)}
    for x, wi in zip(X, w):
        ref = key[tuple(np.rint(x / (L / np.array([5, 4, 3]))).astype(int) % np.array([5, 4, 3]))]
        assert np.allclose(wi, ref, atol=1e-12 * L.max())
    # and the fluctuation is really there (heterogeneous cell), so the check has teeth
    assert np.abs(w).max() > 1e-4 * 2e-3 * L.max()
    s.destroy()


@pytest.mark.mpi
def test_parallel_equals_serial():
    """The same heterogeneous cell on COMM_WORLD and on COMM_SELF gives the same macroscopic response."""
    rng = np.random.default_rng(11)
    euler = matrix_to_euler(random_matrices(4 * 4 * 4, rng)).reshape(4, 4, 4, 3)
    cfg = {"mode": "tension", "direction": [1, 2, 3], "strain": 1e-3, "increments": 2}
    results = []
    for comm in (MPI.COMM_WORLD, MPI.COMM_SELF):
        s = elastic_solver(comm, euler, cfg)
        s.advance(s.loading.duration)
        results.append(s.macro_fields()[1])
        s.destroy()
    assert np.allclose(results[0], results[1], rtol=1e-7, atol=1e-7 * np.abs(results[1]).max())


@pytest.mark.mpi
def test_rigid_rotation_is_stress_free_and_rotates_lattice():
    """F = Q (a pure rotation) gives zero stress and orientation g0 Q^T (objectivity of the whole chain)."""
    rng = np.random.default_rng(2)
    g0 = random_matrices(8, rng)
    euler = matrix_to_euler(g0).reshape(2, 2, 2, 3)
    angle = np.deg2rad(30.0)
    Q = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    s = elastic_solver(MPI.COMM_WORLD, euler, {"mode": "deformation_gradient", "F": Q.tolist(), "increments": 3})
    for k in range(1, 4):
        s.advance(k * s.loading.duration / 3)
    _, sigma, _ = s.macro_fields()
    assert np.abs(sigma).max() < 1e-3  # Pa, against moduli of 1e11 Pa
    cf = s.cell_fields()
    g_expected = euler_to_matrix(euler).reshape(-1, 3, 3)[s.voxel] @ Q.T
    assert np.allclose(cf["orientation"], g_expected, atol=1e-10)
    s.destroy()
