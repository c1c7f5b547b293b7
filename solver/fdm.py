"""Elasto-static field dislocation mechanics (FDM) on DOLFINx: the stress field of a Nye tensor.

Given a Nye tensor field ``alpha`` (1/m) on a voxel grid, find the elastic
distortion ``Ue`` and the internal stress ``T`` (Acharya, J. Mech. Phys.
Solids 49 (2001) 761; Roy and Acharya, JMPS 53 (2005) 143):

* ``Ue = chi + grad z``: ``chi`` the incompatible part, ``curl chi = alpha``,
  ``div chi = 0`` (``chi n = 0`` on non-periodic faces); ``z`` the compatible
  part from equilibrium ``div T = 0``, ``T = C : sym(Ue) = C : Ue``.
* ``chi = curl Z`` with a tensor potential ``Z`` in Coulomb gauge
  (``div Z = 0`` row-wise), so ``curl chi = curl curl Z = -lap Z`` and each of
  the nine components solves a Poisson problem ``-lap Z_ia = alpha_ia``.
* Curl and div act on rows: ``(curl A)_im = e_mjk dA_ik/dx_j``,
  ``(div A)_i = dA_ik/dx_k`` (the convention of :mod:`solver.nye`; a screw
  along +z with Burgers vector ``b e_z`` is ``alpha_33 = b delta``).

Discretisation (docs/fdm.md): hexahedral voxel mesh (:func:`solver.fem.voxel_mesh`),
``alpha`` piecewise constant per voxel (DG0); every ``Z_ia`` in scalar Q1
Lagrange; ``chi = curl Z`` is used as the UFL expression of the discrete ``Z``
(no projection); ``z`` in vector Q1 Lagrange with
``int grad v : C : grad z = -int grad v : C : chi`` for all ``v``. Per-voxel
outputs are the cell-centre values (= cell averages for Q1 gradients).
Boundary conditions, per axis:

* periodic axis: ``Z`` and ``z`` periodic (a PETSc prolongation ``T`` and
  ``T^T K T``, as :class:`solver.fem.AffineConstraint`);
* non-periodic axis, faces normal to ``e_a``: ``Z_ib = 0`` for ``b != a`` and
  ``dZ_ia/dn = 0`` ("tangential Dirichlet"): then ``div Z = 0`` on the faces and,
  ``div alpha = 0`` inside, everywhere; and ``chi n = 0`` on these faces.
  Traction-free ``T n = 0`` (natural) for ``z``.
* A column ``a`` whose every other axis is periodic has no Dirichlet face: its
  solvability condition is ``mean(alpha_ia) = 0`` (the net Burgers vector
  threading a periodic cross-section); a fully periodic cell needs
  ``mean(alpha) = 0`` (:func:`check_mean`). The constant left in ``Z`` is
  pinned (no effect on ``chi``); rigid translations (and, with two
  non-periodic axes, the rotation about the third) of ``z`` are pinned.
* The mean of ``Ue`` over a periodic cell is zero (mean ``chi`` and mean
  ``grad z`` vanish): zero mean stress.

The content builders (straight dislocations, dipoles, quadrupoles, loops with
Gaussian or uniform disc cores) and the config parser are pure NumPy; the
solver imports dolfinx when it is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time

import numpy as np

from . import nye as _nye
from .errors import ConfigError, SolverError, StoreError, finite_number

SCHEMA = "slipstream.fdm/1"
DIRECT_OPTIONS = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
ITERATIVE_OPTIONS = {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1.0e-10, "ksp_atol": 1.0e-50,
                     "ksp_max_it": 1000, "ksp_norm_type": "unpreconditioned"}
LINEAR_SOLVERS = ("auto", "direct", "iterative")
#: ``auto`` factorises (MUMPS) 2-D maps and boxes up to this many displacement unknowns; CG + GAMG above
AUTO_DIRECT_MAX_DOFS = 30_000
DEFAULT_MEAN_TOLERANCE = 1e-6
AXES = "xyz"
TOP_KEYS = ("grid", "material", "dislocations", "nye", "output", "solver")
OUTPUT_KEYS = {"paraview": True, "plots": True}
SOLVER_KEYS = {"linear_solver": "auto", "petsc_options": {}, "mean_tolerance": DEFAULT_MEAN_TOLERANCE}


# ===================================================================== grid ==

@dataclasses.dataclass(frozen=True)
class Grid:
    """A voxel box: ``cells`` and ``size`` in (x, y, z) order (m), periodicity per axis."""

    cells: tuple[int, int, int]
    size: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    periodic: tuple[bool, bool, bool] = (True, True, True)

    def __post_init__(self):
        cells = tuple(_int(c, f"grid.cells[{k}]") for k, c in enumerate(_seq(self.cells, 3, "grid.cells")))
        if min(cells) < 1:
            raise ConfigError(f"grid.cells must be positive, got {list(cells)}")
        size = tuple(_real(s, f"grid.size[{k}]") for k, s in enumerate(_seq(self.size, 3, "grid.size")))
        if min(size) <= 0:
            raise ConfigError(f"grid.size must be positive (m), got {list(size)}")
        origin = tuple(_real(s, f"grid.origin[{k}]") for k, s in enumerate(_seq(self.origin, 3, "grid.origin")))
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "periodic", _periodic(self.periodic))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size ``(hx, hy, hz)`` in m."""
        return np.asarray(self.size) / np.asarray(self.cells)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel array shape ``(nz, ny, nx)``."""
        return self.cells[2], self.cells[1], self.cells[0]

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.cells))

    def centres(self) -> np.ndarray:
        """``(nz, ny, nx, 3)`` voxel-centre coordinates (x, y, z) in m."""
        h, o = self.spacing, np.asarray(self.origin)
        x, y, z = (o[k] + (np.arange(self.cells[k]) + 0.5) * h[k] for k in range(3))
        Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
        return np.stack([X, Y, Z], axis=-1)


def _seq(value, n, what):
    if isinstance(value, (str, bytes)) or np.ndim(value) != 1 or len(value) != n:
        raise ConfigError(f"{what} must be a list of {n} numbers, got {value!r}")
    return list(value)


_real = finite_number


def _int(value, what) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _positive(value, what) -> float:
    out = _real(value, what)
    if out <= 0:
        raise ConfigError(f"{what} must be positive, got {value!r}")
    return out


def _vector(value, what, n=3) -> np.ndarray:
    return np.array([_real(v, f"{what}[{k}]") for k, v in enumerate(_seq(value, n, what))])


def _periodic(value) -> tuple[bool, bool, bool]:
    if isinstance(value, (bool, np.bool_)):
        return (bool(value),) * 3
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 3 and all(
            isinstance(v, (bool, np.bool_)) for v in value):
        return tuple(bool(v) for v in value)
    raise ConfigError(f"grid.periodic must be true, false or 3 booleans (x, y, z), got {value!r}")


# =============================================================== elasticity ==

def isotropic_stiffness(shear_modulus: float, poisson_ratio: float) -> np.ndarray:
    """``C_ijkl = lambda d_ij d_kl + mu (d_ik d_jl + d_il d_jk)``, ``lambda = 2 mu nu / (1 - 2 nu)``, Pa."""
    mu = _positive(shear_modulus, "material.isotropic.shear_modulus")
    nu = _real(poisson_ratio, "material.isotropic.poisson_ratio")
    if not -1.0 < nu < 0.5:
        raise ConfigError(f"material.isotropic.poisson_ratio must lie in (-1, 0.5), got {nu:g}")
    lam = 2.0 * mu * nu / (1.0 - 2.0 * nu)
    d = np.eye(3)
    return (lam * np.einsum("ij,kl->ijkl", d, d)
            + mu * (np.einsum("ik,jl->ijkl", d, d) + np.einsum("il,jk->ijkl", d, d)))


def cubic_stiffness(C11: float, C12: float, C44: float, euler=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Lab-frame stiffness of a cubic crystal with Bunge orientation ``euler`` (passive, radians), Pa."""
    from .materials import PRESETS
    from .rotations import euler_to_matrix, validate_euler
    from .tensors import rotate_stiffness

    m = PRESETS["Cu"].replace(name="fdm", C11=C11, C12=C12, C44=C44)  # checks positive definiteness
    g = euler_to_matrix(validate_euler(np.asarray(euler, dtype=float), "material.euler"))
    return rotate_stiffness(m.stiffness_tensor(), g.T)


def stiffness_from_config(cfg) -> tuple[np.ndarray, dict]:
    """Lab stiffness ``(3, 3, 3, 3)`` and a JSON description from the ``material`` section.

    Forms: ``{isotropic: {shear_modulus: Pa, poisson_ratio: -}}``;
    ``{preset: Cu, euler: [phi1, Phi, phi2]}`` (the cubic constants of a
    :data:`solver.materials.PRESETS` entry); ``{C11:, C12:, C44:, euler:}``.
    """
    from .materials import PRESETS

    if not isinstance(cfg, dict):
        raise ConfigError(f"material must be a mapping, got {cfg!r}")
    if "isotropic" in cfg:
        if set(cfg) != {"isotropic"}:
            raise ConfigError(f"material: 'isotropic' takes no other keys, got {sorted(cfg)}")
        iso = cfg["isotropic"]
        if not isinstance(iso, dict) or set(iso) != {"shear_modulus", "poisson_ratio"}:
            raise ConfigError("material.isotropic needs exactly shear_modulus (Pa) and poisson_ratio, "
                              f"got {iso!r}")
        C = isotropic_stiffness(iso["shear_modulus"], iso["poisson_ratio"])
        return C, {"kind": "isotropic", "shear_modulus": float(iso["shear_modulus"]),
                   "poisson_ratio": float(iso["poisson_ratio"])}
    allowed = {"preset", "C11", "C12", "C44", "euler"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"material: unknown key(s) {unknown}; allowed: isotropic, or {sorted(allowed)}")
    consts = {}
    if "preset" in cfg:
        name = cfg["preset"]
        if name not in PRESETS:
            raise ConfigError(f"material: unknown preset {name!r}; known: {', '.join(PRESETS)}")
        p = PRESETS[name]
        consts = {"C11": p.C11, "C12": p.C12, "C44": p.C44}
    for key in ("C11", "C12", "C44"):
        if key in cfg:
            consts[key] = _real(cfg[key], f"material.{key}")
        if key not in consts:
            raise ConfigError(f"material: missing {key} (Pa), or give isotropic: {{...}} or preset: Cu")
    euler = _vector(cfg.get("euler", [0.0, 0.0, 0.0]), "material.euler")
    C = cubic_stiffness(consts["C11"], consts["C12"], consts["C44"], euler)
    return C, {"kind": "cubic", **{k: float(v) for k, v in consts.items()}, "euler": euler.tolist(),
               "preset": cfg.get("preset")}


# ===================================================== dislocation content ==

@dataclasses.dataclass(frozen=True)
class Core:
    """Core profile: areal density ``g(rho)`` with ``int g dA = 1`` over the plane normal to the line.

    ``gaussian``: ``g = exp(-rho^2 / 2 s^2) / (2 pi s^2)`` (``width = s``);
    ``disc``: ``g = 1 / (pi r0^2)`` for ``rho < r0`` (``width = r0``).
    """

    shape: str = "gaussian"
    width: float = 0.0

    def __post_init__(self):
        if self.shape not in ("gaussian", "disc"):
            raise ConfigError(f"core.shape {self.shape!r} is unknown; known: gaussian, disc")
        _positive(self.width, "core.width")

    def density(self, rho2: np.ndarray) -> np.ndarray:
        w2 = self.width**2
        if self.shape == "gaussian":
            return np.exp(-0.5 * rho2 / w2) / (2.0 * np.pi * w2)
        return (rho2 < w2) / (np.pi * w2)


@dataclasses.dataclass(frozen=True)
class StraightDislocation:
    """An infinite straight dislocation along a lab axis: ``alpha = b (x) t g(rho)``.

    Attributes:
        point: a point of the line (m, lab frame).
        axis: 0, 1, 2 for a line along x, y, z; ``sense`` +1 or -1 gives ``t``.
        burgers: Burgers vector (m, lab frame).
        core: the core profile.
    """

    point: tuple
    axis: int
    sense: int
    burgers: tuple
    core: Core

    @property
    def tangent(self) -> np.ndarray:
        return self.sense * np.eye(3)[self.axis]


@dataclasses.dataclass(frozen=True)
class Loop:
    """A circular loop of radius ``R`` about ``center`` in the plane normal to ``normal``.

    The line sense runs counter-clockwise about ``normal``: ``t = n x e_r``;
    ``alpha = b (x) t g(rho)`` with ``rho`` the distance to the circle (a tube,
    divergence-free for any ``g(rho)``). Prismatic if ``b || n``, shear if ``b _|_ n``.
    """

    center: tuple
    normal: tuple
    radius: float
    burgers: tuple
    core: Core


def _sub_points(q: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in (-1/2, 1/2) and weights of a per-voxel rule along one axis."""
    if kind == "gauss":
        x, w = np.polynomial.legendre.leggauss(q)
        return 0.5 * x, 0.5 * w
    x = (np.arange(q) + 0.5) / q - 0.5
    return x, np.full(q, 1.0 / q)


def _min_image(d: np.ndarray, grid: Grid) -> np.ndarray:
    for k in range(3):
        if grid.periodic[k]:
            L = grid.size[k]
            d[..., k] -= L * np.round(d[..., k] / L)
    return d


def _voxel_average(grid: Grid, func, sample_axes, rule: str, q: int) -> np.ndarray:
    """Average of ``func(X) -> (nz, ny, nx, ...)`` over each voxel with a tensor rule along ``sample_axes``."""
    X0 = grid.centres()
    h = grid.spacing
    offsets = []
    for k in range(3):
        if k in sample_axes and grid.cells[k] > 1:
            offsets.append(_sub_points(q, rule))
        else:
            offsets.append((np.zeros(1), np.ones(1)))
    total = None
    for ox, wx in zip(*offsets[0]):
        for oy, wy in zip(*offsets[1]):
            for oz, wz in zip(*offsets[2]):
                val = func(X0 + np.array([ox, oy, oz]) * h) * (wx * wy * wz)
                total = val if total is None else total + val
    return total


def _core_rule(core: Core) -> tuple[str, int]:
    return ("gauss", 3) if core.shape == "gaussian" else ("midpoint", 8)


def straight_alpha(grid: Grid, d: StraightDislocation) -> np.ndarray:
    """Voxel-averaged Nye tensor ``(nz, ny, nx, 3, 3)`` of one straight dislocation.

    Distances use the nearest periodic image. When both axes normal to the line
    are periodic, the discrete profile is rescaled to carry exactly ``b`` per
    cross-section (so a dipole's mean is zero to round-off).
    """
    p = np.asarray(d.point, dtype=float)
    perp = [k for k in range(3) if k != d.axis]

    def g(X):
        r = _min_image(X - p, grid)
        r[..., d.axis] = 0.0
        return d.core.density(np.einsum("...k,...k->...", r, r))

    rule, q = _core_rule(d.core)
    prof = _voxel_average(grid, g, perp, rule, q)
    if all(grid.periodic[k] for k in perp):
        h = grid.spacing
        content = prof.sum() / grid.cells[d.axis] * h[perp[0]] * h[perp[1]]
        if content > 0:
            prof = prof / content
    return prof[..., None, None] * np.outer(np.asarray(d.burgers, dtype=float), d.tangent)


def loop_alpha(grid: Grid, loop: Loop) -> np.ndarray:
    """Voxel-averaged Nye tensor ``(nz, ny, nx, 3, 3)`` of one circular loop."""
    c = np.asarray(loop.center, dtype=float)
    n = np.asarray(loop.normal, dtype=float)
    n = n / np.linalg.norm(n)
    R = float(loop.radius)

    def tg(X):
        r = _min_image(X - c, grid)
        hn = r @ n
        rp = r - hn[..., None] * n
        rho_p = np.linalg.norm(rp, axis=-1)
        t = np.cross(n, rp) / np.maximum(rho_p, 1e-300)[..., None]
        return t * loop.core.density((rho_p - R) ** 2 + hn**2)[..., None]

    rule, q = _core_rule(loop.core)
    if loop.core.shape == "disc":
        q = 4
    line = _voxel_average(grid, tg, (0, 1, 2), rule, q)
    return np.einsum("i,...j->...ij", np.asarray(loop.burgers, dtype=float), line)


def nye_field(grid: Grid, content) -> np.ndarray:
    """Per-voxel Nye tensor ``(nz, ny, nx, 3, 3)`` (1/m) of a list of dislocations and loops."""
    alpha = np.zeros(grid.shape + (3, 3))
    for item in content:
        if isinstance(item, StraightDislocation):
            alpha += straight_alpha(grid, item)
        elif isinstance(item, Loop):
            alpha += loop_alpha(grid, item)
        else:
            raise TypeError(f"unknown dislocation content {item!r}")
    return alpha


def check_mean(alpha: np.ndarray, periodic, tolerance: float = DEFAULT_MEAN_TOLERANCE) -> np.ndarray:
    """Refuse a Nye field whose net Burgers vector threads a periodic cross-section.

    Column ``a`` of ``alpha`` (dislocation lines along lab axis ``a``) must
    have zero mean when every axis other than ``a`` is periodic (on a fully
    periodic cell: all of ``alpha``). A mean below ``tolerance`` times the
    mean of ``|alpha|`` is round-off and is removed; a larger one raises.

    Returns:
        ``alpha`` with the round-off mean removed from the constrained columns.

    Raises:
        ConfigError: one line naming the mean.
    """
    per = _periodic(periodic) if not isinstance(periodic, tuple) else periodic
    alpha = np.array(alpha, dtype=float, copy=True)
    scale = float(np.mean(np.sqrt(np.einsum("...ij,...ij->...", alpha, alpha))))
    for a in range(3):
        if not all(per[b] for b in range(3) if b != a):
            continue
        mean = alpha[..., :, a].reshape(-1, 3).mean(axis=0)
        ratio = float(np.linalg.norm(mean) / scale) if scale > 0 else 0.0
        if ratio > tolerance:  # never true for tolerance = inf
            cells = "a fully periodic cell" if all(per) else f"a cell periodic across lines along {AXES[a]}"
            raise ConfigError(
                f"the Nye tensor has a non-zero mean on {cells}: mean alpha_i{AXES[a]} = "
                f"[{', '.join(f'{m:.3g}' for m in mean)}] 1/m (|mean| / mean|alpha| = {ratio:.2g} > "
                f"{tolerance:g}); use dipoles, quadrupoles or loops (zero net Burgers vector), or non-periodic faces")
        alpha[..., :, a] -= mean
    return alpha


def check_net_content(content, periodic) -> None:
    """Refuse prescribed content with a net Burgers vector threading a periodic cross-section (exact, per line).

    The continuum counterpart of :func:`check_mean` for :func:`content_from_config` lists: the
    straight lines along axis ``a`` must add up to zero Burgers vector when every other axis is
    periodic; loops carry none. (The voxel averages of a balanced content have a small discrete
    mean, e.g. ~1e-5 for a tilted loop on a coarse grid, which is then removed.)
    """
    per = _periodic(periodic) if not isinstance(periodic, tuple) else periodic
    for a in range(3):
        if not all(per[b] for b in range(3) if b != a):
            continue
        lines = [d for d in content if isinstance(d, StraightDislocation) and d.axis == a]
        if not lines:
            continue
        net = sum(d.sense * np.asarray(d.burgers, dtype=float) for d in lines)
        total = sum(np.linalg.norm(d.burgers) for d in lines)
        if np.linalg.norm(net) > 1e-9 * total:
            cells = "a fully periodic cell" if all(per) else f"a cell periodic across lines along {AXES[a]}"
            raise ConfigError(
                f"the dislocations along {AXES[a]} have a net Burgers vector [{', '.join(f'{v:.3g}' for v in net)}] m "
                f"on {cells}: the mean of the Nye tensor would be non-zero; use dipoles, quadrupoles or loops, "
                f"or non-periodic faces")


# ================================================================ FEM solve ==

def constrained_prolongation(V, grid: Grid, held):
    """PETSc prolongation ``T`` (reduced -> owned dofs of ``V``) for fields periodic along ``grid.periodic``.

    Each periodic node class has one reduced dof per component, represented by
    its image with indices below the cell count; entries for which
    ``held(ijk) -> (n, bs) bool`` is true (``ijk``: node indices wrapped along
    periodic axes) are held at zero (no column). Uses the class numbering of
    :mod:`solver.fem`.

    Returns:
        ``(T, n_reduced_global)``.
    """
    from .fem import _csr_matrix, _number_classes

    comm = V.mesh.comm
    bs = V.dofmap.index_map_bs
    n_owned = V.dofmap.index_map.size_local
    cells = np.asarray(grid.cells, dtype=np.int64)
    per = np.asarray(grid.periodic)
    X = V.tabulate_dof_coordinates()[:n_owned] - np.asarray(grid.origin)
    ijk = np.rint(X / grid.spacing).astype(np.int64)
    n_nodes = np.where(per, cells, cells + 1)
    wrapped = np.where(per, ijk % cells, ijk)
    node_class = wrapped[:, 0] + n_nodes[0] * (wrapped[:, 1] + n_nodes[1] * wrapped[:, 2])
    is_master = np.all(np.where(per, ijk < cells, True), axis=1)
    held_mask = np.asarray(held(wrapped), dtype=bool).reshape(n_owned, bs)
    dof_class = (node_class[:, None] * bs + np.arange(bs)).ravel()
    master = (is_master[:, None] & ~held_mask).ravel()
    col = _number_classes(comm, dof_class, master, int(np.prod(n_nodes)) * bs, 0, block=1)
    cols = col[dof_class].reshape(-1, 1)
    T = _csr_matrix(comm, cols, np.ones(cols.shape), int(master.sum()))
    return T, int(comm.allreduce(int(master.sum())))


def _potential_held(grid: Grid, a: int):
    """Held entries of ``Z_ia``: faces normal to a non-periodic axis ``b != a``; else one pinned node."""
    cells = np.asarray(grid.cells)
    dirichlet = [b for b in range(3) if b != a and not grid.periodic[b]]

    def held(ijk):
        if dirichlet:
            return np.any([(ijk[:, b] == 0) | (ijk[:, b] == cells[b]) for b in dirichlet], axis=0)[:, None]
        return np.all(ijk == 0, axis=1)[:, None]  # constant mode: pin one node

    return held, ("dirichlet", tuple(dirichlet)) if dirichlet else ("pinned",)


def _displacement_held(grid: Grid):
    """Rigid modes of ``z``: translations at node 0; the rotation about ``c`` if both axes normal to ``c`` are free."""
    cells = np.asarray(grid.cells)

    def held(ijk):
        out = np.zeros((ijk.shape[0], 3), dtype=bool)
        out[np.all(ijk == 0, axis=1)] = True
        for c in range(3):
            a, b = (k for k in range(3) if k != c)
            if grid.periodic[a] or grid.periodic[b]:
                continue
            target = np.zeros(3, dtype=np.int64)
            target[a] = cells[a]
            out[np.all(ijk == target, axis=1), b] = True  # e_c x (L_a e_a) is along e_b
        return out

    return held


@dataclasses.dataclass
class FDMResult:
    """Per-voxel fields (on the root rank; ``None`` elsewhere) and diagnostics (every rank).

    Attributes:
        alpha: ``(nz, ny, nx, 3, 3)`` Nye tensor solved for, 1/m.
        chi: incompatible elastic distortion ``curl Z``, cell centres.
        elastic_distortion: ``Ue = chi + grad z``.
        stress: ``T = C : Ue`` (Pa), ``(nz, ny, nx, 3, 3)``.
        residuals: relative L2 norms over voxel centres of ``curl chi - alpha``
            and of ``div chi`` (finite differences of the centre values,
            :mod:`solver.nye`), normalised by ``|alpha|`` resp. ``|grad chi|``.
        dofs: unknowns solved (reduced): ``potential`` (all nine ``Z_ia``), ``displacement``.
        timings: seconds: ``setup`` (mesh, constraints, assembly, factorisation),
            ``potential``, ``equilibrium``, ``fields``.
        linear_solver: ``direct`` or ``iterative``.
        iterations: Krylov iterations summed over the solves (1 per solve when direct).
    """

    alpha: np.ndarray | None
    chi: np.ndarray | None
    elastic_distortion: np.ndarray | None
    stress: np.ndarray | None
    residuals: dict
    dofs: dict
    timings: dict
    linear_solver: str = "direct"
    iterations: dict = dataclasses.field(default_factory=dict)


class FDMSolver:
    """Elasto-static FDM on a voxel box (module docstring for the formulation).

    Args:
        comm: MPI communicator.
        grid: the voxel box and its periodicity.
        stiffness: lab-frame ``C_ijkl`` ``(3, 3, 3, 3)`` (Pa), homogeneous.
        petsc_options: KSP/PC options for both linear systems, on top of those
            of ``linear_solver``.
        linear_solver: ``direct`` (LU, MUMPS, one factorisation per matrix,
            reused for every right-hand side), ``iterative`` (CG + GAMG, rigid
            body modes as the near null space of the equilibrium matrix), or
            ``auto``: direct for 2-D maps (one voxel along an axis) and up to
            :data:`AUTO_DIRECT_MAX_DOFS` displacement unknowns, else iterative.
    """

    def __init__(self, comm, grid: Grid, stiffness, petsc_options=None, linear_solver: str = "auto"):
        t0 = time.perf_counter()
        if linear_solver not in LINEAR_SOLVERS:
            raise ConfigError(f"solver.linear_solver {linear_solver!r} is unknown; known: {', '.join(LINEAR_SOLVERS)}")
        try:
            import dolfinx_solver  # noqa: F401
        except ImportError:
            pass
        import dolfinx.fem.petsc
        import ufl
        from dolfinx import fem
        from petsc4py import PETSc

        from .fem import voxel_mesh

        self.comm, self.grid = comm, grid
        self._PETSc = PETSc
        C = np.asarray(stiffness, dtype=float)
        if C.shape != (3, 3, 3, 3) or not np.all(np.isfinite(C)):
            raise ConfigError(f"stiffness must be a finite (3, 3, 3, 3) tensor, got shape {C.shape}")
        self.stiffness = C
        self.mesh, self.voxel = voxel_mesh(comm, grid.cells, grid.size, grid.origin)
        mesh = self.mesh
        self.n_cells = mesh.topology.index_map(3).size_local
        self._cells = np.arange(self.n_cells, dtype=np.int32)
        self.Vs = fem.functionspace(mesh, ("Lagrange", 1))
        self.Vu = fem.functionspace(mesh, ("Lagrange", 1, (3,)))
        W0 = fem.functionspace(mesh, ("DG", 0))
        dx = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": 2})
        if linear_solver == "auto":
            n_u = 3 * int(np.prod([c if p else c + 1 for c, p in zip(grid.cells, grid.periodic)]))
            linear_solver = "direct" if min(grid.cells) == 1 or n_u <= AUTO_DIRECT_MAX_DOFS else "iterative"
        self.linear_solver = linear_solver
        opts = dict(DIRECT_OPTIONS if linear_solver == "direct" else ITERATIVE_OPTIONS)
        opts.update(petsc_options or {})
        self._ksps, self._mats, self._vecs = [], [], []

        # ---- Coulomb-gauge potential: one scalar Poisson matrix, one constraint per column pattern
        p, q = ufl.TrialFunction(self.Vs), ufl.TestFunction(self.Vs)
        a_s = fem.form(ufl.inner(ufl.grad(p), ufl.grad(q)) * dx)
        K_s = dolfinx.fem.petsc.assemble_matrix(a_s)
        K_s.assemble()
        self.source = fem.Function(W0, name="alpha_component")
        self._L_s = fem.form(self.source * q * dx)
        self._b_s = dolfinx.fem.petsc.create_vector(self.Vs)
        systems, self._column = {}, []
        n_red_z = 0
        for a in range(3):
            held, key = _potential_held(grid, a)
            if key not in systems:
                T, n_red = constrained_prolongation(self.Vs, grid, held)
                A = K_s.PtAP(T)
                systems[key] = (T, self._ksp(A, opts, f"fdm_z{len(systems)}_"), n_red)
                self._mats += [T, A]
            self._column.append(systems[key])
            n_red_z += 3 * systems[key][2]
        K_s.destroy()
        self.Z = [[fem.Function(self.Vs, name=f"Z{i + 1}{a + 1}") for a in range(3)] for i in range(3)]
        Zt = ufl.as_tensor([[self.Z[i][a] for a in range(3)] for i in range(3)])
        gZ = ufl.grad(Zt)  # gZ[i, k, j] = dZ_ik/dx_j
        e = ufl.PermutationSymbol(3)
        i, j, k, l, m = ufl.indices(5)
        self.chi = ufl.as_tensor(e[m, j, k] * gZ[i, k, j], (i, m))

        # ---- equilibrium for the compatible part z
        self._C = fem.Constant(mesh, PETSc.ScalarType(C))
        Cc = self._C
        u, v = ufl.TrialFunction(self.Vu), ufl.TestFunction(self.Vu)
        a_u = fem.form(Cc[i, j, k, l] * ufl.grad(u)[k, l] * ufl.grad(v)[i, j] * dx)
        self._L_u = fem.form(-Cc[i, j, k, l] * self.chi[k, l] * ufl.grad(v)[i, j] * dx)
        K_u = dolfinx.fem.petsc.assemble_matrix(a_u)
        K_u.assemble()
        self._T_u, n_red_u = constrained_prolongation(self.Vu, grid, _displacement_held(grid))
        A_u = K_u.PtAP(self._T_u)
        K_u.destroy()
        if linear_solver == "iterative":
            self._near_nullspace(A_u)
        self._ksp_u = self._ksp(A_u, opts, "fdm_u_")
        self._mats += [self._T_u, A_u]
        self._b_u = dolfinx.fem.petsc.create_vector(self.Vu)
        self.z = fem.Function(self.Vu, name="compatible_displacement")

        # ---- cell-centre expressions
        Ue = self.chi + ufl.grad(self.z)
        sigma = ufl.as_tensor(Cc[i, j, k, l] * Ue[k, l], (i, j))
        centre = np.full((1, 3), 0.5)
        self._expr = fem.Expression(ufl.as_vector([self.chi[a, b] for a in range(3) for b in range(3)]
                                                  + [Ue[a, b] for a in range(3) for b in range(3)]
                                                  + [sigma[a, b] for a in range(3) for b in range(3)]), centre)
        n_nodes = self.Vs.dofmap.index_map.size_global
        self.dofs = {"potential": int(n_red_z), "displacement": int(n_red_u),
                     "total": int(n_red_z + n_red_u), "mesh_nodes": int(n_nodes)}
        self.timings = {"setup": time.perf_counter() - t0}

    def _near_nullspace(self, A):
        """Rigid body modes, restricted to the reduced unknowns, as GAMG's near null space of ``A``."""
        PETSc = self._PETSc
        T, grid = self._T_u, self.grid
        n_owned = self.Vu.dofmap.index_map.size_local
        X = self.Vu.tabulate_dof_coordinates()[:n_owned] - np.asarray(grid.origin)
        modes = [np.tile(np.eye(3)[c], (n_owned, 1)) for c in range(3)]
        for c in range(3):
            a, b = (k for k in range(3) if k != c)
            if not (grid.periodic[a] or grid.periodic[b]):
                modes.append(np.cross(np.eye(3)[c], X))
        full = T.createVecLeft()
        ones, count = T.createVecLeft(), T.createVecRight()
        ones.set(1.0)
        T.multTranspose(ones, count)
        cnt = np.maximum(count.getArray(readonly=True), 1.0)
        basis = []
        for mode in modes:
            full.setArray(mode.reshape(-1))
            y = T.createVecRight()
            T.multTranspose(full, y)
            y.setArray(y.getArray(readonly=True) / cnt)
            for q in basis:  # Gram-Schmidt
                y.axpy(-q.dot(y), q)
            y.scale(1.0 / y.norm())
            basis.append(y)
        ns = PETSc.NullSpace().create(vectors=basis, comm=self.comm)
        A.setNearNullSpace(ns)
        self._vecs += basis + [full, ones, count]
        self._nullspace = ns

    def _ksp(self, A, opts, prefix):
        PETSc = self._PETSc
        ksp = PETSc.KSP().create(self.comm)
        ksp.setOperators(A)
        prefix = f"slipstream_{prefix}{id(self)}_"
        ksp.setOptionsPrefix(prefix)
        popts = PETSc.Options()
        for key, val in opts.items():
            popts[prefix + key] = val
        ksp.setFromOptions()
        for key in opts:
            popts.delValue(prefix + key)
        ksp.setUp()  # factorises once; every right-hand side reuses it
        self._ksps.append(ksp)
        return ksp

    def _solve(self, ksp, T, b, out_function, what):
        PETSc = self._PETSc
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        rhs = T.createVecRight()
        x = T.createVecRight()
        T.multTranspose(b, rhs)
        ksp.solve(rhs, x)
        reason = ksp.getConvergedReason()
        if reason <= 0:
            raise SolverError(f"FDM {what}: linear solve failed (KSP reason {reason}, "
                              f"{ksp.getIterationNumber()} iterations)")
        self.iterations[what.split()[0]] = self.iterations.get(what.split()[0], 0) + ksp.getIterationNumber()
        T.mult(x, out_function.x.petsc_vec)
        out_function.x.scatter_forward()
        rhs.destroy()
        x.destroy()

    def solve(self, alpha: np.ndarray, root: int = 0) -> FDMResult:
        """Solve for ``chi``, ``z`` and the stress of a per-voxel Nye field.

        Args:
            alpha: ``(nz, ny, nx, 3, 3)`` Nye tensor (1/m), the same array on
                every rank. Check it with :func:`check_mean` first on
                periodic cells (:func:`solve_fdm` does).
            root: rank that receives the voxel arrays.
        """
        import dolfinx.fem.petsc

        grid = self.grid
        alpha = np.asarray(alpha, dtype=float)
        if alpha.shape != grid.shape + (3, 3):
            raise ConfigError(f"alpha has shape {alpha.shape}, the grid needs {grid.shape + (3, 3)}")
        t0 = time.perf_counter()
        self.iterations = {}
        a_loc = alpha.reshape(-1, 3, 3)[self.voxel]
        for a in range(3):
            T, ksp, _ = self._column[a]
            for i in range(3):
                self.source.x.array[: self.n_cells] = a_loc[:, i, a]
                with self._b_s.localForm() as loc:
                    loc.set(0.0)
                dolfinx.fem.petsc.assemble_vector(self._b_s, self._L_s)
                self._solve(ksp, T, self._b_s, self.Z[i][a], f"potential Z_{i + 1}{a + 1}")
        t1 = time.perf_counter()
        with self._b_u.localForm() as loc:
            loc.set(0.0)
        dolfinx.fem.petsc.assemble_vector(self._b_u, self._L_u)
        self._solve(self._ksp_u, self._T_u, self._b_u, self.z, "equilibrium")
        t2 = time.perf_counter()
        vals = self._expr.eval(self.mesh, self._cells).reshape(self.n_cells, 3, 3, 3)
        self.cell_values = {"chi": vals[:, 0], "elastic_distortion": vals[:, 1], "stress": vals[:, 2]}
        full = self.gather(self.cell_values, root)
        residuals = None
        if self.comm.rank == root:
            residuals = fdm_residuals(alpha, full["chi"], grid)
        residuals = self.comm.bcast(residuals, root=root)
        t3 = time.perf_counter()
        self.timings.update({"potential": t1 - t0, "equilibrium": t2 - t1, "fields": t3 - t2})
        out = full if full is not None else {}
        return FDMResult(alpha if self.comm.rank == root else None, out.get("chi"), out.get("elastic_distortion"),
                         out.get("stress"), residuals, dict(self.dofs), dict(self.timings), self.linear_solver,
                         dict(self.iterations))

    def gather(self, fields: dict, root: int = 0):
        """Per-cell arrays -> ``(nz, ny, nx, ...)`` voxel arrays on ``root`` (``None`` elsewhere)."""
        gathered = self.comm.gather((self.voxel, fields), root=root)
        if self.comm.rank != root:
            return None
        out = {}
        for key, val in fields.items():
            arr = np.zeros((self.grid.n_voxels,) + val.shape[1:], dtype=val.dtype)
            for vox, f in gathered:
                arr[vox] = f[key]
            out[key] = arr.reshape(self.grid.shape + val.shape[1:])
        return out

    def write_xdmf(self, path, alpha):
        """ParaView file: per-voxel (DG0) alpha, chi, Ue, stress, |alpha|, von Mises; Q1 displacement ``z``."""
        from dolfinx import fem
        from dolfinx.io import XDMFFile

        from .tensors import von_mises_stress

        W = fem.functionspace(self.mesh, ("DG", 0))
        W9 = fem.functionspace(self.mesh, ("DG", 0, (3, 3)))
        n = self.n_cells
        a_loc = np.asarray(alpha, dtype=float).reshape(-1, 3, 3)[self.voxel]
        tensors = {"alpha": a_loc, **self.cell_values}
        funcs = []
        for name, val in tensors.items():
            f = fem.Function(W9, name=name)
            f.x.array[: 9 * n] = val.reshape(-1)
            funcs.append(f)
        for name, val in (("alpha_norm", np.sqrt(np.einsum("nij,nij->n", a_loc, a_loc))),
                          ("von_mises_stress", von_mises_stress(self.cell_values["stress"]))):
            f = fem.Function(W, name=name)
            f.x.array[:n] = val
            funcs.append(f)
        with XDMFFile(self.comm, str(path), "w") as xf:
            xf.write_mesh(self.mesh)
            xf.write_function(self.z, 0.0)
            for f in funcs:
                f.x.scatter_forward()
                xf.write_function(f, 0.0)

    def destroy(self):
        """Free PETSc objects."""
        for obj in self._ksps + self._mats + self._vecs + [self._b_s, self._b_u]:
            obj.destroy()
        if getattr(self, "_nullspace", None) is not None:
            self._nullspace.destroy()
            self._nullspace = None
        self._ksps, self._mats, self._vecs = [], [], []


def fdm_residuals(alpha: np.ndarray, chi: np.ndarray, grid: Grid) -> dict:
    """Relative L2 residuals of ``curl chi = alpha`` and ``div chi = 0`` at voxel centres (finite differences)."""
    h, per = grid.spacing, grid.periodic
    c = _nye.curl(chi, h, per)
    d = _nye.divergence(chi, h, per)
    G = _nye.gradient(chi, h, per)
    norm_a = float(np.sqrt(np.sum(alpha**2)))
    norm_g = float(np.sqrt(np.sum(G**2)))
    return {"curl_chi_minus_alpha": float(np.sqrt(np.sum((c - alpha) ** 2))) / norm_a if norm_a > 0 else 0.0,
            "div_chi": float(np.sqrt(np.sum(d**2))) / norm_g if norm_g > 0 else 0.0}


def solve_fdm(comm, grid: Grid, stiffness, alpha, petsc_options=None, mean_tolerance=DEFAULT_MEAN_TOLERANCE,
              root: int = 0, linear_solver: str = "auto") -> FDMResult:
    """Check the mean of ``alpha`` (periodic cells), build the solver, solve, free it."""
    alpha = check_mean(alpha, grid.periodic, mean_tolerance)
    solver = FDMSolver(comm, grid, stiffness, petsc_options, linear_solver)
    try:
        return solver.solve(alpha, root)
    finally:
        solver.destroy()


# ==================================================================== config ==

def _line(value, what) -> tuple[int, int]:
    if isinstance(value, str):
        v = value.strip().lower()
        sense = -1 if v.startswith("-") else 1
        v = v.lstrip("+-")
        if v in ("x", "y", "z"):
            return AXES.index(v), sense
        raise ConfigError(f"{what} must be x, y, z (or -x, ...) or a 3-vector along a lab axis, got {value!r}")
    vec = _vector(value, what)
    nz = np.flatnonzero(np.abs(vec) > 1e-12 * np.abs(vec).max(initial=0.0))
    if len(nz) != 1:
        raise ConfigError(f"{what} must be along a lab axis (x, y or z), got {value!r}")
    return int(nz[0]), int(np.sign(vec[nz[0]]))


def _point(value, axis, what) -> np.ndarray:
    """3 coordinates, or 2 (the two axes normal to the line, in x, y, z order; the third is 0)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        p = np.zeros(3)
        p[[k for k in range(3) if k != axis]] = _vector(value, what, 2)
        return p
    return _vector(value, what)


def _core(cfg, grid: Grid, axes, what) -> Core:
    h = max((grid.spacing[k] for k in axes if grid.cells[k] > 1), default=float(grid.spacing.max()))
    if cfg is None:
        return Core("gaussian", 2.0 * h)
    if not isinstance(cfg, dict) or set(cfg) - {"shape", "width"}:
        raise ConfigError(f"{what}.core must be a mapping with shape (gaussian|disc) and width (m), got {cfg!r}")
    shape = cfg.get("shape", "gaussian")
    if shape not in ("gaussian", "disc"):
        raise ConfigError(f"{what}.core.shape {shape!r} is unknown; known: gaussian, disc")
    width = _positive(cfg.get("width", 2.0 * h), f"{what}.core.width")
    return Core(shape, width)


_KIND_KEYS = {
    "screw": {"position", "burgers", "line", "core"},
    "edge": {"position", "burgers", "direction", "line", "core"},
    "straight": {"position", "burgers", "line", "core"},
    "dipole": {"character", "positions", "burgers", "direction", "line", "core"},
    "quadrupole": {"character", "center", "spacing", "burgers", "direction", "line", "core"},
    "loop": {"center", "normal", "radius", "burgers", "core"},
}


def _burgers(item, character, axis, sense, what) -> np.ndarray:
    t = sense * np.eye(3)[axis]
    if character == "straight" or (character is None and isinstance(item.get("burgers"), (list, tuple))):
        return _vector(item.get("burgers"), f"{what}.burgers")
    if "burgers" not in item:
        raise ConfigError(f"{what}: missing burgers (m)")
    b = _real(item["burgers"], f"{what}.burgers")
    if b == 0:
        raise ConfigError(f"{what}.burgers must not be zero")
    if character == "screw":
        if "direction" in item:
            raise ConfigError(f"{what}: a screw dislocation's Burgers vector lies along its line; drop 'direction'")
        return b * t
    if character == "edge":
        default = np.eye(3)[(axis + 1) % 3]
        d = _vector(item["direction"], f"{what}.direction") if "direction" in item else default
        if np.linalg.norm(d) == 0 or abs(d @ t) > 1e-9 * np.linalg.norm(d):
            raise ConfigError(f"{what}.direction must be a non-zero vector normal to the line, got {list(d)}")
        return b * d / np.linalg.norm(d)
    raise ConfigError(f"{what}.character must be screw, edge or (with a burgers vector) straight, got {character!r}")


def content_from_config(items, grid: Grid) -> list:
    """Dislocation content (straight lines, loops) from the ``dislocations`` list (docs/fdm.md)."""
    if not isinstance(items, list) or not items:
        raise ConfigError("dislocations must be a non-empty list of "
                          "{kind: screw|edge|straight|dipole|quadrupole|loop, ...}")
    out = []
    for n, item in enumerate(items):
        what = f"dislocations[{n}]"
        if not isinstance(item, dict) or "kind" not in item:
            raise ConfigError(f"{what} must be a mapping with a kind (screw, edge, straight, dipole, quadrupole, loop)")
        kind = item["kind"]
        if kind not in _KIND_KEYS:
            raise ConfigError(f"{what}.kind {kind!r} is unknown; known: {', '.join(_KIND_KEYS)}")
        unknown = sorted(set(item) - _KIND_KEYS[kind] - {"kind"})
        if unknown:
            raise ConfigError(f"{what} ({kind}): unknown key(s) {unknown}; allowed: {sorted(_KIND_KEYS[kind])}")
        if kind == "loop":
            for key in ("center", "normal", "radius", "burgers"):
                if key not in item:
                    raise ConfigError(f"{what} (loop): missing {key}")
            normal = _vector(item["normal"], f"{what}.normal")
            if np.linalg.norm(normal) == 0:
                raise ConfigError(f"{what}.normal must not be zero")
            out.append(Loop(tuple(_vector(item["center"], f"{what}.center")), tuple(normal),
                            _positive(item["radius"], f"{what}.radius"),
                            tuple(_vector(item["burgers"], f"{what}.burgers")),
                            _core(item.get("core"), grid, (0, 1, 2), what)))
            continue
        axis, sense = _line(item.get("line", "z"), f"{what}.line")
        perp = [k for k in range(3) if k != axis]
        core = _core(item.get("core"), grid, perp, what)
        if kind in ("screw", "edge", "straight"):
            if "position" not in item:
                raise ConfigError(f"{what} ({kind}): missing position")
            b = _burgers(item, kind, axis, sense, what)
            out.append(StraightDislocation(tuple(_point(item["position"], axis, f"{what}.position")), axis, sense,
                                           tuple(b), core))
            continue
        character = item.get("character")
        if character is None and not isinstance(item.get("burgers"), (list, tuple)):
            raise ConfigError(f"{what} ({kind}): give character (screw|edge) or a burgers vector")
        b = _burgers(item, character, axis, sense, what)
        if kind == "dipole":
            pos = item.get("positions")
            if not isinstance(pos, list) or len(pos) != 2:
                raise ConfigError(f"{what} (dipole): positions must be two points [+b, -b], got {pos!r}")
            points = [_point(p, axis, f"{what}.positions[{k}]") for k, p in enumerate(pos)]
            signs = (1.0, -1.0)
        else:  # quadrupole: + at (-,-) and (+,+), - at (+,-) and (-,+) of the rectangle
            if "center" not in item or "spacing" not in item:
                raise ConfigError(f"{what} (quadrupole): needs center and spacing [d1, d2] (m)")
            c = _point(item["center"], axis, f"{what}.center")
            s = _vector(item["spacing"], f"{what}.spacing", 2)
            if np.any(s <= 0):
                raise ConfigError(f"{what}.spacing must be positive, got {s.tolist()}")
            points, signs = [], []
            for s1, s2, sign in ((-1, -1, 1.0), (1, -1, -1.0), (1, 1, 1.0), (-1, 1, -1.0)):
                p = c.copy()
                p[perp[0]] += 0.5 * s1 * s[0]
                p[perp[1]] += 0.5 * s2 * s[1]
                points.append(p)
                signs.append(sign)
        for p, sign in zip(points, signs):
            out.append(StraightDislocation(tuple(p), axis, sense, tuple(sign * b), core))
    return out


@dataclasses.dataclass
class FDMSetup:
    """A checked ``slipstream fdm`` config.

    ``alpha`` is the per-voxel Nye tensor (1/m), mean-checked for the grid's
    periodicity with its round-off mean removed; ``stiffness`` the lab-frame
    ``C_ijkl`` (Pa); ``material`` its JSON description; ``source`` where
    ``alpha`` came from.
    """

    config: dict
    grid: Grid
    stiffness: np.ndarray
    material: dict
    alpha: np.ndarray
    source: str
    output: dict
    solver: dict


def _section(cfg, name, defaults):
    sec = cfg.get(name) or {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{name} must be a mapping, got {sec!r}")
    unknown = sorted(set(sec) - set(defaults))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **sec}


def _read_nye(cfg, base_dir: pathlib.Path) -> tuple[np.ndarray, dict, str]:
    """``nye: {store: RUN/results.zarr, sample: 0, step: -1}`` or ``{file: alpha.npz, key: nye}``."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"nye must be a mapping {{store: ..., sample:, step:}} or {{file: ..., key:}}, got {cfg!r}")
    if "store" in cfg:
        unknown = sorted(set(cfg) - {"store", "sample", "step"})
        if unknown:
            raise ConfigError(f"nye: unknown key(s) {unknown}; allowed with store: sample, step")
        from . import store as _store

        path = pathlib.Path(cfg["store"])
        path = path if path.is_absolute() else base_dir / path
        group = _store.open_store(path)
        if "nye" not in group:
            raise StoreError(f"{path} has no nye array (the campaign was run without with_nye)")
        arr = group["nye"]
        sample, step = _int(cfg.get("sample", 0), "nye.sample"), _int(cfg.get("step", -1), "nye.step")
        if not -arr.shape[0] <= sample < arr.shape[0] or not -arr.shape[1] <= step < arr.shape[1]:
            raise StoreError(f"nye: sample {sample} / step {step} out of range for shape {arr.shape[:2]} in {path}")
        values = np.asarray(arr[sample, step], dtype=float)
        size = None
        ms = (group.attrs.get("config") or {}).get("microstructure") or {}
        if isinstance(ms, dict) and "size" in ms:
            size = ms["size"]
        return _nye.from_tensor9(values), {"size": size}, f"{path} sample {sample} step {step}"
    if "file" in cfg:
        unknown = sorted(set(cfg) - {"file", "key"})
        if unknown:
            raise ConfigError(f"nye: unknown key(s) {unknown}; allowed with file: key")
        path = pathlib.Path(cfg["file"])
        path = path if path.is_absolute() else base_dir / path
        from .errors import InputFileError

        if not path.is_file():
            raise InputFileError(f"nye file not found: {path}")
        key = cfg.get("key", "nye")
        try:
            with np.load(path, allow_pickle=False) as data:
                if key not in data:
                    raise InputFileError(f"{path} has no array {key!r} (has {', '.join(data.files)})")
                values = np.asarray(data[key], dtype=float)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"{path} is not a readable .npz file ({' '.join(str(exc).split())[:120]})") from None
        if values.ndim == 4 and values.shape[-1] == 9:
            values = _nye.from_tensor9(values)
        if values.ndim != 5 or values.shape[-2:] != (3, 3):
            raise InputFileError(f"{path}:{key} must be (nz, ny, nx, 3, 3) or (nz, ny, nx, 9), got {values.shape}")
        return values, {}, f"{path}:{key}"
    raise ConfigError("nye needs store: (a campaign store with a nye array) or file: (an .npz)")


def prepare_fdm(cfg: dict, base_dir: pathlib.Path | str = ".") -> FDMSetup:
    """Check an FDM config and build the grid, stiffness and Nye field (docs/fdm.md).

    Raises:
        ConfigError, InputFileError, StoreError: one line naming the problem.
    """
    base_dir = pathlib.Path(base_dir)
    if not isinstance(cfg, dict):
        raise ConfigError("an FDM config must be a mapping")
    unknown = sorted(set(cfg) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; allowed: {', '.join(TOP_KEYS)}")
    if ("dislocations" in cfg) == ("nye" in cfg):
        raise ConfigError("give exactly one of dislocations (prescribed content) or nye (a stored Nye field)")
    if "material" not in cfg:
        raise ConfigError("config has no 'material' section (isotropic: {shear_modulus, poisson_ratio}, or preset: Cu)")
    grid_cfg = cfg.get("grid") or {}
    if not isinstance(grid_cfg, dict):
        raise ConfigError(f"grid must be a mapping, got {grid_cfg!r}")
    unknown = sorted(set(grid_cfg) - {"cells", "size", "origin", "periodic"})
    if unknown:
        raise ConfigError(f"grid: unknown key(s) {unknown}; allowed: cells, size, origin, periodic")
    output = _section(cfg, "output", OUTPUT_KEYS)
    for key in OUTPUT_KEYS:
        if not isinstance(output[key], bool):
            raise ConfigError(f"output.{key} must be true or false, got {output[key]!r}")
    solver = _section(cfg, "solver", SOLVER_KEYS)
    if not isinstance(solver["petsc_options"], dict):
        raise ConfigError("solver.petsc_options must be a mapping of PETSc option names to values")
    solver["mean_tolerance"] = _positive(solver["mean_tolerance"], "solver.mean_tolerance")
    if solver["linear_solver"] not in LINEAR_SOLVERS:
        raise ConfigError(f"solver.linear_solver {solver['linear_solver']!r} is unknown; "
                          f"known: {', '.join(LINEAR_SOLVERS)}")
    stiffness, material = stiffness_from_config(cfg["material"])

    alpha = None
    size = grid_cfg.get("size")
    if "nye" in cfg:
        alpha, extra, source = _read_nye(cfg["nye"], base_dir)
        if not np.all(np.isfinite(alpha)):
            raise ConfigError(f"the Nye field from {source} has non-finite values")
        shape = alpha.shape[:3]
        cells = [shape[2], shape[1], shape[0]]
        if "cells" in grid_cfg and list(grid_cfg["cells"]) != cells:
            raise ConfigError(f"grid.cells {grid_cfg['cells']} do not match the Nye field's {cells} (x, y, z)")
        size = size if size is not None else extra.get("size")
        if size is None:
            raise ConfigError("grid.size (m) is needed: the Nye field does not say its voxel size")
    else:
        if "cells" not in grid_cfg or "size" not in grid_cfg:
            raise ConfigError("grid needs cells [nx, ny, nz] and size [Lx, Ly, Lz] (m)")
        cells = grid_cfg["cells"]
        source = "dislocations"
    grid = Grid(cells, size, grid_cfg.get("origin", (0.0, 0.0, 0.0)), grid_cfg.get("periodic", True))
    if alpha is None:
        content = content_from_config(cfg["dislocations"], grid)
        check_net_content(content, grid.periodic)  # exact; the discrete mean left is removed
        alpha = check_mean(nye_field(grid, content), grid.periodic, math.inf)
    alpha = check_mean(alpha, grid.periodic, solver["mean_tolerance"])  # refuse before anything is written
    return FDMSetup(cfg, grid, stiffness, material, alpha, source, output, solver)


# ==================================================================== run ==

def _write_zarr(path: pathlib.Path, setup: FDMSetup, result: FDMResult, summary: dict):
    import zarr
    import zarr.codecs

    from .store import _jsonable, provenance
    from .tensors import stiffness_to_voigt, to_voigt, von_mises_stress

    vox = ("z", "y", "x")
    group = zarr.create_group(store=str(path), zarr_format=3, overwrite=True)
    comp9 = ["11", "12", "13", "21", "22", "23", "31", "32", "33"]
    arrays = {
        "alpha": (_nye.to_tensor9(result.alpha), vox + ("tensor9",), "1/m", "Nye tensor",
                  "Nye tensor alpha_ij solved for (b_i per unit area normal to j), row-major", {"components": comp9}),
        "chi": (_nye.to_tensor9(result.chi), vox + ("tensor9",), "1", "incompatible elastic distortion",
                "chi = curl Z (curl chi = alpha, div chi = 0), voxel centre, row-major", {"components": comp9}),
        "elastic_distortion": (_nye.to_tensor9(result.elastic_distortion), vox + ("tensor9",), "1",
                               "elastic distortion", "Ue = chi + grad z, voxel centre, row-major",
                               {"components": comp9}),
        "stress": (to_voigt(result.stress), vox + ("voigt",), "Pa", "stress",
                   "internal stress T = C : Ue (small strain, = Cauchy), Voigt order 11, 22, 33, 23, 13, 12",
                   {"components": ["11", "22", "33", "23", "13", "12"], "shear_components": "tensor",
                    "measure": "Cauchy (small strain)"}),
        "von_mises_stress": (von_mises_stress(result.stress), vox, "Pa", "von Mises stress",
                             "sqrt(3/2 s:s) of the stress deviator", {}),
        "alpha_norm": (np.sqrt(np.einsum("...ij,...ij->...", result.alpha, result.alpha)), vox, "1/m", "|alpha|",
                       "Frobenius norm of the Nye tensor", {}),
    }
    for name, (data, dims, unit, long_name, desc, attrs) in arrays.items():
        data = np.ascontiguousarray(data, dtype=np.float64)
        arr = group.create_array(name, shape=data.shape, chunks=data.shape, dtype="float64",
                                 compressors=zarr.codecs.ZstdCodec(level=3), dimension_names=dims,
                                 attributes={"units": unit, "long_name": long_name, "description": desc, **attrs})
        arr[...] = data
    group.attrs.update({
        "config": _jsonable(setup.config), "material": setup.material,
        "stiffness_voigt_Pa": stiffness_to_voigt(setup.stiffness).tolist(),
        "grid": {"cells": list(setup.grid.cells), "size": list(setup.grid.size), "origin": list(setup.grid.origin),
                 "periodic": list(setup.grid.periodic)},
        "source": setup.source, "residuals": result.residuals, "dofs": result.dofs,
        "conventions": {"voxel_order": "(z, y, x), x fastest", "curl": "row-wise, (curl A)_im = e_mjk dA_ik/dx_j",
                        "nye": "b = int alpha n dA; screw along +z with b e_z: alpha_33 > 0",
                        "voigt_order": ["11", "22", "33", "23", "13", "12"]},
        "summary": _jsonable(summary), "provenance": provenance(),
    })
    group.attrs["schema"] = SCHEMA
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not (yet) in the v3 spec
        zarr.consolidate_metadata(str(path))


def write_pictures(out: pathlib.Path, result: FDMResult) -> list[pathlib.Path]:
    """PNG maps (middle z slice): the six stress components, von Mises stress, |alpha|."""
    from . import plots
    from .tensors import VOIGT_PAIRS, von_mises_stress

    pngs = []
    for (i, j) in VOIGT_PAIRS:
        comp = result.stress[..., i, j]
        lim = float(np.abs(comp).max()) or 1.0
        name = f"sigma_{AXES[i]}{AXES[j]}"
        pngs.append(plots.field_map(comp, out / f"stress_{AXES[i]}{AXES[j]}.png", title=name, unit="Pa",
                                    cmap="RdBu_r", vmin=-lim, vmax=lim))
    pngs.append(plots.field_map(von_mises_stress(result.stress), out / "von_mises_stress.png",
                                title="von Mises stress", unit="Pa", cmap="magma"))
    norm = np.sqrt(np.einsum("...ij,...ij->...", result.alpha, result.alpha))
    pngs.append(plots.field_map(norm, out / "alpha_norm.png", title="|alpha| (Nye tensor)", unit="1/m",
                                cmap="viridis"))
    return pngs


def run_fdm(comm, config_path, out, overwrite=False) -> dict:
    """``slipstream fdm``: check, solve, write ``fields.zarr``, ``fields.xdmf``, PNGs and ``summary.json``."""
    from .config import load_yaml

    config_path = pathlib.Path(config_path)
    cfg = load_yaml(config_path)
    setup = prepare_fdm(cfg, config_path.parent)
    out = pathlib.Path(out)
    fields = out / "fields.zarr"
    error = None
    if comm.rank == 0:
        if out.exists() and not out.is_dir():
            error = f"--out {out} exists and is not a directory"
        elif fields.exists() and not overwrite:
            error = f"{fields} already exists; choose another --out or pass --overwrite"
    error = comm.bcast(error, root=0)
    if error:
        raise StoreError(error)
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if fields.exists():
            shutil.rmtree(fields)
    comm.Barrier()
    alpha = setup.alpha  # mean-checked (and round-off mean removed) by prepare_fdm
    solver = FDMSolver(comm, setup.grid, setup.stiffness, setup.solver["petsc_options"],
                       setup.solver["linear_solver"])
    try:
        result = solver.solve(alpha)
        if setup.output["paraview"]:
            solver.write_xdmf(out / "fields.xdmf", alpha)
    finally:
        solver.destroy()
    summary = {}
    if comm.rank == 0:
        from .tensors import von_mises_stress

        summary = {
            "fields": str(fields),
            "paraview": str(out / "fields.xdmf") if setup.output["paraview"] else None,
            "grid": {"cells": list(setup.grid.cells), "size_m": list(setup.grid.size),
                     "periodic": list(setup.grid.periodic)},
            "source": setup.source, "ranks": comm.size, "dofs": result.dofs, "residuals": result.residuals,
            "linear_solver": result.linear_solver, "krylov_iterations": result.iterations,
            "timings_s": result.timings,
            "max_abs_stress_Pa": float(np.abs(result.stress).max()),
            "max_von_mises_stress_Pa": float(von_mises_stress(result.stress).max()),
        }
        pngs = write_pictures(out, result) if setup.output["plots"] else []
        summary["pictures"] = [str(p) for p in pngs]
        _write_zarr(fields, setup, result, summary)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def describe(summary: dict) -> str:
    """One line for the terminal."""
    r = summary["residuals"]
    return (f"{summary['dofs']['total']} dofs on {summary['ranks']} rank(s) in "
            f"{sum(summary['timings_s'].values()):.2f} s; max |stress| {summary['max_abs_stress_Pa'] / 1e6:.4g} MPa; "
            f"residuals |curl chi - alpha| {r['curl_chi_minus_alpha']:.2e}, |div chi| {r['div_chi']:.2e}")


__all__ = ["Grid", "Core", "StraightDislocation", "Loop", "FDMSolver", "FDMResult", "FDMSetup",
           "isotropic_stiffness", "cubic_stiffness", "stiffness_from_config", "nye_field", "check_mean",
           "check_net_content",
           "solve_fdm", "prepare_fdm", "run_fdm", "content_from_config", "fdm_residuals",
           "constrained_prolongation"]

