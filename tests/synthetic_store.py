"""A campaign store with a closed-form response, for surrogate tests (no FEM solve).

Each voxel answers its load locally (the Voigt/Taylor assumption: uniform
strain): Hencky strain = the applied strain tensor, Cauchy stress =
``C_lab(g) : strain`` with the crystal's cubic stiffness rotated to the lab; the
lattice rotates about z by ``strain * T_1112(g)``; slip per system is
``max(0, |m_s| strain - 1e-3)``. So a model that learns must reproduce a
known, orientation-dependent function, and the store is made in a second.
"""

from __future__ import annotations

import numpy as np

from solver import store as st
from solver.loading import loading_from_config
from solver.materials import material_from_config
from solver.rotations import euler_to_matrix, matrix_to_euler, random_matrices
from solver.tensors import rotate_stiffness, to_voigt
from surrogate import features

DIRECTIONS = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 1]]
MODES = ["tension", "compression", "shear"]


def voronoi_map(n: int, grains: int, rng) -> np.ndarray:
    """Periodic Voronoi grain ids on an ``n x n`` map."""
    seeds = rng.random((grains, 2)) * n
    y, x = np.mgrid[0:n, 0:n] + 0.5
    d = np.abs(np.stack([y, x], -1)[:, :, None, :] - seeds)
    d = np.minimum(d, n - d)
    return np.argmin((d ** 2).sum(-1), axis=-1).astype(np.int32)


def make_store(path, *, samples: int = 12, n: int = 8, steps: int = 3, seed: int = 0, material: str = "Al-DAMASK",
               directions=None, grid=None, config=None):
    """Write a finished synthetic store; returns its path."""
    rng = np.random.default_rng(seed)
    mat = material_from_config({"preset": material})
    C = mat.stiffness_tensor()
    directions = DIRECTIONS if directions is None else directions
    grid = (1, n, n) if grid is None else grid
    cfg = config or {"synthetic": True, "seed": seed, "samples": samples, "n": n, "material": material}
    group = st.create_store(path, n_samples=samples, grid_shape=grid, n_steps=steps, n_slip=12, config=cfg,
                            material=mat.as_dict(), lattice="fcc")
    nz, ny, nx = grid
    for i in range(samples):
        gid = voronoi_map(ny, 4, rng) if nz == 1 else rng.integers(0, 3, size=grid)
        gid = gid.reshape(grid)
        g_grain = random_matrices(int(gid.max()) + 1, rng)
        g0 = g_grain[gid]
        mode = MODES[i % len(MODES)]
        direction = np.asarray(directions[i % len(directions)], dtype=float)
        direction /= np.linalg.norm(direction)
        strain_max = float(rng.uniform(0.002, 0.01))
        load = loading_from_config({"mode": mode, "direction": direction.tolist(), "strain": strain_max})
        time = np.linspace(0.0, load.duration, steps)
        S = features.nominal_stress_direction(mode, direction)
        m = features.schmid_factors(g0, S, "fcc")
        T1112 = features.cubic_orientation_tensor(g0)[..., 1]
        C_lab = rotate_stiffness(C, np.swapaxes(g0, -1, -2))  # crystal -> lab
        fields = {k: [] for k in ("stress", "strain", "euler", "slip", "slip_resistance", "von_mises_stress",
                                  "von_mises_strain")}
        macro_s, macro_e = [], []
        for t in time:
            e = load.strain * t / load.duration
            final = load.final * (t / load.duration)
            Fm = load.mean_deformation_gradient(final)
            eps = 0.5 * (Fm + Fm.T) - np.eye(3)
            eps_field = np.broadcast_to(eps, g0.shape)
            sigma = np.einsum("...ijkl,kl->...ij", C_lab, eps)
            angle = e * T1112
            c, s = np.cos(angle), np.sin(angle)
            R = np.zeros(g0.shape)
            R[..., 0, 0], R[..., 0, 1], R[..., 1, 0], R[..., 1, 1], R[..., 2, 2] = c, -s, s, c, 1.0
            g = g0 @ np.swapaxes(R, -1, -2)
            fields["stress"].append(to_voigt(sigma))
            fields["strain"].append(to_voigt(eps_field))
            fields["euler"].append(matrix_to_euler(g))
            fields["slip"].append(np.maximum(0.0, np.abs(m) * e - 1e-3))
            fields["slip_resistance"].append(np.full(m.shape, 31e6))
            fields["von_mises_stress"].append(np.zeros(grid))
            fields["von_mises_strain"].append(np.zeros(grid))
            macro_s.append(to_voigt(sigma).reshape(-1, 6).mean(0))
            macro_e.append(to_voigt(eps))
        sample = {k: np.stack(v) for k, v in fields.items()}
        sample.update({"euler0": matrix_to_euler(g0), "grain_id": gid, "load_mode": mode,
                       "load_direction": direction, "load_strain": strain_max, "load_rate": load.rate,
                       "wall_time": 0.0, "increments": steps - 1, "newton_iterations": 0, "cutbacks": 0,
                       "time": time, "macro_stress": np.array(macro_s), "macro_strain": np.array(macro_e)})
        st.write_sample(group, i, sample)
        st.mark_done(group, i)
    st.consolidate(path)
    return path


def orientation_check(path, i=0):
    """Initial orientations of sample ``i`` as matrices (for tests)."""
    group = st.open_store(path)
    return euler_to_matrix(group["euler0"][i][0])
