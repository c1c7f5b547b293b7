"""Nye tensor of plastic distortion fields (solver.nye) against closed forms.

Fields with a known curl: single slip ``Fp = I + gamma(x) m (x) n`` (``A = -m (x) (grad gamma x n)``),
finite lattice rotations (tilt and twist: ``Fp = R^T``, Nye's relation ``alpha = tr(kappa) I - kappa^T`` in
the small-rotation limit), compatible distortions (zero), with periodic and one-sided differences; the
observed order of the differences is asserted.
"""

import numpy as np
import pytest

from solver import nye
from solver.errors import ConfigError

L = 1.0e-6  # m


def centres(n, nz=None, L=L):
    """Voxel centres ``(nz, ny, nx, 3)`` of an n x n x nz grid of size L^3 (nz = n by default)."""
    nz = n if nz is None else nz
    h = np.array([L / n, L / n, L / nz])
    x, y, z = ((np.arange(m) + 0.5) * hk for m, hk in zip((n, n, nz), h))
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    return np.stack([X, Y, Z], axis=-1), h


def order(errors):
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


def rot_z(theta):
    c, s = np.cos(theta), np.sin(theta)
    R = np.zeros(theta.shape + (3, 3))
    R[..., 0, 0] = R[..., 1, 1] = c
    R[..., 0, 1], R[..., 1, 0] = -s, s
    R[..., 2, 2] = 1.0
    return R


M = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
N_ = np.array([-1.0, 1.0, 1.0]) / np.sqrt(3.0)


def single_slip(X, periodic):
    """gamma and its gradient: periodic trigonometric, or a non-periodic smooth field."""
    k = 2 * np.pi / L
    x, y, z = X[..., 0], X[..., 1], X[..., 2]
    if periodic:
        g = 0.01 * np.sin(k * x) * np.cos(2 * k * y) * np.cos(k * z + 0.3)
        dg = 0.01 * np.stack([k * np.cos(k * x) * np.cos(2 * k * y) * np.cos(k * z + 0.3),
                              -2 * k * np.sin(k * x) * np.sin(2 * k * y) * np.cos(k * z + 0.3),
                              -k * np.sin(k * x) * np.cos(2 * k * y) * np.sin(k * z + 0.3)], axis=-1)
    else:
        g = 0.01 * np.exp(x / L) * np.sin(2 * y / L) * (1 + z / L)
        dg = 0.01 * np.stack([np.exp(x / L) / L * np.sin(2 * y / L) * (1 + z / L),
                              np.exp(x / L) * 2 / L * np.cos(2 * y / L) * (1 + z / L),
                              np.exp(x / L) * np.sin(2 * y / L) / L], axis=-1)
    return g, dg


@pytest.mark.parametrize("periodic", [True, False])
def test_single_slip_closed_form_and_second_order(periodic):
    """Fp = I + gamma m (x) n: A = -Curl Fp = -m (x) (grad gamma x n), to second order (periodic / one-sided)."""
    errors = []
    for n in (12, 24, 48):
        X, h = centres(n)
        g, dg = single_slip(X, periodic)
        Fp = np.eye(3) + g[..., None, None] * np.outer(M, N_)
        A = nye.nye_tensor(Fp, h, periodic)
        exact = -np.einsum("i,...j->...ij", M, np.cross(dg, N_))
        errors.append(np.abs(A - exact).max() / np.abs(exact).max())
    assert errors[-1] < 2e-2
    assert np.all(order(errors) > 1.85), (errors, order(errors))
    # GND density of single slip: |alpha| / b = |grad gamma x n| / b
    b = 2.56e-10
    rho = nye.gnd_density(A, b)
    assert rho.shape == X.shape[:3]
    assert np.allclose(rho, np.linalg.norm(np.cross(dg, N_), axis=-1) / b, rtol=2e-2,
                       atol=2e-3 * np.abs(rho).max())


def test_edge_dislocation_content_is_the_burgers_vector():
    """A slipped band ending inside the cell: the flux of alpha_13 through the x-y plane is b (and its sign)."""
    n, b = 64, 2.56e-10
    X, h = centres(n, nz=1)
    x, y = X[..., 0] / L, X[..., 1] / L
    width = 0.2  # band |y - 0.5| < 0.1 L slipped by b for x < 0.6 L (smoothed over a few voxels)
    band = 0.5 * (np.tanh((y - 0.4) / 0.02) - np.tanh((y - 0.6) / 0.02))
    ending = 0.5 * (1 - np.tanh((x - 0.6) / 0.03))
    gamma = b / (width * L) * band * ending  # shear: Up = gamma e_x (x) e_y, so int gamma dy = b
    Fp = np.eye(3) + gamma[..., None, None] * np.outer([1, 0, 0], [0, 1, 0])
    A = nye.nye_tensor(Fp, h, (False, False, True))
    flux = A.sum(axis=(0, 1, 2)) * h[0] * h[1]  # int alpha e_z dA
    assert flux[0, 2] == pytest.approx(b, rel=1e-3, abs=0)  # alpha_13: +b, line along +z
    assert np.abs(np.delete(flux.ravel(), 2)).max() < 1e-9 * b


@pytest.mark.parametrize("periodic", [True, False])
def test_lattice_curvature_tilt_and_twist(periodic):
    """Fp = R(theta)^T, F = I: a lattice rotation by theta about z, bent (theta = k x) or twisted (theta = k z).

    Finite rotations: tilt A_13 = -k cos(kx), A_23 = k sin(kx); twist A = k [[c, s, 0], [-s, c, 0], [0, 0, 0]].
    Small rotations: Nye's relation alpha = tr(kappa) I - kappa^T, kappa = d omega / dx.
    """
    k = 2 * np.pi / L if periodic else 0.3 / L  # periodic: one full turn across the cell
    for case in ("tilt", "twist"):
        errors = []
        for n in (16, 32, 64):
            X, h = centres(n)
            theta = k * (X[..., 0] if case == "tilt" else X[..., 2])
            Fp = np.swapaxes(rot_z(theta), -1, -2)
            A = nye.nye_tensor(Fp, h, periodic)
            exact = np.zeros(A.shape)
            c, s = np.cos(theta), np.sin(theta)
            if case == "tilt":
                exact[..., 0, 2], exact[..., 1, 2] = -k * c, k * s
            else:
                exact[..., 0, 0] = exact[..., 1, 1] = k * c
                exact[..., 0, 1], exact[..., 1, 0] = k * s, -k * s
            errors.append(np.abs(A - exact).max() / k)
        assert errors[-1] < 1e-2 and np.all(order(errors) > 1.85), (case, errors)
        if not periodic:  # small rotations (|theta| < 0.3): Nye's relation to O(theta)
            kappa = np.zeros((3, 3))
            kappa[2, 0 if case == "tilt" else 2] = k
            nye_relation = np.trace(kappa) * np.eye(3) - kappa.T
            assert np.abs(A - nye_relation).max() < 0.31 * k
            near_origin = theta < 0.02
            assert np.abs(A[near_origin] - nye_relation).max() < 0.03 * k


def test_compatible_distortion_has_no_dislocations():
    """Up = grad u (sampled closed form, periodic u of plane waves): alpha -> 0 at second order."""
    k = 2 * np.pi / L
    # u_i = a_i sin(q . x + phase_i): grad u_ij = a_i q_j cos(q . x + phase_i)
    waves = [(np.array([1.0, 2.0, -1.0]) * k, np.array([1.0, -0.5, 0.3]), 0.2),
             (np.array([0.0, 1.0, 3.0]) * k, np.array([0.2, 0.7, -1.0]), 1.1)]
    errors = []
    for n in (12, 24, 48):
        X, h = centres(n)
        grad_u = np.zeros(X.shape[:3] + (3, 3))
        for q, a, phase in waves:
            grad_u += 1e-3 * L * np.cos(X @ q + phase)[..., None, None] * np.outer(a, q)
        errors.append(np.abs(nye.nye_from_distortion(grad_u, h, True)).max() / (1e-3 * L * 10 * k * k))
    assert errors[0] > 1e-2  # not a discrete identity: the differences' error is measured
    assert errors[-1] < 1e-2 and np.all(order(errors) > 1.85), errors


def test_conventions_current_and_intermediate():
    """Nanson: current alpha = A F^T / det F, intermediate G = A Fp^T / det Fp (closed forms for uniform F)."""
    X, h = centres(16)
    g, _ = single_slip(X, True)
    Fp = np.eye(3) + g[..., None, None] * np.outer(M, N_)
    F = np.broadcast_to(np.array([[1.02, 0.01, 0.0], [0.0, 0.99, 0.03], [0.0, 0.0, 1.01]]), Fp.shape)
    A = nye.nye_tensor(Fp, h, True)
    cur = nye.nye_tensor(Fp, h, True, convention="current", F=F)
    assert np.allclose(cur, A @ F[0, 0, 0].T / np.linalg.det(F[0, 0, 0]))
    inter = nye.nye_tensor(Fp, h, True, convention="intermediate")
    assert np.allclose(inter, A @ np.swapaxes(Fp, -1, -2) / np.linalg.det(Fp)[..., None, None])
    with pytest.raises(ConfigError, match="needs the deformation gradient"):
        nye.nye_tensor(Fp, h, True, convention="current")
    with pytest.raises(ConfigError, match="unknown"):
        nye.nye_tensor(Fp, h, True, convention="spatial")


def test_store_layout_and_bad_input():
    from solver.store import FIELDS, TENSOR9_ORDER

    X, h = centres(8, nz=1)
    steps = np.stack([np.broadcast_to(np.eye(3), X.shape[:3] + (3, 3))] * 2)
    out = nye.store_field(steps, h, True)
    assert out.shape == (2, 1, 8, 8, 9) and out.dtype == np.float32
    assert FIELDS["nye"].dims[-1] == "tensor9" and FIELDS["nye"].attrs["components"] == list(TENSOR9_ORDER)
    a = np.arange(18.0).reshape(2, 3, 3)
    assert np.array_equal(nye.to_tensor9(a)[1], a[1].ravel())  # row-major 11, 12, 13, 21, ...
    assert np.array_equal(nye.from_tensor9(nye.to_tensor9(a)), a)
    with pytest.raises(ConfigError, match="spacing"):
        nye.curl(np.zeros((2, 2, 2, 3, 3)), [1.0, -1.0, 1.0])
    with pytest.raises(ConfigError, match="expected"):
        nye.curl(np.zeros((2, 3, 3)), 1.0)
    with pytest.raises(ConfigError, match="positive"):
        nye.gnd_density(np.zeros((1, 1, 1, 3, 3)), 0.0)
