"""Crystal-plasticity kernel and tensor helpers: invariances, exact tangent, analytic limits."""

import numpy as np
import pytest

from solver import tensors
from solver.constitutive import CrystalPlasticity
from solver.errors import ConfigError
from solver.lattice import schmid_factors
from solver.materials import PRESETS
from solver.rotations import (axis_angle_to_matrix, cubic_symmetry_operators, euler_to_matrix,
                              random_matrices)

RNG = np.random.default_rng(20261121)


def _kernel(name, n, seed=0, **changes):
    mat = PRESETS[name].replace(**changes) if changes else PRESETS[name]
    return CrystalPlasticity(mat, random_matrices(n, np.random.default_rng(seed)))


def _random_F(n, eps, seed=1):
    return np.eye(3) + eps * np.random.default_rng(seed).standard_normal((n, 3, 3))


def _fd_tangent(cp, F, state, dt, h=1e-7):
    num = np.empty(F.shape[:1] + (3, 3, 3, 3))
    for k in range(3):
        for l in range(3):
            Fp, Fm = F.copy(), F.copy()
            Fp[:, k, l] += h
            Fm[:, k, l] -= h
            rp, rm = cp.update(Fp, state, dt, tangent=False), cp.update(Fm, state, dt, tangent=False)
            assert rp.converged.all() and rm.converged.all()
            num[..., k, l] = (rp.stress - rm.stress) / (2 * h)
    return num


# --- tensor helpers ------------------------------------------------------------------------

def test_voigt_round_trip_and_order():
    a = RNG.standard_normal((4, 3, 3))
    sym = a + np.swapaxes(a, 1, 2)
    v = tensors.to_voigt(sym)
    assert v.shape == (4, 6)
    np.testing.assert_array_equal(v[:, 3], sym[:, 1, 2])      # 23, no factor 2
    np.testing.assert_array_equal(v[:, 5], sym[:, 0, 1])      # 12
    np.testing.assert_allclose(tensors.from_voigt(v), sym)


def test_strain_measures_uniaxial_stretch():
    lam = 1.1
    F = np.diag([lam, 1.0, 1.0])
    R = axis_angle_to_matrix([1, 2, 3], 0.7)
    # ln V of R U: the left stretch is R U R^T, so the Hencky strain turns with R
    np.testing.assert_allclose(tensors.hencky_strain(F), np.diag([np.log(lam), 0, 0]), atol=1e-15)
    np.testing.assert_allclose(tensors.hencky_strain(R @ F), R @ np.diag([np.log(lam), 0, 0]) @ R.T,
                               atol=1e-14)
    np.testing.assert_allclose(tensors.green_lagrange(R @ F), np.diag([(lam**2 - 1) / 2, 0, 0]), atol=1e-14)
    e = 0.02
    assert tensors.von_mises_strain(np.diag([e, -e / 2, -e / 2])) == pytest.approx(e)
    assert tensors.von_mises_stress(np.diag([5.0, 0, 0])) == pytest.approx(5.0)
    assert tensors.von_mises_stress(np.diag([2.0, 2.0, 2.0])) == pytest.approx(0.0, abs=1e-15)
    tau = 3.0
    assert tensors.von_mises_stress(np.array([[0, tau, 0], [tau, 0, 0], [0, 0, 0]])) == pytest.approx(
        np.sqrt(3) * tau)


def test_cauchy_from_pk1():
    F = _random_F(1, 0.1)[0]
    sigma = RNG.standard_normal((3, 3))
    sigma = sigma + sigma.T
    P = np.linalg.det(F) * sigma @ np.linalg.inv(F).T
    np.testing.assert_allclose(tensors.cauchy_from_pk1(P, F), sigma, atol=1e-12)


def test_rotate_stiffness_is_rotating_stress_and_strain():
    C = PRESETS["Cu"].stiffness_tensor()
    g = euler_to_matrix([0.3, 1.1, 2.0])
    eps_lab = RNG.standard_normal((3, 3))
    eps_lab = eps_lab + eps_lab.T
    C_lab = tensors.rotate_stiffness(C, g.T)
    sig_lab = np.einsum("ijkl,kl->ij", C_lab, eps_lab)
    sig_crys = np.einsum("ijkl,kl->ij", C, g @ eps_lab @ g.T)
    np.testing.assert_allclose(sig_lab, g.T @ sig_crys @ g, rtol=1e-12, atol=1e-3)


# --- the kernel ----------------------------------------------------------------------------

def test_stress_free_reference_and_rigid_rotation():
    cp = _kernel("Al-DAMASK", 5)
    st = cp.initial_state()
    for F in (np.tile(np.eye(3), (5, 1, 1)), axis_angle_to_matrix(RNG.standard_normal((5, 3)), 0.9)):
        r = cp.update(F, st, 1.0)
        assert r.converged.all()
        assert np.abs(r.stress).max() < 1e-3              # Pa, against moduli of 1e11
        np.testing.assert_array_equal(r.state["slip_resistance"], st["slip_resistance"])
    # at F = I the tangent is the stiffness in lab components
    r = cp.update(np.tile(np.eye(3), (5, 1, 1)), st, 1.0)
    np.testing.assert_allclose(r.tangent, cp.elastic_stiffness_lab(), rtol=0, atol=1e-5 * PRESETS["Al-DAMASK"].C11)


def test_small_strain_elastic_stress():
    cp = _kernel("Fe-ferrite", 4)
    eps = 1e-6 * RNG.standard_normal((4, 3, 3))
    eps = eps + np.swapaxes(eps, 1, 2)
    r = cp.update(np.eye(3) + eps, cp.initial_state(), 1.0)
    expected = np.einsum("pijkl,pkl->pij", cp.elastic_stiffness_lab(), eps)
    np.testing.assert_allclose(r.stress, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name, eps, steps", [
    ("Al-DAMASK", 2e-5, 1),      # elastic (|tau/xi| < 1, no visible slip)
    ("Al-DAMASK", 3e-3, 1),      # plastic from the virgin state, hardening on
    ("Al-DAMASK", 2e-3, 2),      # second step: Fp and xi no longer trivial
    ("Fe-ferrite", 3e-3, 2),     # BCC, 24 systems, two families
    ("Cu", 2e-4, 2),             # soft FCC with strong latent hardening (a = 0.6)
])
def test_tangent_matches_finite_differences(name, eps, steps):
    cp = _kernel(name, 3)
    st = cp.initial_state()
    dt = 0.5
    F = np.tile(np.eye(3), (3, 1, 1))
    for s in range(steps):
        F = F + _random_F(3, eps, seed=10 + s) - np.eye(3)
        r = cp.update(F, st, dt)
        assert r.converged.all()
        if s < steps - 1:
            st = r.state
    if eps > 1e-4:
        assert np.abs(r.state["slip"] - st["slip"]).max() > 1e-4     # really plastic
    num = _fd_tangent(cp, F, st, dt)
    err = np.abs(num - r.tangent).max(axis=(1, 2, 3, 4)) / np.abs(r.tangent).max(axis=(1, 2, 3, 4))
    assert err.max() < 1e-6, err


def test_objectivity():
    cp = CrystalPlasticity(PRESETS["Fe-ferrite"], random_matrices(4, RNG), warm_start=False)
    st = cp.initial_state()
    F = _random_F(4, 3e-3, seed=3)
    Q = random_matrices(4, RNG)
    r, rq = cp.update(F, st, 1.0), cp.update(Q @ F, st, 1.0)
    assert r.converged.all() and rq.converged.all()
    np.testing.assert_allclose(rq.stress, Q @ r.stress, rtol=0, atol=1e-8 * np.abs(r.stress).max())
    for key in r.state:
        np.testing.assert_allclose(rq.state[key], r.state[key], rtol=1e-9, atol=1e-14)
    # the tangent turns with Q on the spatial indices: dP'/dF' = Q (dP/dF) Q^T
    np.testing.assert_allclose(rq.tangent, np.einsum("pia,pajcl,pkc->pijkl", Q, r.tangent, Q),
                               rtol=0, atol=1e-7 * np.abs(r.tangent).max())


def test_cubic_symmetry_invariance():
    g0 = random_matrices(1, RNG)[0]
    ops = cubic_symmetry_operators()[[3, 7, 13, 22]]
    mat = PRESETS["Al-DAMASK"]
    F = _random_F(1, 3e-3, seed=5)
    cp = CrystalPlasticity(mat, g0[None])
    ref = cp.update(F, cp.initial_state(), 1.0)
    for S in ops:
        cp = CrystalPlasticity(mat, (S @ g0)[None])
        r = cp.update(F, cp.initial_state(), 1.0)
        np.testing.assert_allclose(r.stress, ref.stress, rtol=0, atol=1e-7 * np.abs(ref.stress).max())
        np.testing.assert_allclose(np.sort(r.state["slip_resistance"]), np.sort(ref.state["slip_resistance"]),
                                   rtol=1e-9)
        np.testing.assert_allclose(np.sort(np.abs(r.state["slip"])), np.sort(np.abs(ref.state["slip"])),
                                   rtol=1e-7, atol=1e-15)


def test_no_hardening_keeps_resistance_and_state_is_not_modified():
    cp = _kernel("Fe-ferrite", 3, hardening_modulus=0.0)
    st = cp.initial_state()
    before = {k: v.copy() for k, v in st.items()}
    r = cp.update(_random_F(3, 3e-3), st, 1.0)
    assert r.converged.all()
    np.testing.assert_array_equal(r.state["slip_resistance"], st["slip_resistance"])
    assert np.abs(r.state["slip"]).max() > 1e-3
    for k in st:
        np.testing.assert_array_equal(st[k], before[k])
    np.testing.assert_allclose(r.state["accumulated_slip"], np.abs(r.state["slip"]))
    np.testing.assert_allclose(np.linalg.det(r.state["plastic_deformation"]), 1.0, rtol=1e-13)


def test_failures_are_flagged_not_nan():
    cp = _kernel("Al-DAMASK", 4)
    st = cp.initial_state()
    F = _random_F(4, 3e-3)
    F[1] = np.diag([-1.0, 1.0, 1.0])                  # det F < 0
    F[2, 0, 0] = np.nan
    r = cp.update(F, st, 1.0)
    assert r.converged.tolist() == [True, False, False, True]
    assert np.isfinite(r.stress).all() and np.isfinite(r.tangent).all()
    for k in st:
        np.testing.assert_array_equal(r.state[k][1:3], st[k][1:3])
    # no Newton iterations allowed: the plastic points fail and return the elastic trial
    tight = CrystalPlasticity(cp.material, cp.orientations, max_iterations=0)
    F = _random_F(4, 3e-3)
    r = tight.update(F, st, 1.0)
    assert not r.converged.any()
    elastic = CrystalPlasticity(cp.material.replace(slip_resistance_initial=(1e12,),
                                                    slip_resistance_saturation=(1e13,)), cp.orientations)
    np.testing.assert_allclose(r.stress, elastic.update(F, elastic.initial_state(), 1.0).stress, rtol=1e-12)
    np.testing.assert_array_equal(r.state["slip"], st["slip"])


def test_uniaxial_steady_state_flow_stress():
    """[001] tension, h0 = 0: at steady state the 8 systems with Schmid factor 1/sqrt(6)
    slip at gdot = gdot0 when the axial rate is 8 gdot0 / sqrt(6); then tau = xi_0, so the
    axial Cauchy stress is xi_0 sqrt(6) (validation.md: flow stress xi_0 / m at gdot0)."""
    mat = PRESETS["Al-DAMASK"].replace(hardening_modulus=0.0)
    cp = CrystalPlasticity(mat, np.eye(3)[None])
    m = 1.0 / np.sqrt(6.0)
    rate = 8 * m * mat.shear_rate_reference
    st = cp.initial_state()
    lam1 = lam2 = 1.0
    dt = 0.1
    for _ in range(40):
        lam1 *= np.exp(rate * dt)
        for _ in range(10):                            # lateral faces traction free, by the tangent
            F = np.diag([lam1, lam2, lam2])[None]
            r = cp.update(F, st, dt)
            if abs(r.stress[0, 1, 1]) < 1.0:
                break
            lam2 -= r.stress[0, 1, 1] / (r.tangent[0, 1, 1, 1, 1] + r.tangent[0, 1, 1, 2, 2])
        st = r.state
    sigma = tensors.cauchy_from_pk1(r.stress, F)[0]
    assert sigma[0, 0] == pytest.approx(mat.slip_resistance_initial[0] / m, rel=2e-3)
    assert abs(sigma[1, 1]) < 10.0 and abs(sigma[0, 1]) < 10.0
    slip = np.abs(r.state["slip"][0])
    active = np.abs(schmid_factors("fcc", [1, 0, 0])) > 0.4
    assert active.sum() == 8
    np.testing.assert_allclose(slip[active], slip[active][0], rtol=1e-8)
    assert slip[~active].max() < 1e-12


def test_lattice_orientation_follows_elastic_rotation():
    cp = _kernel("Cu", 3)
    R = axis_angle_to_matrix(RNG.standard_normal((3, 3)), 0.4)
    g = cp.lattice_orientation(R, cp.initial_state())
    np.testing.assert_allclose(g, cp.orientations @ np.swapaxes(R, 1, 2), atol=1e-14)


def test_bad_orientations():
    with pytest.raises(ConfigError, match="not proper rotations"):
        CrystalPlasticity(PRESETS["Cu"], np.diag([1.0, 1.0, -1.0])[None])
    with pytest.raises(ConfigError, match="expected shape"):
        CrystalPlasticity(PRESETS["Cu"], np.eye(4)[None])
