"""Slip systems of cubic lattices and their slip-slip interaction matrices.

Conventions (see docs/conventions.md):

* Vectors are components in the *crystal* frame (cubic axes), normalised to
  unit length. A slip system is a pair (direction ``m``, plane normal ``n``)
  with ``m . n = 0``; its Schmid tensor is ``P = m (x) n`` (``P_ij = m_i n_j``).
* Slip systems come in the fixed order of DAMASK 3.1 (``src/crystal.f90``),
  family after family, so per-system arrays written by Slipstream line up with
  DAMASK's ``xi_sl`` / ``gamma_sl`` outputs:

  - ``'fcc'`` (DAMASK ``cF``): 12 octahedral {111}<110> systems, Thompson
    tetrahedron / Schmid-Boas order B2 B4 B5 C1 C3 C5 A2 A3 A6 D1 D4 D6.
  - ``'bcc'`` (DAMASK ``cI``): 12 {110}<111> systems, then 12 {112}<111>
    systems (DAMASK's further 24 {123}<111> systems are not used).

* The interaction matrix ``h[a, b]`` is the hardening of system ``a`` (the
  reacting one) due to slip on system ``b`` (the acting one, the forest), as in
  DAMASK: ``xi_dot_a = ... sum_b h[a, b] |gamma_dot_b|``. Its entries are
  ``coefficients[type[a, b] - 1]`` with DAMASK's interaction types (Madec and
  Kubin 2017): 7 coefficients for 'fcc', 24 for 'bcc'. The type tables are
  not symmetric: their transposes swap paired types (fcc: glissile I <-> II),
  so ``h`` is symmetric only when each pair has equal coefficients.

References:
    DAMASK 3.1, src/crystal.f90 (slip systems, ``crystal_interaction_SlipBySlip``),
    https://github.com/damask-multiphysics/DAMASK.
    R. Madec, L.P. Kubin, Dislocation strengthening in FCC metals and in BCC
    metals at high temperatures, Acta Mater. 126 (2017) 166-173,
    https://doi.org/10.1016/j.actamat.2016.12.040 (Tab. S4-1, S5-1).
    F. Roters et al., DAMASK, Comput. Mater. Sci. 158 (2019) 420-478.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

LATTICES = ("fcc", "bcc")

# (direction, plane normal) in Miller indices, DAMASK 3.1 order.
_FCC_SYSTEMS = np.array([
    # plane (111), Thompson d
    [[0, 1, -1], [1, 1, 1]],      # 1  B2
    [[-1, 0, 1], [1, 1, 1]],      # 2  B4
    [[1, -1, 0], [1, 1, 1]],      # 3  B5
    # plane (-1-11), Thompson c
    [[0, -1, -1], [-1, -1, 1]],   # 4  C1
    [[1, 0, 1], [-1, -1, 1]],     # 5  C3
    [[-1, 1, 0], [-1, -1, 1]],    # 6  C5
    # plane (1-1-1), Thompson b
    [[0, -1, 1], [1, -1, -1]],    # 7  A2
    [[-1, 0, -1], [1, -1, -1]],   # 8  A3
    [[1, 1, 0], [1, -1, -1]],     # 9  A6
    # plane (-11-1), Thompson a
    [[0, 1, 1], [-1, 1, -1]],     # 10 D1
    [[1, 0, -1], [-1, 1, -1]],    # 11 D4
    [[-1, -1, 0], [-1, 1, -1]],   # 12 D6
], dtype=float)

_BCC_SYSTEMS = np.array([
    # {110}<111>, sign convention of Table 1 of doi:10.1016/j.ijplas.2020.102733
    [[1, -1, 1], [0, 1, 1]],
    [[1, -1, 1], [1, 0, -1]],
    [[1, -1, 1], [-1, -1, 0]],
    [[-1, -1, 1], [0, -1, -1]],
    [[-1, -1, 1], [1, 0, 1]],
    [[-1, -1, 1], [-1, 1, 0]],
    [[1, 1, 1], [0, 1, -1]],
    [[1, 1, 1], [-1, 0, 1]],
    [[1, 1, 1], [1, -1, 0]],
    [[-1, 1, 1], [0, -1, 1]],
    [[-1, 1, 1], [-1, 0, -1]],
    [[-1, 1, 1], [1, 1, 0]],
    # {112}<111>
    [[1, -1, 1], [2, 1, -1]],
    [[1, -1, 1], [-1, 1, 2]],
    [[1, -1, 1], [1, 2, 1]],
    [[-1, -1, 1], [2, -1, 1]],
    [[-1, -1, 1], [1, 1, 2]],
    [[-1, -1, 1], [-1, 2, 1]],
    [[1, 1, 1], [1, 1, -2]],
    [[1, 1, 1], [1, -2, 1]],
    [[1, 1, 1], [-2, 1, 1]],
    [[-1, 1, 1], [1, -1, 2]],
    [[-1, 1, 1], [1, 2, -1]],
    [[-1, 1, 1], [2, 1, 1]],
], dtype=float)

_FAMILY_SIZES = {"fcc": (12,), "bcc": (12, 12)}
_FAMILY_NAMES = {"fcc": ("{111}<110>",), "bcc": ("{110}<111>", "{112}<111>")}

# Interaction types, row = reacting system a, column = acting system b
# (DAMASK's table as displayed in crystal.f90, restricted to the families used).
_FCC_INTERACTION_TYPES = np.array([
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

_BCC_INTERACTION_TYPES = np.array([[int(t) for t in row.split()] for row in (
    " 1  2  2  3  5  5  6  4  7  6  7  4  8  9  9 11 13 13 14 17 18 17 14 18",
    " 2  1  2  4  6  7  5  3  5  7  6  4  9  9  8 17 14 18 13 11 13 17 18 14",
    " 2  2  1  4  7  6  7  4  6  5  5  3  9  8  9 17 18 14 18 17 14 11 13 13",
    " 3  5  5  1  2  2  6  7  4  6  4  7 11 13 13  8  9  9 17 14 18 14 17 18",
    " 4  6  7  2  1  2  7  6  4  5  3  5 17 14 18  9  9  8 17 18 14 13 11 13",
    " 4  7  6  2  2  1  5  5  3  7  4  6 17 18 14  9  8  9 11 13 13 18 17 14",
    " 6  4  7  6  7  4  1  2  2  3  5  5 18 14 17 18 17 14  9  9  8 13 13 11",
    " 5  3  5  7  6  4  2  1  2  4  6  7 13 13 11 14 17 18  9  8  9 14 18 17",
    " 7  4  6  5  5  3  2  2  1  4  7  6 14 18 17 13 11 13  8  9  9 18 14 17",
    " 6  7  4  6  4  7  3  5  5  1  2  2 18 17 14 18 14 17 13 13 11  9  9  8",
    " 7  6  4  5  3  5  4  6  7  2  1  2 14 17 18 13 13 11 14 18 17  9  8  9",
    " 5  5  3  7  4  6  4  7  6  2  2  1 13 11 13 14 18 17 18 14 17  8  9  9",
    " 8  9  9 10 16 16 19 12 15 19 15 12  1  2  2 20 21 21 23 22 24 22 23 24",
    " 9  9  8 12 15 19 15 12 19 16 16 10  2  1  2 22 24 23 24 22 23 20 21 21",
    " 9  8  9 12 19 15 16 10 16 15 19 12  2  2  1 22 23 24 21 20 21 22 24 23",
    "10 16 16  8  9  9 19 15 12 19 12 15 20 21 21  1  2  2 22 23 24 23 22 24",
    "12 15 19  9  9  8 16 16 10 15 12 19 22 24 23  2  1  2 20 21 21 24 22 23",
    "12 19 15  9  8  9 15 19 12 16 10 16 21 23 24  2  2  1 22 24 23 21 20 21",
    "15 12 19 16 16 10  9  9  8 12 15 19 23 24 22 21 20 21  1  2  2 24 23 22",
    "16 10 16 15 19 12  9  8  9 12 19 15 22 21 20 23 22 24  2  1  2 23 24 22",
    "19 12 15 19 15 12  8  9  9 10 16 16 24 23 22 24 22 23  2  2  1 21 21 20",
    "16 16 10 15 12 19 12 15 19  9  9  8 21 20 21 23 24 22 24 23 22  1  2  2",
    "15 19 12 16 10 16 12 19 15  9  8  9 23 22 24 21 21 20 23 24 22  2  1  2",
    "19 15 12 19 12 15 10 16 16  8  9  9 24 22 23 24 23 22 21 21 20  2  2  1",
)])

#: Names of DAMASK's interaction coefficients, in the order they are given.
INTERACTION_NAMES = {
    "fcc": ("self", "coplanar", "collinear", "Hirth lock", "glissile junction I",
            "glissile junction II", "Lomer lock"),
    "bcc": ("self", "collinear", "coplanar {110}-{110}")
           + tuple(f"{{110}}-{{110}} type {t}" for t in range(4, 8))
           + ("{110}-{112} collinear, perpendicular planes", "{110}-{112} collinear")
           + tuple(f"{{110}}-{{112}} type {t}" for t in range(10, 20))
           + tuple(f"{{112}}-{{112}} type {t}" for t in range(20, 25)),
}


def _check(lattice: str) -> str:
    if lattice not in LATTICES:
        raise ConfigError(f"unknown lattice {lattice!r}; known: {', '.join(LATTICES)}")
    return lattice


def slip_systems(lattice: str) -> tuple[np.ndarray, np.ndarray]:
    """Slip directions and plane normals, unit vectors in the crystal frame.

    Args:
        lattice: ``'fcc'`` or ``'bcc'``.

    Returns:
        ``(directions, normals)``, each ``(ns, 3)``, in DAMASK's order (module docs).

    Raises:
        ConfigError: unknown lattice.
    """
    systems = {"fcc": _FCC_SYSTEMS, "bcc": _BCC_SYSTEMS}[_check(lattice)]
    d = systems[:, 0] / np.linalg.norm(systems[:, 0], axis=-1, keepdims=True)
    n = systems[:, 1] / np.linalg.norm(systems[:, 1], axis=-1, keepdims=True)
    return d, n


def slip_systems_miller(lattice: str) -> tuple[np.ndarray, np.ndarray]:
    """Slip directions and plane normals as integer Miller indices, ``(ns, 3)`` each."""
    systems = {"fcc": _FCC_SYSTEMS, "bcc": _BCC_SYSTEMS}[_check(lattice)]
    return systems[:, 0].astype(int), systems[:, 1].astype(int)


def family_sizes(lattice: str) -> tuple[int, ...]:
    """Number of slip systems in each family, e.g. ``(12, 12)`` for 'bcc'."""
    return _FAMILY_SIZES[_check(lattice)]


def family_names(lattice: str) -> tuple[str, ...]:
    """Families as ``'{plane}<direction>'`` strings, in order."""
    return _FAMILY_NAMES[_check(lattice)]


def n_interaction_coefficients(lattice: str) -> int:
    """How many slip-slip coefficients DAMASK takes for the lattice (7 fcc, 24 bcc)."""
    return len(INTERACTION_NAMES[_check(lattice)])


def interaction_types(lattice: str) -> np.ndarray:
    """DAMASK's slip-slip interaction types, 1-based, ``(ns, ns)`` int.

    Row ``a`` is the reacting (hardened) system, column ``b`` the acting one.
    """
    return {"fcc": _FCC_INTERACTION_TYPES, "bcc": _BCC_INTERACTION_TYPES}[_check(lattice)].copy()


def interaction_matrix(lattice: str, coefficients) -> np.ndarray:
    """Slip-slip hardening interaction matrix ``h[a, b]`` from DAMASK's coefficients.

    Args:
        lattice: ``'fcc'`` or ``'bcc'``.
        coefficients: one value per interaction type in DAMASK's order
            (:data:`INTERACTION_NAMES`): 7 for 'fcc', 24 for 'bcc'.

    Returns:
        ``(ns, ns)`` matrix, row = reacting system, column = acting system.

    Raises:
        ConfigError: unknown lattice or wrong number of coefficients.
    """
    types = interaction_types(lattice)
    coefficients = np.asarray(coefficients, dtype=float).ravel()
    expected = n_interaction_coefficients(lattice)
    if coefficients.size != expected:
        raise ConfigError(f"interaction: {lattice} takes {expected} slip-slip coefficients "
                          f"(DAMASK order), got {coefficients.size}")
    return coefficients[types - 1]


def schmid_tensors(lattice: str) -> np.ndarray:
    """Schmid tensors ``P = m (x) n`` in the crystal frame, ``(ns, 3, 3)``."""
    d, n = slip_systems(lattice)
    return d[:, :, None] * n[:, None, :]


def schmid_factors(lattice: str, axis_crystal) -> np.ndarray:
    """Signed Schmid factors ``(m . t)(n . t)`` for uniaxial stress along ``t``.

    Args:
        lattice: ``'fcc'`` or ``'bcc'``.
        axis_crystal: ``(..., 3)`` loading axis in the crystal frame (any length).

    Returns:
        ``(..., ns)``; the resolved shear stress on system ``a`` is
        ``sigma * factors[a]`` for a uniaxial stress ``sigma`` (tension > 0).
    """
    d, n = slip_systems(lattice)
    t = np.asarray(axis_crystal, dtype=float)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    return (t @ d.T) * (t @ n.T)
