"""Slip-system geometry and interaction matrices against crystallography and DAMASK."""

import numpy as np
import pytest

from solver import lattice
from solver.errors import ConfigError

# DAMASK 3.1 src/crystal.f90, CF_INTERACTIONSLIPSLIP restricted to the 12 {111}<110> systems
# (row = reacting, column = acting), copied here as the external reference.
DAMASK_FCC_TYPES = np.array([
    [1, 2, 2, 4, 7, 6, 3, 5, 5, 4, 6, 7],
    [2, 1, 2, 7, 4, 6, 6, 4, 7, 5, 3, 5],
    [2, 2, 1, 5, 5, 3, 6, 7, 4, 7, 6, 4],
    [4, 7, 6, 1, 2, 2, 4, 6, 7, 3, 5, 5],
    [7, 4, 6, 2, 1, 2, 5, 3, 5, 6, 4, 7],
    [5, 5, 3, 2, 2, 1, 7, 6, 4, 6, 7, 4],
    [3, 5, 5, 4, 6, 7, 1, 2, 2, 4, 7, 6],
    [6, 4, 7, 5, 3, 5, 2, 1, 2, 7, 4, 6],
    [6, 7, 4, 7, 6, 4, 2, 2, 1, 5, 5, 3],
    [4, 6, 7, 3, 5, 5, 4, 7, 6, 1, 2, 2],
    [5, 3, 5, 6, 4, 7, 7, 4, 6, 2, 1, 2],
    [7, 6, 4, 6, 7, 4, 5, 5, 3, 2, 2, 1],
])


@pytest.mark.parametrize("lat, ns, families", [("fcc", 12, (12,)), ("bcc", 24, (12, 12))])
def test_geometry(lat, ns, families):
    d, n = lattice.slip_systems(lat)
    assert d.shape == n.shape == (ns, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    np.testing.assert_allclose(np.sum(d * n, axis=1), 0.0, atol=1e-15)
    assert lattice.family_sizes(lat) == families
    # no system twice, also not with reversed direction (the same system)
    P = lattice.schmid_tensors(lat).reshape(ns, 9)
    for a in range(ns):
        others = np.delete(P, a, axis=0)
        assert np.min(np.abs(others - P[a]).max(axis=1)) > 1e-6
        assert np.min(np.abs(others + P[a]).max(axis=1)) > 1e-6
    np.testing.assert_allclose(np.trace(lattice.schmid_tensors(lat), axis1=1, axis2=2), 0.0, atol=1e-15)


def test_families_are_the_right_planes_and_directions():
    d, n = lattice.slip_systems_miller("fcc")
    assert np.all(np.abs(n) == 1) and np.all(np.sort(np.abs(d), axis=1) == [0, 1, 1])
    d, n = lattice.slip_systems_miller("bcc")
    assert np.all(np.abs(d) == 1)
    assert np.all(np.sort(np.abs(n[:12]), axis=1) == [0, 1, 1])
    assert np.all(np.sort(np.abs(n[12:]), axis=1) == [1, 1, 2])


def test_damask_order_first_systems():
    # DAMASK 3.1 crystal.f90: cF B2 = [0 1 -1](1 1 1), D6 = [-1 -1 0](-1 1 -1);
    # cI first {110} system [1 -1 1](0 1 1), first {112} system [1 -1 1](2 1 -1)
    d, n = lattice.slip_systems_miller("fcc")
    assert d[0].tolist() == [0, 1, -1] and n[0].tolist() == [1, 1, 1]
    assert d[11].tolist() == [-1, -1, 0] and n[11].tolist() == [-1, 1, -1]
    d, n = lattice.slip_systems_miller("bcc")
    assert d[0].tolist() == [1, -1, 1] and n[0].tolist() == [0, 1, 1]
    assert d[12].tolist() == [1, -1, 1] and n[12].tolist() == [2, 1, -1]


@pytest.mark.parametrize("axis, value, count", [
    ([0, 0, 1], 0.408, 8), ([1, 1, 1], 0.272, 6), ([0, 1, 1], 0.408, 4), ([1, 2, 3], 0.467, 1)])
def test_fcc_schmid_factors(axis, value, count):
    # validation.md: largest FCC {111}<110> Schmid factors for uniaxial stress
    m = np.abs(lattice.schmid_factors("fcc", axis))
    assert m.max() == pytest.approx(value, abs=5e-4)
    assert np.sum(np.isclose(m, m.max(), atol=1e-9)) == count


def test_schmid_factor_broadcasts_and_matches_tensor():
    axes = np.random.default_rng(0).standard_normal((5, 3))
    t = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    P = lattice.schmid_tensors("bcc")
    expected = np.einsum("ki,aij,kj->ka", t, P, t)
    np.testing.assert_allclose(lattice.schmid_factors("bcc", axes), expected, atol=1e-14)


def _fcc_geometric_types():
    """Madec-Kubin classification from geometry alone (row reacting a, column acting b)."""
    d, n = lattice.slip_systems_miller("fcc")
    T = np.zeros((12, 12), int)
    for a in range(12):
        for b in range(12):
            if a == b:
                T[a, b] = 1
            elif not np.cross(n[a], n[b]).any():
                T[a, b] = 2                       # coplanar
            elif not np.cross(d[a], d[b]).any():
                T[a, b] = 3                       # collinear
            elif d[a] @ d[b] == 0:
                T[a, b] = 4                       # Hirth lock
            else:
                # junction Burgers vector: the <110> among b_a +- b_b
                bj = d[a] + d[b] if (d[a] + d[b]) @ (d[a] + d[b]) == 2 else d[a] - d[b]
                in_a, in_b = bj @ n[a] == 0, bj @ n[b] == 0
                # glissile I: junction glides on the acting plane, II: on the reacting one
                T[a, b] = 7 if not (in_a or in_b) else (6 if in_a else 5)
    return T


def test_fcc_interaction_types_match_damask_and_geometry():
    T = lattice.interaction_types("fcc")
    np.testing.assert_array_equal(T, DAMASK_FCC_TYPES)
    np.testing.assert_array_equal(T, _fcc_geometric_types())
    # each system: 1 self, 2 coplanar, 1 collinear, 2 Hirth, 2+2 glissile, 2 Lomer
    for row in T:
        assert np.bincount(row, minlength=8)[1:].tolist() == [1, 2, 1, 2, 2, 2, 2]
    # the transpose swaps glissile I and II only
    swapped = np.choose(T - 1, [1, 2, 3, 4, 6, 5, 7])
    np.testing.assert_array_equal(T.T, swapped)


def test_bcc_interaction_types():
    T = lattice.interaction_types("bcc")
    d, n = lattice.slip_systems_miller("bcc")
    assert T.shape == (24, 24) and T.min() == 1 and T.max() == 24
    assert np.all(np.diag(T) == 1)
    same_dir = np.all(np.cross(d[:, None], d[None]) == 0, axis=-1)
    same_plane = np.all(np.cross(n[:, None], n[None]) == 0, axis=-1)
    fam = np.repeat([0, 1], 12)
    cross_fam = fam[:, None] != fam[None]
    off = ~np.eye(24, dtype=bool)
    # DAMASK cI: 2 collinear within a family, 3 coplanar {110}, 8/9 {110}-{112} collinear
    np.testing.assert_array_equal(T == 2, same_dir & off & ~cross_fam)
    np.testing.assert_array_equal(T == 3, same_plane & off & (fam[:, None] == 0) & (fam[None] == 0))
    perpendicular = (n[:, None] * n[None]).sum(-1) == 0
    np.testing.assert_array_equal(T == 8, same_dir & cross_fam & perpendicular)
    np.testing.assert_array_equal(T == 9, same_dir & cross_fam & ~perpendicular)
    # type counts over the whole 24 x 24 table
    counts = np.bincount(T.ravel(), minlength=25)[1:]
    assert counts.tolist() == [24, 48, 12, 24, 24, 24, 24, 24, 48, 12, 12,
                               24, 24, 24, 24, 24, 24, 24, 24, 12, 24, 24, 24, 24]


def test_interaction_matrix_values_and_symmetry():
    coef = [1, 1, 5.123, 0.574, 1.123, 1.123, 1]           # Cu/Al presets (DAMASK)
    h = lattice.interaction_matrix("fcc", coef)
    np.testing.assert_allclose(h, h.T)
    assert h[0, 0] == 1 and h[0, 6] == 5.123 and h[0, 3] == 0.574
    h = lattice.interaction_matrix("fcc", [1, 2, 3, 4, 5, 6, 7])
    assert not np.allclose(h, h.T)                          # glissile I != II
    coef = [1, 1.4, 1] + [1.4] * 21                         # DAMASK ferrite
    h = lattice.interaction_matrix("bcc", coef)
    np.testing.assert_allclose(h, h.T)
    assert h.shape == (24, 24) and h[0, 1] == 1.4 and h[0, 3] == 1.0


@pytest.mark.parametrize("lat, n_coef", [("fcc", 7), ("bcc", 24)])
def test_interaction_matrix_wrong_count(lat, n_coef):
    assert lattice.n_interaction_coefficients(lat) == n_coef
    with pytest.raises(ConfigError, match=f"takes {n_coef}"):
        lattice.interaction_matrix(lat, [1.0] * 6)


def test_unknown_lattice():
    with pytest.raises(ConfigError) as err:
        lattice.slip_systems("hcp")
    assert str(err.value) == "unknown lattice 'hcp'; known: fcc, bcc"
