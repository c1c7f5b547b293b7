"""``slipstream simulate``: one microstructure, one load, all outputs.

:func:`solve_sample` runs the solver and returns the per-voxel fields of every
output step as the campaign store expects them (rank 0 gets the arrays; the
other ranks get ``None``); :func:`run_simulation` adds the files a person
looks at: ``results.zarr`` (a one-sample campaign store), ``fields.xdmf``
(ParaView), and PNGs (stress-strain curve, IPF maps and pole figures before
and after, von Mises stress and accumulated slip maps).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys
import time

import numpy as np

from .config import SimulationSetup, prepare_simulation
from .errors import SlipstreamError, StoreError
from .loading import output_increments
from .rotations import matrix_to_euler
from .tensors import to_voigt, von_mises_strain, von_mises_stress


# Burgers vector length a/sqrt(2) (FCC) of the presets, for the GND-density picture only
BURGERS_VECTOR = {"Cu": 2.556e-10, "Al": 2.863e-10, "Al-DAMASK": 2.863e-10}


class Progress:
    """One line per increment from rank 0: where we are, what it costs, ETA."""

    def __init__(self, comm, total: int, label: str = "", stream=None, enabled=True):
        self.on = enabled and comm.rank == 0
        self.total, self.label = total, label
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()

    def __call__(self, done: int, text: str):
        if not self.on:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - done) if done else float("nan")
        print(f"{self.label}[{done:>{len(str(self.total))}}/{self.total}] {text}  "
              f"elapsed {elapsed:6.1f} s  ETA {eta:6.1f} s", file=self.stream, flush=True)


def make_solver(comm, setup: SimulationSetup):
    """Build the :class:`~solver.fem.CrystalPlasticitySolver` of a checked setup."""
    from .constitutive import CrystalPlasticity
    from .fem import CrystalPlasticitySolver

    material = setup.material
    if setup.solver.get("constitutive") == "learned":
        from surrogate.learned_update import LearnedCrystalPlasticity

        model = setup.solver["learned_model"]

        def kernel(g):
            return LearnedCrystalPlasticity(model, material, g)
    elif setup.solver.get("constitutive") == "elastic":
        from .elastic import AnisotropicElasticity

        stiffness = material.stiffness_tensor()

        def kernel(g):
            return AnisotropicElasticity(stiffness, g, n_slip=material.n_slip)
    else:
        if setup.solver.get("constitutive") == "frozen_hardening":
            material = dataclasses.replace(material, hardening_modulus=0.0)

        def kernel(g):
            return CrystalPlasticity(material, g)
    return CrystalPlasticitySolver(
        comm, setup.microstructure, kernel, setup.loading,
        boundary=setup.boundary, grips=setup.grips, petsc_options=setup.solver["petsc_options"],
        stress_tolerance=float(setup.solver["stress_tolerance"]), max_cutbacks=int(setup.solver["max_cutbacks"]))


def solve_sample(comm, setup: SimulationSetup, progress: Progress | None = None, on_step=None):
    """Solve one sample; return its store fields on rank 0 (``None`` elsewhere).

    Args:
        comm: communicator of the ranks that share this sample.
        setup: a checked :class:`~solver.config.SimulationSetup`.
        progress: optional progress printer.
        on_step: optional ``f(step, solver, voxel_fields_or_None)`` called at
            every output step (used to write ParaView files).

    Returns:
        ``(fields, stats)``: ``fields`` maps store array names to arrays
        without the sample axis; ``stats`` holds the Newton history.

    Raises:
        SolverError: no convergence after the allowed cutbacks.
    """
    wall0 = time.perf_counter()
    loading = setup.loading
    handback = in_loop_correction(comm, setup)
    solver = make_solver(comm, setup)
    try:
        steps = output_increments(loading.increments, setup.output["every"])
        dt = loading.duration / loading.increments
        per_step, times = [], []
        stats = {"newton_iterations": [], "cutbacks": 0, "residual_history": [], "increments": 0}

        def record(step):
            vf = solver.gather_voxel_fields(solver.cell_fields())
            F_mean, cauchy, _ = solver.macro_fields()
            if on_step is not None:
                on_step(step, solver, vf)
            if comm.rank == 0:
                per_step.append((vf, cauchy, F_mean))
                times.append(solver.t)
            # stored fields are the state before the hand-back; after the last step nothing goes on from it
            if handback is not None and 0 < step < len(steps) - 1:
                hand_back(comm, solver, handback, vf)

        record(0)
        d = loading.direction
        for n in range(1, loading.increments + 1):
            rep = solver.advance(n * dt)
            stats["newton_iterations"].append(rep.newton_iterations)
            stats["cutbacks"] += rep.cutbacks
            stats["residual_history"].append(rep.residual_history)
            stats["increments"] += 1 + rep.cutbacks
            if n in steps:
                record(int(np.searchsorted(steps, n)))
            if progress is not None:
                F_mean, cauchy, _ = solver.macro_fields()
                eps = float(d @ (F_mean - np.eye(3)) @ d)
                progress(n, f"strain {100 * eps:7.3f} %  stress {float(d @ cauchy @ d) / 1e6:9.3f} MPa  "
                            f"Newton {rep.newton_iterations:2d}  cutbacks {rep.cutbacks}")
    finally:
        n_slip = solver.kernel.n_slip if hasattr(solver.kernel, "n_slip") else 0
        solver.destroy()
    if comm.rank != 0:
        return None, stats
    if per_step[0][0] is None:  # a mesh: no voxel fields, only the macroscopic history
        from .tensors import hencky_strain

        return {"time": np.asarray(times), "macro_stress": np.stack([to_voigt(c) for _, c, _ in per_step]),
                "macro_strain": np.stack([to_voigt(hencky_strain(F)) for _, _, F in per_step]),
                "wall_time": time.perf_counter() - wall0, "increments": stats["increments"],
                "newton_iterations": int(np.sum(stats["newton_iterations"])), "cutbacks": stats["cutbacks"]}, stats
    fields = _store_fields(setup, per_step, times, n_slip)
    fields["wall_time"] = time.perf_counter() - wall0
    fields["increments"] = stats["increments"]
    fields["newton_iterations"] = int(np.sum(stats["newton_iterations"]))
    fields["cutbacks"] = stats["cutbacks"]
    return fields, stats


def on_rank0(comm, action, what: str):
    """``action()`` on rank 0; its failure raised on every rank of ``comm`` (no rank waits forever). Collective.

    Returns:
        What ``action`` returned on rank 0, ``None`` elsewhere.

    Raises:
        SolverError: ``what`` failed on rank 0 (its type and message in the text).
    """
    from .errors import SolverError

    value, error = None, None
    if comm.rank == 0:
        try:
            value = action()
        except Exception as exc:  # noqa: BLE001 -- reported on every rank below
            error = f"{what} failed: {type(exc).__name__}: {exc}"
    error = comm.bcast(error, root=0)
    if error is not None:
        raise SolverError(error)
    return value


def in_loop_correction(comm, setup: SimulationSetup):
    """The learned state correction of ``solver.correction_in_loop``, bound to this solve. Collective.

    Returns ``None`` when the run has none; a :class:`surrogate.inloop.InLoopCorrection` on rank 0 and
    ``True`` on the other ranks (they take part in the hand-back, the model runs on rank 0).
    """
    path = setup.solver.get("correction_in_loop")
    if path is None:
        return None

    def load():
        from surrogate.inloop import InLoopCorrection

        loading = setup.loading
        return InLoopCorrection(path, setup.fine_microstructure.euler[0], setup.microstructure.euler[0],
                                loading.mode, loading.direction, loading.strain, loading.rate, loading.duration)

    correction = on_rank0(comm, load, f"loading the in-loop correction {path}")
    return correction if comm.rank == 0 else True


def hand_back(comm, solver, correction, voxel_fields) -> None:
    """Correct the solver's state with ``correction`` (rank 0) and hand it back on every rank. Collective."""
    corrected = on_rank0(comm, lambda: correction(voxel_fields, solver.t),
                         f"the in-loop correction at t = {solver.t:.6g} s")
    solver.set_voxel_state(**(corrected or {}))


def _store_fields(setup, per_step, times, n_slip):
    """Stack the per-step voxel fields into the store's arrays."""
    from .tensors import hencky_strain

    from . import nye

    ms, loading = setup.microstructure, setup.loading
    # Nye tensor -Curl Fp of the cell-average plastic deformation (docs/fdm.md, solver/nye.py)
    periodic = setup.boundary == "periodic"
    alpha = nye.store_field(np.stack([vf["plastic_deformation"] for vf, _, _ in per_step]), ms.spacing,
                            periodic=(periodic, periodic, periodic))
    stress = np.stack([to_voigt(vf["stress"]) for vf, _, _ in per_step])
    strain = np.stack([to_voigt(vf["strain"]) for vf, _, _ in per_step])
    return {
        "euler0": ms.euler,
        "grain_id": ms.grain_id,
        "load_mode": loading.mode,
        "load_direction": loading.direction,
        "load_strain": loading.strain,
        "load_rate": loading.rate,
        "time": np.asarray(times),
        "stress": stress,
        "strain": strain,
        "euler": np.stack([matrix_to_euler(vf["orientation"]) for vf, _, _ in per_step]),
        "slip": np.stack([vf["accumulated_slip"] for vf, _, _ in per_step]),
        "slip_resistance": np.stack([vf["slip_resistance"] for vf, _, _ in per_step]),
        "von_mises_stress": np.stack([von_mises_stress(vf["stress"]) for vf, _, _ in per_step]),
        "von_mises_strain": np.stack([von_mises_strain(vf["strain"]) for vf, _, _ in per_step]),
        "macro_stress": np.stack([to_voigt(c) for _, c, _ in per_step]),
        "macro_strain": np.stack([to_voigt(hencky_strain(F)) for _, _, F in per_step]),
        "nye": alpha,
        "plastic_deformation": np.stack([vf["plastic_deformation"] for vf, _, _ in per_step]).reshape(
            (len(per_step),) + ms.shape + (9,)),
    }


class _ParaViewWriter:
    """XDMF time series: displacement (P1) and per-voxel fields (DG0)."""

    def __init__(self, path):
        self.path, self.file, self.functions = path, None, None

    def __call__(self, step, solver, _vf):
        import dolfinx.fem as fem
        from dolfinx.io import XDMFFile

        if self.file is None:
            self.file = XDMFFile(solver.comm, str(self.path), "w")
            self.file.write_mesh(solver.mesh)
            W = fem.functionspace(solver.mesh, ("DG", 0))
            W3 = fem.functionspace(solver.mesh, ("DG", 0, (3,)))
            # XDMF wants the displacement at the mesh's (linear) geometry nodes
            self.u1 = fem.Function(fem.functionspace(solver.mesh, ("Lagrange", 1, (3,))), name="displacement")
            self.functions = {"von_mises_stress": fem.Function(W, name="von_mises_stress"),
                              "accumulated_slip": fem.Function(W, name="accumulated_slip"),
                              "grain_id": fem.Function(W, name="grain_id"),
                              "euler": fem.Function(W3, name="euler")}
        cf = solver.cell_fields()
        n = solver.n_cells
        f = self.functions
        f["von_mises_stress"].x.array[:n] = von_mises_stress(cf["stress"])
        f["accumulated_slip"].x.array[:n] = cf["accumulated_slip"].sum(axis=1)
        f["grain_id"].x.array[:n] = solver.cell_grain
        f["euler"].x.array[: 3 * n] = matrix_to_euler(cf["orientation"]).reshape(-1)
        for fn in f.values():
            fn.x.scatter_forward()
        self.u1.interpolate(solver.u)
        self.file.write_function(self.u1, solver.t)
        for fn in f.values():
            self.file.write_function(fn, solver.t)

    def close(self):
        if self.file is not None:
            self.file.close()


def write_pictures(out: pathlib.Path, fields: dict, setup: SimulationSetup) -> list[pathlib.Path]:
    """PNGs of one sample: curve, IPF maps and pole figures before/after, von Mises and slip maps."""
    from . import plots

    d = setup.loading.direction
    pngs = []
    macro_stress = fields["macro_stress"]
    macro_strain = fields["macro_strain"]
    from .tensors import from_voigt

    s_dir = np.einsum("i,sij,j->s", d, from_voigt(macro_stress), d)
    e_dir = np.einsum("i,sij,j->s", d, from_voigt(macro_strain), d)
    pngs.append(plots.stress_strain_curve(
        [e_dir], [s_dir], out / "stress_strain.png",
        xlabel="true (Hencky) strain along the load direction",
        ylabel="true (Cauchy) stress along the load direction", labels=[setup.loading.mode]))
    if "euler" not in fields:  # a mesh: the curve (and the ParaView file) only
        return pngs
    lattice = setup.material.lattice
    pngs.append(plots.ipf_map(fields["euler0"], out / "ipf_initial.png", lattice=lattice,
                              title="IPF-Z, initial orientation"))
    pngs.append(plots.ipf_map(fields["euler"][-1], out / "ipf_final.png", lattice=lattice,
                              title="IPF-Z, deformed orientation"))
    pngs.append(plots.field_map(fields["von_mises_stress"][-1] / 1e6, out / "von_mises_stress.png",
                                title="von Mises stress, last step", unit="MPa"))
    pngs.append(plots.field_map(np.asarray(fields["slip"][-1]).sum(axis=-1), out / "accumulated_slip.png",
                                title="accumulated slip (all systems), last step", unit="1", cmap="magma"))
    from .nye import from_tensor9, gnd_density

    burgers = BURGERS_VECTOR.get(setup.material.name, 2.5e-10)
    rho = gnd_density(from_tensor9(np.asarray(fields["nye"][-1], dtype=float)), burgers)
    pngs.append(plots.field_map(rho, out / "gnd_density.png", unit=f"1/m^2, b = {burgers * 1e9:.4g} nm",
                                cmap="inferno", title="GND density |alpha|/b, last step"))
    pngs.append(plots.pole_figures(fields["euler0"].reshape(-1, 3), out / "pole_figures_initial.png",
                                   title="initial texture"))
    pngs.append(plots.pole_figures(np.asarray(fields["euler"][-1]).reshape(-1, 3), out / "pole_figures_final.png",
                                   title="deformed texture"))
    return pngs


def run_simulation(comm, config_path, out, overwrite=False, quiet=False) -> dict:
    """``slipstream simulate``: check, solve, and write everything into ``out``.

    Everything is checked before anything is written; an existing run
    directory is kept unless ``overwrite``.

    Collective: every rank returns once rank 0 has written the run directory.

    Returns:
        A summary dict (rank 0; other ranks get ``{}``).
    """
    from . import store
    from .config import load_yaml

    config_path = pathlib.Path(config_path)
    cfg = load_yaml(config_path)
    setup = prepare_simulation(cfg, config_path.parent)
    out = pathlib.Path(out)
    results = out / "results.zarr"
    error = None
    if comm.rank == 0:
        if results.exists() and not overwrite:
            error = f"{results} already exists; choose another --out or pass --overwrite"
        elif out.exists() and not out.is_dir():
            error = f"--out {out} exists and is not a directory"
    error = comm.bcast(error, root=0)
    if error:
        raise StoreError(error)
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if results.exists():
            shutil.rmtree(results)
    comm.Barrier()

    n_steps = len(output_increments(setup.loading.increments, setup.output["every"]))
    progress = Progress(comm, setup.loading.increments, enabled=not quiet)
    paraview = _ParaViewWriter(out / "fields.xdmf") if setup.output["paraview"] else None
    group = None
    voxels = hasattr(setup.microstructure, "euler")
    if comm.rank == 0 and voxels:
        group = store.create_store(results, n_samples=1, grid_shape=setup.microstructure.shape, n_steps=n_steps,
                                   n_slip=setup.material.n_slip, config=cfg, material=setup.material.as_dict(),
                                   lattice=setup.material.lattice, with_nye=True, with_plastic_deformation=True)
    try:
        fields, stats = solve_sample(comm, setup, progress, on_step=paraview)
    except SlipstreamError as exc:
        if group is not None:
            store.mark_failed(group, 0, str(exc))
            store.consolidate(results)
        raise
    finally:
        if paraview is not None:
            paraview.close()
    summary = {}
    if comm.rank == 0:
        if group is not None:
            store.write_sample(group, 0, fields)
            store.mark_done(group, 0)
            store.consolidate(results)
        pngs = write_pictures(out, fields, setup) if setup.output["plots"] else []
        d = setup.loading.direction
        from .tensors import from_voigt

        s_last = float(d @ from_voigt(fields["macro_stress"][-1]) @ d)
        summary = {
            "store": str(results) if group is not None else None,
            "paraview": str(out / "fields.xdmf") if paraview else None,
            "pictures": [str(p) for p in pngs],
            "final_stress_along_load_MPa": s_last / 1e6,
            "increments": int(fields["increments"]), "cutbacks": int(fields["cutbacks"]),
            "newton_iterations_per_increment": [int(k) for k in stats["newton_iterations"]],
            "wall_time_s": float(fields["wall_time"]), "ranks": comm.size,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    # collective to the end: no rank returns before the run directory is written (callers read it next)
    comm.Barrier()
    return summary
