"""Finite-strain crystal plasticity on DOLFINx: the global problem.

Formulation (total Lagrangian, reference configuration = the voxel grid):

* Displacement ``u`` in first-order Lagrange on hexahedra, one cell per voxel;
  ``F = I + grad u`` at the 2x2x2 Gauss points.
* Weak equilibrium ``R(u; v) = int P(F) : grad v dX = 0`` and its consistent
  linearisation ``K = int grad v : A : grad du dX`` with ``A = dP/dF`` from the
  constitutive kernel; ``P`` and ``A`` live in quadrature spaces and are filled
  by a NumPy kernel over all points at once (the dolfinx-external-operator
  shape), so a neural network can take the kernel's place.
* Boundary conditions are one affine map ``u = T z + g(t)`` from reduced
  unknowns ``z`` (:class:`AffineConstraint`):

  - periodic: ``u = (F_mean - I) X + w`` with ``w`` periodic. ``T`` maps each
    periodic node class to its images and adds one column ``B_k X`` for each
    free coefficient of ``F_mean`` (see :mod:`solver.loading`), so the reduced
    residual of that column is ``int P : B_k = V <P> : B_k``: zero mean stress
    on the free components comes out of Newton itself. One node is pinned to
    remove the rigid translation.
  - specimen: grips on the two faces normal to the load axis (clamped; one
    moved along the axis), lateral faces free.

  The reduced system ``T^T K T dz = -T^T R`` (PETSc ``PtAP``) is solved by a
  PETSc SNES (Newton, basic line search) with a configurable KSP (default: LU
  with MUMPS; ``{"ksp_type": "cg", "pc_type": "gamg"}`` for large specimen runs).

* An increment whose global Newton fails, or in which any quadrature point's
  local Newton fails, is cut in half (up to ``max_cutbacks`` times) and retried.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

try:  # the PyPI wheel must be imported before dolfinx/petsc4py; conda builds don't have it
    import dolfinx_solver  # noqa: F401
except ImportError:
    pass

import basix
import basix.ufl
import dolfinx
import dolfinx.fem.petsc
import ufl
from dolfinx import fem
from mpi4py import MPI
from petsc4py import PETSc

from .errors import ConfigError, SolverError
from .loading import Loading, specimen_axis
from .rotations import polar_rotation
from .tensors import hencky_strain

DEFAULT_PETSC_OPTIONS = {
    "snes_type": "newtonls",
    "snes_linesearch_type": "basic",
    "snes_max_it": 12,  # quadratic convergence needs far fewer; more means cut back
    "snes_rtol": 1.0e-9,
    "snes_stol": 0.0,
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
}


def voxel_mesh(comm: MPI.Comm, cells, size, origin=(0.0, 0.0, 0.0)):
    """Hexahedral box mesh with one cell per voxel and the cell -> voxel map.

    Args:
        comm: communicator the mesh is distributed over.
        cells: ``(nx, ny, nz)`` voxels.
        size: ``(Lx, Ly, Lz)`` physical size (m).
        origin: lower corner (m).

    Returns:
        ``(mesh, voxel)``: the mesh and, for each owned cell, the flat index of
        its voxel in a ``(z, y, x)`` array (x fastest).
    """
    nx, ny, nz = (int(c) for c in cells)
    lo = np.asarray(origin, dtype=float)
    hi = lo + np.asarray(size, dtype=float)
    mesh = dolfinx.mesh.create_box(comm, [lo, hi], [nx, ny, nz], dolfinx.mesh.CellType.hexahedron,
                                   ghost_mode=dolfinx.mesh.GhostMode.none)
    tdim = mesh.topology.dim
    n_owned = mesh.topology.index_map(tdim).size_local
    # voxel from the cell centre: independent of the mesh partitioner's reordering
    mid = dolfinx.mesh.compute_midpoints(mesh, tdim, np.arange(n_owned, dtype=np.int32))
    h = (hi - lo) / np.array([nx, ny, nz])
    ijk = np.floor((mid - lo) / h).astype(np.int64)
    ijk = np.clip(ijk, 0, np.array([nx, ny, nz]) - 1)
    voxel = ijk[:, 0] + nx * (ijk[:, 1] + ny * ijk[:, 2])
    return mesh, voxel


class AffineConstraint:
    """The map ``u = T z + g(t)`` between reduced unknowns and displacement dofs.

    ``T`` is a PETSc AIJ matrix (rows: owned displacement dofs, columns: reduced
    dofs). ``g(t) = lift @ c(t)`` with ``c(t)`` the prescribed coefficients of
    the :class:`~solver.loading.Loading`.

    Attributes:
        T: the prolongation matrix.
        lift: ``(n_owned_dofs, 9)`` columns whose combination gives ``g``.
        free: indices of the free macroscopic coefficients carried in ``z``
            (empty in specimen mode).
        macro_dofs: global reduced indices of those coefficients (on rank 0).
    """

    def __init__(self, T, lift, free, macro_dofs, rigid_modes=None):
        self.T, self.lift, self.free, self.macro_dofs = T, lift, free, macro_dofs
        self._rigid_modes = rigid_modes  # f(T) -> list of reduced near-nullspace vectors

    def near_nullspace(self):
        """Orthonormal near-nullspace of the reduced operator (for algebraic multigrid)."""
        vecs = self._rigid_modes(self.T)
        basis = []
        for v in vecs:  # modified Gram-Schmidt
            for b in basis:
                v.axpy(-v.dot(b), b)
            norm = v.norm()
            if norm > 1e-12:
                v.scale(1.0 / norm)
                basis.append(v)
        return basis

    @classmethod
    def periodic(cls, V, loading: Loading, cells, size, origin=(0.0, 0.0, 0.0)):
        """Periodic fluctuations plus the free macroscopic coefficients."""
        comm = V.mesh.comm
        n_cells = np.asarray(cells, dtype=np.int64)
        h = np.asarray(size, dtype=float) / n_cells
        X = V.tabulate_dof_coordinates()  # (owned + ghost nodes, 3)
        im = V.dofmap.index_map
        n_owned = im.size_local
        X = X[:n_owned] - np.asarray(origin)
        ijk = np.rint(X / h).astype(np.int64)
        wrapped = ijk % n_cells
        node_class = wrapped[:, 0] + n_cells[0] * (wrapped[:, 1] + n_cells[1] * wrapped[:, 2])
        is_master = np.all(ijk < n_cells, axis=1) & (node_class != 0)  # class 0 pinned
        free = loading.free
        n_macro = len(free)
        col_of_class = _number_classes(comm, node_class, is_master, int(np.prod(n_cells)),
                                       n_macro if comm.rank == 0 else 0)
        n_red_local = 3 * int(is_master.sum()) + (n_macro if comm.rank == 0 else 0)
        macro_dofs = np.arange(n_macro, dtype=np.int64)  # first dofs of rank 0's range
        base = col_of_class[node_class]  # -1 for the pinned class
        # columns B_k X for the free coefficients, rows per (node, component),
        # scaled by (voxel face / cell volume) so that their residual,
        # face * <P> : B_k, is measured like a nodal force
        BX = np.einsum("kij,nj->nik", loading.basis, X)  # (nodes, 3, 9)
        h = np.asarray(size, dtype=float) / n_cells
        macro_scale = float(np.mean([h[0] * h[1], h[1] * h[2], h[0] * h[2]]) / np.prod(size))
        rows = []
        for c in range(3):
            cols_c = [np.where(base >= 0, base + c, -1)[:, None], np.broadcast_to(macro_dofs, (n_owned, n_macro))]
            vals_c = [np.ones((n_owned, 1)), macro_scale * BX[:, c, free]]
            rows.append((np.hstack(cols_c), np.hstack(vals_c)))
        cols = np.stack([r[0] for r in rows], axis=1).reshape(3 * n_owned, 1 + n_macro)
        vals = np.stack([r[1] for r in rows], axis=1).reshape(3 * n_owned, 1 + n_macro)
        T = _csr_matrix(comm, cols, vals, n_red_local)
        lift = BX.reshape(3 * n_owned, 9)
        w_offset = n_macro if comm.rank == 0 else 0

        def translations(T):
            # a constant periodic fluctuation; the macroscopic unknowns do not move
            out = []
            for c in range(3):
                z = T.createVecRight()
                arr = np.zeros(z.getLocalSize())
                arr[w_offset + c::3] = 1.0
                z.setArray(arr)
                out.append(z)
            return out

        return cls(T, lift, free, macro_dofs, translations)

    @classmethod
    def grips(cls, V, loading: Loading, cells, size, origin=(0.0, 0.0, 0.0), grips="clamped"):
        """Specimen: grips on the faces normal to the load axis, lateral faces free.

        ``clamped`` grips hold all components; ``frictionless`` grips hold only
        the axial one, and the rigid modes left (two translations, the spin about
        the axis) are removed by holding the transverse components at the
        fixed grip's corner node and one transverse component at a second corner.
        """
        axis = specimen_axis(loading)
        comm = V.mesh.comm
        im = V.dofmap.index_map
        n_owned = im.size_local
        X = V.tabulate_dof_coordinates()[:n_owned] - np.asarray(origin)
        L = float(size[axis])
        tol = 1e-8 * L
        at_fixed = X[:, axis] < tol
        at_moving = X[:, axis] > L - tol
        held = np.zeros((n_owned, 3), dtype=bool)  # which components are prescribed
        if grips == "clamped":
            held[at_fixed | at_moving] = True
        elif grips == "frictionless":
            held[at_fixed | at_moving, axis] = True
            t1, t2 = (axis + 1) % 3, (axis + 2) % 3
            corner = np.all(np.abs(X) < tol, axis=1)
            held[corner, t1] = held[corner, t2] = True
            second = at_fixed & (np.abs(X[:, t1] - size[t1]) < tol) & (np.abs(X[:, t2]) < tol)
            held[second, t2] = True
        else:
            raise ConfigError(f"grips '{grips}' is unknown; known: clamped, frictionless")
        # every (node, component) that is not held is a reduced unknown
        global_dof = 3 * im.local_to_global(np.arange(n_owned, dtype=np.int32))[:, None] + np.arange(3)
        col_of_dof = _number_classes(comm, global_dof.ravel(), ~held.ravel(), 3 * im.size_global, 0, block=1)
        cols = col_of_dof[global_dof.ravel()].reshape(-1, 1)
        T = _csr_matrix(comm, cols, np.ones_like(cols, dtype=float), int((~held).sum()))
        lift = np.zeros((n_owned, 3, 9))
        # c_0 is the engineering strain along the load frame's first axis
        lift[at_moving, axis, 0] = L  # u = strain (d . X) d is +strain L at the far grip for d = +-e_axis

        def rigid_body_modes(T):
            # the six rigid modes of the full field, restricted to the free dofs (T is a selection)
            Xc = X - X.mean(axis=0)
            modes = []
            for c in range(3):
                m = np.zeros((n_owned, 3))
                m[:, c] = 1.0
                modes.append(m)
            for a, b in ((0, 1), (1, 2), (2, 0)):
                m = np.zeros((n_owned, 3))
                m[:, a], m[:, b] = -Xc[:, b], Xc[:, a]
                modes.append(m)
            out = []
            for m in modes:
                full = T.createVecLeft()
                full.setArray(m.reshape(-1))
                z = T.createVecRight()
                T.multTranspose(full, z)
                out.append(z)
            return out

        return cls(T, lift.reshape(3 * n_owned, 9), np.array([], dtype=int), np.array([], dtype=np.int64),
                   rigid_body_modes)


def _number_classes(comm, node_class, is_master, n_classes, offset_extra, block=3):
    """Global reduced column (of component 0) of every class; -1 if constrained.

    Masters are owned entries representing their class, ``block`` reduced dofs
    each; each rank numbers its masters after ``offset_extra`` leading dofs of
    its own range.
    """
    n_local = block * int(is_master.sum()) + offset_extra
    start = comm.exscan(n_local) if comm.size > 1 else 0
    start = start or 0
    table = np.full(n_classes, -1, dtype=np.int64)
    table[node_class[is_master]] = start + offset_extra + block * np.arange(int(is_master.sum()), dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, table, op=MPI.MAX)
    return table


def _csr_matrix(comm, cols, vals, n_cols_local):
    """AIJ matrix from per-row column lists (``-1`` = no entry)."""
    keep = cols >= 0
    counts = keep.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(PETSc.IntType)
    indices = cols[keep].astype(PETSc.IntType)
    data = vals[keep].astype(PETSc.ScalarType)
    n_rows = cols.shape[0]
    T = PETSc.Mat().createAIJ(size=((n_rows, PETSc.DETERMINE), (n_cols_local, PETSc.DETERMINE)),
                              csr=(indptr, indices, data), comm=comm)
    T.assemble()
    return T


@dataclasses.dataclass
class IncrementReport:
    """What one converged increment cost."""

    time: float
    newton_iterations: int
    cutbacks: int
    residual_history: list
    wall_time: float


class CrystalPlasticitySolver:
    """Quasi-static finite-strain crystal plasticity on a voxel grid.

    Args:
        comm: MPI communicator.
        microstructure: a :class:`solver.microstructure.Microstructure`.
        constitutive_factory: ``f(orientations (n,3,3)) -> kernel`` with the
            :class:`solver.constitutive.CrystalPlasticity` interface.
        loading: the macroscopic load.
        boundary: ``"periodic"`` or ``"specimen"``.
        grips: specimen grips, ``"clamped"`` (all components held) or
            ``"frictionless"`` (only the axial component; rigid modes pinned).
        petsc_options: overrides of :data:`DEFAULT_PETSC_OPTIONS`.
        stress_tolerance: absolute equilibrium tolerance expressed as a stress (Pa).
        max_cutbacks: how often an increment may be halved.
    """

    def __init__(self, comm, microstructure, constitutive_factory, loading: Loading, boundary="periodic", grips="clamped",
                 petsc_options=None, stress_tolerance=1.0, max_cutbacks=8):
        self.comm = comm
        self.loading = loading
        self.boundary = boundary
        self.max_cutbacks = int(max_cutbacks)
        self.ms = microstructure
        # wall-clock split (s); linear solve = snes_total - the others inside SNES
        self.timings = dict.fromkeys(("interpolation", "constitutive", "assembly", "constraint_ptap", "snes_total"), 0.0)
        from .microstructure import MeshPolycrystal

        if isinstance(microstructure, MeshPolycrystal):
            # grain-conforming tetrahedra: quadratic elements against volumetric locking
            from .gmsh_polycrystal import load_gmsh_polycrystal

            self.mesh, cell_tags, _ = load_gmsh_polycrystal(microstructure.file, comm)
            n_owned = self.mesh.topology.index_map(3).size_local
            tag = np.zeros(n_owned, dtype=np.int64)
            owned = cell_tags.indices < n_owned
            tag[cell_tags.indices[owned]] = cell_tags.values[owned]
            self.cell_grain = tag - 1
            n_grains = comm.allreduce(int(self.cell_grain.max(initial=-1)) + 1, op=MPI.MAX)
            g_cells = microstructure.grain_orientations(n_grains)[self.cell_grain]
            x = self.mesh.geometry.x
            lo, hi = x.min(axis=0), x.max(axis=0)
            comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
            comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
            origin, size, cells = lo, hi - lo, None
            self.voxel = None
            degree = 2
            if boundary != "specimen":
                raise ConfigError("a gmsh mesh microstructure needs boundary 'specimen' (periodic needs a voxel grid)")
        else:
            cells, size = microstructure.cells, microstructure.size
            origin = getattr(microstructure, "origin", np.zeros(3))
            self.mesh, self.voxel = voxel_mesh(comm, cells, size, origin)
            self.cell_grain = microstructure.grain_id.reshape(-1)[self.voxel]
            g_cells = microstructure.orientation_matrices().reshape(-1, 3, 3)[self.voxel]
            degree = 1
        self.V = fem.functionspace(self.mesh, ("Lagrange", degree, (3,)))
        if boundary == "periodic":
            self.constraint = AffineConstraint.periodic(self.V, loading, cells, size, origin)
        elif boundary == "specimen":
            self.constraint = AffineConstraint.grips(self.V, loading, cells, size, origin, grips)
        else:
            raise ConfigError(f"boundary '{boundary}' is unknown; known: periodic, specimen")

        # quadrature spaces for P and A = dP/dF (same scheme as the forms)
        cell = self.mesh.basix_cell()
        qe_P = basix.ufl.quadrature_element(cell, value_shape=(3, 3), degree=2)
        qe_A = basix.ufl.quadrature_element(cell, value_shape=(3, 3, 3, 3), degree=2)
        points, _ = basix.make_quadrature(cell, 2)
        self.n_qp = points.shape[0]
        self.P_q = fem.Function(fem.functionspace(self.mesh, qe_P))
        self.A_q = fem.Function(fem.functionspace(self.mesh, qe_A))
        self.n_cells = self.mesh.topology.index_map(3).size_local
        self._cells = np.arange(self.n_cells, dtype=np.int32)
        self._qdofs = self.P_q.function_space.dofmap.list[: self.n_cells].reshape(-1)

        self.u = fem.Function(self.V, name="displacement")
        v, du = ufl.TestFunction(self.V), ufl.TrialFunction(self.V)
        dx = ufl.Measure("dx", domain=self.mesh, metadata={"quadrature_degree": 2, "quadrature_scheme": "default"})
        i, j, k, l = ufl.indices(4)
        self._residual_form = fem.form(ufl.inner(self.P_q, ufl.grad(v)) * dx)
        self._jacobian_form = fem.form(self.A_q[i, j, k, l] * ufl.grad(du)[k, l] * ufl.grad(v)[i, j] * dx)
        self._grad_u = fem.Expression(ufl.grad(self.u), points)

        # reference volume of every Gauss point (equal on a voxel grid, not on a tetrahedral mesh)
        _, qw = basix.make_quadrature(cell, 2)
        W0 = fem.functionspace(self.mesh, ("DG", 0))
        volume = dolfinx.fem.assemble_vector(fem.form(ufl.TestFunction(W0) * ufl.dx)).array[: self.n_cells]
        self.qp_volume = (volume[:, None] * (qw / qw.sum())[None, :]).reshape(-1)

        # per-point orientations and the constitutive kernel
        self.orientations = np.repeat(g_cells, self.n_qp, axis=0)
        self.kernel = constitutive_factory(self.orientations)
        self.state = self.kernel.initial_state()
        self._trial = None
        self.F_qp = np.broadcast_to(np.eye(3), (self.n_cells * self.n_qp, 3, 3)).copy()
        self.P_qp = np.zeros_like(self.F_qp)

        # PETSc objects
        self._r = dolfinx.fem.petsc.create_vector(self.V)
        self._K = dolfinx.fem.petsc.create_matrix(self._jacobian_form)
        T = self.constraint.T
        self.z, self._rz = T.createVecRight(), T.createVecRight()
        self.z.set(0.0)
        self._z_prev = self.z.duplicate()
        self.t = 0.0
        self._dt_prev = None
        self._local_failed = False

        # initial tangent (elastic) to create the reduced matrix and its sparsity
        self._set_displacement(self.z, 0.0)
        self._evaluate(self.z, dt=1.0, tangent=True)
        self._assemble_tangent()
        self._J = self._K.PtAP(T)
        self._near_nullspace = PETSc.NullSpace().create(vectors=self.constraint.near_nullspace(), comm=comm)
        self._J.setNearNullSpace(self._near_nullspace)  # used by GAMG when asked for

        opts = dict(DEFAULT_PETSC_OPTIONS)
        opts.update(petsc_options or {})
        if cells is not None:
            h = np.asarray(size, dtype=float) / np.asarray(cells)
        else:  # a typical element size from the cell count
            n_cells = comm.allreduce(self.n_cells, op=MPI.SUM)
            h = np.full(3, (np.prod(size) / n_cells) ** (1.0 / 3.0))
        face = float(np.mean([h[0] * h[1], h[1] * h[2], h[0] * h[2]]))
        opts.setdefault("snes_atol", float(stress_tolerance) * face)
        self.snes = PETSc.SNES().create(comm)
        self._prefix = f"slipstream_cp_{id(self)}_"
        self.snes.setOptionsPrefix(self._prefix)
        petsc_opts = PETSc.Options()
        for key, val in opts.items():
            petsc_opts[self._prefix + key] = val
        self.snes.setFunction(self._snes_residual, self._rz)
        self.snes.setJacobian(self._snes_jacobian, self._J)
        self.snes.setFromOptions()
        self.snes.setConvergenceHistory(length=200, reset=True)
        for key in opts:
            petsc_opts.delValue(self._prefix + key)

    # -- evaluation -------------------------------------------------------
    def _set_displacement(self, z, t):
        """``u = T z + g(t)`` on owned dofs, then ghost update."""
        uvec = self.u.x.petsc_vec
        self.constraint.T.mult(z, uvec)
        c = self.loading.prescribed_coefficients(t)
        with uvec.localForm() as loc:
            loc.array[: self.constraint.lift.shape[0]] += self.constraint.lift @ c
        self.u.x.scatter_forward()

    def _evaluate(self, z, dt, tangent=True):
        """Constitutive update at every quadrature point for the current ``u``."""
        t0 = time.perf_counter()
        grad_u = self._grad_u.eval(self.mesh, self._cells).reshape(-1, 3, 3)
        F = grad_u + np.eye(3)
        t1 = time.perf_counter()
        res = self.kernel.update(F, self.state, dt, tangent=tangent)
        self.timings["interpolation"] += t1 - t0
        self.timings["constitutive"] += time.perf_counter() - t1
        ok = bool(np.all(res.converged)) and np.all(np.isfinite(res.stress))
        ok = self.comm.allreduce(ok, op=MPI.LAND)
        self._local_failed = not ok
        self._last_iterations = int(getattr(res, "iterations", 0))
        if not ok:
            return False
        self.F_qp, self.P_qp = F, res.stress
        self._trial = res.state
        bs_P = 9
        arr = self.P_q.x.array.reshape(-1, bs_P)
        arr[self._qdofs] = res.stress.reshape(-1, 9)
        if tangent:
            arrA = self.A_q.x.array.reshape(-1, 81)
            arrA[self._qdofs] = res.tangent.reshape(-1, 81)
        return True

    def _assemble_tangent(self):
        t0 = time.perf_counter()
        self._K.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(self._K, self._jacobian_form)
        self._K.assemble()
        self.timings["assembly"] += time.perf_counter() - t0

    def _snes_residual(self, snes, z, rz):
        self._set_displacement(z, self._t_target)
        if not self._evaluate(z, self._dt, tangent=True):
            rz.set(np.nan)  # SNES stops with DIVERGED_FNORM_NAN; the step is cut back
            return
        t0 = time.perf_counter()
        with self._r.localForm() as loc:
            loc.set(0.0)
        dolfinx.fem.petsc.assemble_vector(self._r, self._residual_form)
        self._r.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self.constraint.T.multTranspose(self._r, rz)
        self.timings["assembly"] += time.perf_counter() - t0

    def _snes_jacobian(self, snes, z, J, Jp):
        self._assemble_tangent()
        t0 = time.perf_counter()
        self._K.PtAP(self.constraint.T, result=J)
        J.setNearNullSpace(self._near_nullspace)
        self.timings["constraint_ptap"] += time.perf_counter() - t0

    # -- stepping ---------------------------------------------------------
    def _attempt(self, t_target, dt, z_guess):
        """One Newton solve to ``t_target``; returns (converged, iterations, history)."""
        self._t_target, self._dt = t_target, dt
        z_guess.copy(self.z)
        t0 = time.perf_counter()
        self.snes.solve(None, self.z)
        self.timings["snes_total"] += time.perf_counter() - t0
        reason = self.snes.getConvergedReason()
        hist = list(np.asarray(self.snes.getConvergenceHistory()[0]))
        its = self.snes.getIterationNumber()
        return reason > 0 and not self._local_failed, its, hist

    def advance(self, t_end):
        """Advance from the current time to ``t_end`` with automatic cutback.

        Returns:
            :class:`IncrementReport`.

        Raises:
            SolverError: if the increment fails after ``max_cutbacks`` halvings.
        """
        wall0 = time.perf_counter()
        total_dt = t_end - self.t
        sub = total_dt
        cutbacks, iterations, history = 0, 0, []
        level = 0
        while self.t < t_end - 1e-12 * max(total_dt, 1e-300):
            dt = min(sub, t_end - self.t)
            # predictor: extrapolate the last converged rate of the reduced unknowns
            guess = self.z.copy()
            if self._dt_prev:
                guess.axpy(dt / self._dt_prev, self.z - self._z_prev)
            z_start = self.z.copy()
            ok, its, hist = self._attempt(self.t + dt, dt, guess)
            iterations += its
            history.append(hist)
            if not ok:
                z_start.copy(self.z)
                cutbacks += 1
                level += 1
                if level > self.max_cutbacks:
                    raise SolverError(
                        f"no convergence at t = {self.t + dt:.6g} s after {self.max_cutbacks} cutbacks "
                        f"(SNES reason {self.snes.getConvergedReason()}, local failure: {self._local_failed})")
                sub = dt / 2.0
                continue
            # commit
            z_start.copy(self._z_prev)
            self._dt_prev = dt
            self.t += dt
            self.state = self._trial
            if level > 0:  # recover the step size gradually after a cutback
                level -= 1
                sub = min(2.0 * dt, total_dt)
        return IncrementReport(self.t, iterations, cutbacks, history, time.perf_counter() - wall0)

    # -- results ----------------------------------------------------------
    def macro_fields(self):
        """Volume averages over the whole cell: ``(F_mean, cauchy_mean, P_mean)``.

        Cauchy is averaged over the current volume, ``sum(w P F^T) / sum(w J)``;
        ``F`` and ``P`` over the reference volume (``w``: the Gauss points'
        reference volumes).
        """
        F, P, w = self.F_qp, self.P_qp, self.qp_volume
        J = np.linalg.det(F)
        loc = np.concatenate([np.einsum("n,nij->ij", w, F).ravel(), np.einsum("n,nij->ij", w, P).ravel(),
                              np.einsum("n,nij->ij", w, P @ np.swapaxes(F, 1, 2)).ravel(), [w @ J, w.sum()]])
        tot = np.zeros_like(loc)
        self.comm.Allreduce(loc, tot, op=MPI.SUM)
        n = tot[-1]
        F_mean = tot[:9].reshape(3, 3) / n
        P_mean = tot[9:18].reshape(3, 3) / n
        cauchy = tot[18:27].reshape(3, 3) / tot[27]
        return F_mean, cauchy, P_mean

    def cell_fields(self):
        """Per owned cell (Gauss-point averages): a dict of NumPy arrays.

        Keys: ``stress`` (Cauchy, (n,3,3)), ``strain`` (Hencky ln V, (n,3,3)),
        ``orientation`` (passive matrices, (n,3,3)), ``accumulated_slip`` and
        ``slip_resistance`` ((n, n_slip)), ``deformation_gradient`` and
        ``plastic_deformation`` ((n,3,3)).
        """
        nq = self.n_qp
        F, P = self.F_qp, self.P_qp
        J = np.linalg.det(F)[:, None, None]
        sigma = P @ np.swapaxes(F, 1, 2) / J
        eps = hencky_strain(F)
        g = self.kernel.lattice_orientation(F, self.state)

        def cell_mean(a):
            return a.reshape((self.n_cells, nq) + a.shape[1:]).mean(axis=1)

        return {
            "stress": cell_mean(sigma),
            "strain": cell_mean(eps),
            "orientation": polar_rotation(cell_mean(g)),
            "accumulated_slip": cell_mean(self.state.get("accumulated_slip", np.zeros((F.shape[0], 0)))),
            "slip_resistance": cell_mean(self.state.get("slip_resistance", np.zeros((F.shape[0], 0)))),
            "deformation_gradient": cell_mean(F),
            "plastic_deformation": cell_mean(self.state.get("plastic_deformation",
                                                            np.broadcast_to(np.eye(3), F.shape))),
        }

    def set_voxel_state(self, plastic_deformation=None, slip_resistance=None, root=0):
        """Hand the solver a corrected state per voxel; it holds from the next increment on. Collective.

        The corrected values are cell means: each Gauss point keeps its offset
        from its cell's current mean (``Fp_q <- Fp_new Fp_mean^-1 Fp_q``, then
        ``det Fp_q = 1``; ``xi_q <- xi_q + xi_new - xi_mean``, kept above a
        tenth of its current value), so a correction equal to the current means
        changes nothing. The displacement is kept; the stress follows from the
        new ``Fp`` at the next evaluation.

        Args:
            plastic_deformation: ``(nz, ny, nx, 3, 3)`` on ``root`` (ignored elsewhere), or ``None``.
            slip_resistance: ``(nz, ny, nx, n_slip)`` in Pa on ``root``, or ``None``.
            root: the rank that holds the arrays.

        Raises:
            ConfigError: a mesh (no voxels), a kernel without this state, a wrong shape.
        """
        if self.voxel is None:
            raise ConfigError("a corrected state is handed back per voxel; this solve is on a mesh")
        given = {"plastic_deformation": plastic_deformation, "slip_resistance": slip_resistance}
        given = self.comm.bcast({k: (None if v is None else np.asarray(v, dtype=float)) for k, v in given.items()}
                                if self.comm.rank == root else None, root=root)
        nx, ny, nz = self.ms.cells
        nq, state = self.n_qp, dict(self.state)
        for key, value in given.items():
            if value is None:
                continue
            if key not in state:
                raise ConfigError(f"the constitutive law has no {key.replace('_', ' ')} to correct")
            tail = state[key].shape[1:]
            if value.shape != (nz, ny, nx) + tail:
                raise ConfigError(f"corrected {key} has shape {value.shape}, expected {(nz, ny, nx) + tail}")
            mine = np.repeat(value.reshape((-1,) + tail)[self.voxel], nq, axis=0)
            current = state[key]
            mean = np.repeat(current.reshape((self.n_cells, nq) + tail).mean(axis=1), nq, axis=0)
            if key == "plastic_deformation":
                new = mine @ np.linalg.inv(mean) @ current
                new /= np.cbrt(np.linalg.det(new))[:, None, None]
            else:
                new = np.maximum(current + mine - mean, 0.1 * current)
            state[key] = new  # new arrays: the kernel's warm start sees another start state
        self.state = state

    def gather_voxel_fields(self, fields: dict, root=0):
        """Gather per-cell arrays into ``(nz, ny, nx, ...)`` voxel arrays on ``root``.

        Returns ``None`` on the other ranks, and everywhere for a mesh (no voxels).
        """
        if self.voxel is None:
            return None
        nx, ny, nz = self.ms.cells
        gathered = self.comm.gather((self.voxel, fields), root=root)
        if self.comm.rank != root:
            return None
        out = {}
        for key, val in fields.items():
            full = np.zeros((nx * ny * nz,) + val.shape[1:], dtype=val.dtype)
            for vox, f in gathered:
                full[vox] = f[key]
            out[key] = full.reshape((nz, ny, nx) + val.shape[1:])
        return out

    def timing_split(self) -> dict:
        """Seconds spent in each part of the solve on this rank (linear solve inferred)."""
        t = dict(self.timings)
        inside = t["interpolation"] + t["constitutive"] + t["assembly"] + t["constraint_ptap"]
        t["linear_solve"] = max(t["snes_total"] - inside, 0.0)
        return t

    def destroy(self):
        """Free PETSc objects (call before the communicator goes away)."""
        for obj in (self.snes, self._J, self._K, self._r, self.z, self._rz, self._z_prev, self.constraint.T,
                    self._near_nullspace):
            obj.destroy()
