"""Nye (dislocation density) tensor of voxel fields: curl of the plastic distortion, GND density.

Pure NumPy (no dolfinx, no torch), so the surrogate side can use it on stored
fields.

Conventions (docs/fdm.md, "Nye tensor of crystal-plasticity results"):

* Voxel arrays are ``(nz, ny, nx, ...)``, x fastest (docs/conventions.md);
  ``spacing`` and ``periodic`` are given in lab order ``(x, y, z)``.
* Row-wise curl, the convention of field dislocation mechanics (Acharya, J.
  Mech. Phys. Solids 49 (2001) 761; 52 (2004) 301):
  ``(curl A)_iJ = e_JKL dA_iL/dX_K``: each row of ``A`` is a vector field and
  its curl is taken. The Burgers vector of a circuit ``C`` bounding ``S`` is
  ``b = int_S alpha n dA`` (``alpha_ij``: component ``i`` of the Burgers vector
  per unit area normal to ``j``). A straight screw dislocation along +z with
  Burgers vector ``b e_z`` is ``alpha_33 = b delta(x, y)``; an edge one with
  ``b e_x`` is ``alpha_13 = b delta(x, y)``.
* Nye tensor of a crystal-plasticity result with ``F = Fe Fp``
  (:mod:`solver.constitutive`; the intermediate configuration is lab-aligned,
  ``Fp = I`` at the start):

  ``A = -Curl_X(Fp)``, ``A_iJ = -e_JKL dFp_iL/dX_K`` (``reference``, the default)

  Burgers vector in the intermediate (lattice, lab-aligned) configuration per
  unit *reference* area, ``b = -oint_C Fp dX = int_S A N dA``. With
  ``Fp = I + Up`` (small strain) this is ``alpha = -curl Up = curl Ue``, the
  elastic distortion's curl of FDM (``curl grad u = 0``), so it is the
  Nye tensor that :mod:`solver.fdm` takes. It is the transpose-free,
  reference-area form of the Cermelli-Gurtin tensor (P. Cermelli, M.E.
  Gurtin, J. Mech. Phys. Solids 49 (2001) 1539: ``G = Fp Curl Fp`` with their
  transposed curl); the other two measures follow by Nanson's formula:

  - ``intermediate``: per unit intermediate (lattice) area,
    ``G = A Fp^T / det Fp``;
  - ``current``: per unit current area, ``alpha = A F^T / det F``; in small
    strain all three coincide.

* Differences: second-order central differences of the voxel-centre values;
  wrapped (``np.roll``) along periodic axes, second-order one-sided at the two
  end voxels of a non-periodic axis (``np.gradient(edge_order=2)``; first order
  with two voxels); derivatives along an axis with one voxel (a 2-D map) are 0.
* GND density estimate ``rho_GND = |alpha| / b`` with the Frobenius norm
  ``|alpha| = sqrt(alpha_ij alpha_ij)`` (1/m^2): the density of one set of
  straight dislocations that would carry the tensor, a lower-bound-type
  scalar measure (e.g. Arsenlis and Parks, Acta Mater. 47 (1999) 1597, who
  distribute ``alpha`` over slip systems instead).

Units: ``spacing`` in m, ``Fp`` dimensionless, Nye tensors in 1/m.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

#: Levi-Civita symbol e_ijk.
LEVI_CIVITA = np.zeros((3, 3, 3))
LEVI_CIVITA[0, 1, 2] = LEVI_CIVITA[1, 2, 0] = LEVI_CIVITA[2, 0, 1] = 1.0
LEVI_CIVITA[0, 2, 1] = LEVI_CIVITA[2, 1, 0] = LEVI_CIVITA[1, 0, 2] = -1.0

# lab axis (x, y, z) -> axis of a (z, y, x) voxel array
_ARRAY_AXIS = (2, 1, 0)
CONVENTIONS = ("reference", "intermediate", "current")


def _periodic3(periodic) -> tuple[bool, bool, bool]:
    if isinstance(periodic, (bool, np.bool_)):
        return (bool(periodic),) * 3
    try:
        per = tuple(bool(p) for p in periodic)
    except TypeError:
        raise ConfigError(f"periodic must be a bool or 3 bools (x, y, z), got {periodic!r}") from None
    if len(per) != 3:
        raise ConfigError(f"periodic must be a bool or 3 bools (x, y, z), got {periodic!r}")
    return per


def _spacing3(spacing) -> np.ndarray:
    h = np.asarray(spacing, dtype=float).reshape(-1)
    if h.size == 1:
        h = np.repeat(h, 3)
    if h.size != 3 or not np.all(np.isfinite(h)) or not np.all(h > 0):
        raise ConfigError(f"spacing must be 3 positive voxel sizes (x, y, z) in m, got {spacing!r}")
    return h


def _grid_field(field, trailing: int, what: str) -> np.ndarray:
    a = np.asarray(field, dtype=float)
    if a.ndim != 3 + trailing:
        raise ConfigError(f"{what}: expected a voxel field of shape (nz, ny, nx" + ", 3" * trailing
                          + f"), got {a.shape}")
    return a


def derivative(field: np.ndarray, axis: int, h: float, periodic: bool) -> np.ndarray:
    """``d field / d X_axis`` of a ``(nz, ny, nx, ...)`` voxel field (lab axis 0 = x, 1 = y, 2 = z)."""
    f = np.asarray(field, dtype=float)
    ax = _ARRAY_AXIS[axis]
    n = f.shape[ax]
    if n == 1:
        return np.zeros_like(f)
    if periodic:
        return (np.roll(f, -1, axis=ax) - np.roll(f, 1, axis=ax)) / (2.0 * h)
    return np.gradient(f, h, axis=ax, edge_order=2 if n >= 3 else 1)


def gradient(field: np.ndarray, spacing, periodic=True) -> np.ndarray:
    """Gradient of a voxel field: ``(nz, ny, nx, *c)`` -> ``(nz, ny, nx, *c, 3)``, last index = d/dX_K."""
    f = np.asarray(field, dtype=float)
    if f.ndim < 3:
        raise ConfigError(f"gradient: expected a voxel field (nz, ny, nx, ...), got shape {f.shape}")
    h, per = _spacing3(spacing), _periodic3(periodic)
    return np.stack([derivative(f, k, h[k], per[k]) for k in range(3)], axis=-1)


def curl(field: np.ndarray, spacing, periodic=True) -> np.ndarray:
    """Row-wise curl ``(curl A)_iJ = e_JKL dA_iL/dX_K`` of a ``(nz, ny, nx, 3, 3)`` field.

    Also takes a vector field ``(nz, ny, nx, 3)``: ``(curl v)_J = e_JKL dv_L/dX_K``.
    """
    f = np.asarray(field, dtype=float)
    if f.ndim not in (4, 5) or f.shape[3:] not in ((3,), (3, 3)):
        raise ConfigError(f"curl: expected (nz, ny, nx, 3) or (nz, ny, nx, 3, 3), got {f.shape}")
    G = gradient(f, spacing, periodic)  # (..., [i,] L, K)
    return np.einsum("JKL,...LK->...J", LEVI_CIVITA, G)


def divergence(field: np.ndarray, spacing, periodic=True) -> np.ndarray:
    """Row-wise divergence ``(div A)_i = dA_iL/dX_L`` of ``(nz, ny, nx, 3, 3)`` (or of a vector field)."""
    f = np.asarray(field, dtype=float)
    if f.ndim not in (4, 5) or f.shape[3:] not in ((3,), (3, 3)):
        raise ConfigError(f"divergence: expected (nz, ny, nx, 3) or (nz, ny, nx, 3, 3), got {f.shape}")
    G = gradient(f, spacing, periodic)
    return np.einsum("...LL->...", G)


def nye_tensor(Fp: np.ndarray, spacing, periodic=True, convention: str = "reference",
               F: np.ndarray | None = None) -> np.ndarray:
    """Nye tensor of a plastic deformation (distortion) field per voxel.

    Args:
        Fp: ``(nz, ny, nx, 3, 3)`` cell-average plastic deformation gradient
            (or ``I + Up`` in small strain), lab-aligned intermediate configuration.
        spacing: voxel size ``(hx, hy, hz)`` in m (one number for cubes).
        periodic: bool or ``(px, py, pz)``: central differences wrap along
            periodic axes; one-sided at the ends of the others.
        convention: ``"reference"`` (``A = -Curl Fp``, per reference area),
            ``"intermediate"`` (``A Fp^T / det Fp``) or ``"current"``
            (``A F^T / det F``, needs ``F``); see the module docstring.
        F: ``(nz, ny, nx, 3, 3)`` deformation gradient (``current`` only).

    Returns:
        ``(nz, ny, nx, 3, 3)`` in 1/m (Burgers vector per unit area).
    """
    Fp = _grid_field(Fp, 2, "nye_tensor: Fp")
    if Fp.shape[3:] != (3, 3):
        raise ConfigError(f"nye_tensor: Fp must end in (3, 3), got {Fp.shape}")
    A = -curl(Fp, spacing, periodic)
    if convention == "reference":
        return A
    if convention == "intermediate":
        return A @ np.swapaxes(Fp, -1, -2) / np.linalg.det(Fp)[..., None, None]
    if convention == "current":
        if F is None:
            raise ConfigError("nye_tensor: convention 'current' needs the deformation gradient F")
        F = _grid_field(F, 2, "nye_tensor: F")
        if F.shape != Fp.shape:
            raise ConfigError(f"nye_tensor: F has shape {F.shape}, Fp {Fp.shape}")
        return A @ np.swapaxes(F, -1, -2) / np.linalg.det(F)[..., None, None]
    raise ConfigError(f"nye_tensor: convention {convention!r} is unknown; known: {', '.join(CONVENTIONS)}")


def nye_from_distortion(Up: np.ndarray, spacing, periodic=True) -> np.ndarray:
    """Small-strain Nye tensor ``alpha = -curl Up`` of a plastic distortion ``Up`` (``(nz, ny, nx, 3, 3)``)."""
    return -curl(_grid_field(Up, 2, "nye_from_distortion: Up"), spacing, periodic)


def gnd_density(alpha: np.ndarray, burgers: float) -> np.ndarray:
    """Scalar GND density estimate ``|alpha| / b`` (Frobenius norm), 1/m^2, shape ``alpha.shape[:-2]``."""
    b = float(burgers)
    if not np.isfinite(b) or b <= 0:
        raise ConfigError(f"gnd_density: the Burgers vector length must be positive (m), got {burgers!r}")
    a = np.asarray(alpha, dtype=float)
    return np.sqrt(np.einsum("...ij,...ij->...", a, a)) / b


def to_tensor9(alpha: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` -> ``(..., 9)`` row-major 11, 12, 13, 21, ..., 33 (the store's ``nye`` layout)."""
    a = np.asarray(alpha)
    return a.reshape(a.shape[:-2] + (9,))


def from_tensor9(values: np.ndarray) -> np.ndarray:
    """``(..., 9)`` row-major -> ``(..., 3, 3)``."""
    a = np.asarray(values)
    if a.shape[-1:] != (9,):
        raise ConfigError(f"expected a last axis of 9 tensor components (row-major), got shape {a.shape}")
    return a.reshape(a.shape[:-1] + (3, 3))


def store_field(Fp_steps: np.ndarray, spacing, periodic=True, convention: str = "reference") -> np.ndarray:
    """The store's ``nye`` array of one sample: ``(step, nz, ny, nx, 3, 3)`` Fp -> ``(step, nz, ny, nx, 9)`` float32."""
    Fp_steps = np.asarray(Fp_steps, dtype=float)
    if Fp_steps.ndim != 6:
        raise ConfigError(f"store_field: expected Fp of shape (step, nz, ny, nx, 3, 3), got {Fp_steps.shape}")
    return np.stack([to_tensor9(nye_tensor(Fp, spacing, periodic, convention)) for Fp in Fp_steps]).astype(np.float32)
