"""Learned constitutive update inside the global Newton loop: accuracy and speed against the physics update.

Measured in one run, on the same machine and inputs:

1. Point level: ``--points`` physics-kernel updates of random trial states the
   network never saw (random deviatoric stretches, rotations, slip resistances,
   time steps): relative error of the first Piola-Kirchhoff stress of the
   learned update, next to that of the elastic trial (no slip at all); seconds
   per point of each kernel with the tangent.
2. A polycrystal: the embedded EBSD map (``meshes/sample.ang``, 32 x 32, Al)
   pulled to 0.5 % along x in 10 increments, solved with the physics update and
   with the learned one (serial): the stress-strain curve, von Mises field
   errors, Newton iterations, wall time and the constitutive share of it.

Usage::

    python benchmarks/coupling_learned_update.py [--model surrogate/pretrained/learned_update_al]
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import write_report  # noqa: E402  (benchmarks/common.py)


def _solve(model: str | None):
    import dolfinx_solver  # noqa: F401  (before petsc4py)
    from mpi4py import MPI

    from solver.config import prepare_simulation
    from solver.simulate import solve_sample

    cfg = {"microstructure": {"kind": "ebsd", "file": str(ROOT / "meshes" / "sample.ang")},
           "material": {"preset": "Al-DAMASK"}, "boundary": "periodic",
           "loading": {"mode": "tension", "direction": [1, 0, 0], "strain": 0.005, "rate": 1.0e-3, "increments": 10},
           "output": {"every": 1, "paraview": False, "plots": False}}
    if model:
        cfg["solver"] = {"constitutive": "learned", "learned_model": model}
    setup = prepare_simulation(cfg, ROOT)
    timings = {}

    def keep(step, solver, _vf):
        timings.update(solver.timing_split())

    t0 = time.perf_counter()
    fields, stats = solve_sample(MPI.COMM_SELF, setup, on_step=keep)
    return fields, time.perf_counter() - t0, timings, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "surrogate" / "pretrained" / "learned_update_al"))
    ap.add_argument("--points", type=int, default=4000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "coupling_learned_update.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from solver.constitutive import CrystalPlasticity
    from solver.materials import material_from_config
    from surrogate.learned_update import LearnedCrystalPlasticity, generate_updates

    mat = material_from_config({"preset": "Al-DAMASK"})
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch_threads": torch.get_num_threads()}, "model": args.model}

    # 1. point level
    d = generate_updates(mat, args.points, np.random.default_rng(20261122), chunk=1000)
    errs, trial_errs, t_learned, t_physics, n_pts = [], [], 0.0, 0.0, 0
    for dt in np.unique(d["dt"]):
        k = d["dt"] == dt
        n = int(k.sum())
        g = np.tile(np.eye(3), (n, 1, 1))
        state = {"plastic_deformation": g.copy(), "slip_resistance": d["xi_n"][k], "accumulated_slip": np.zeros((n, 12)),
                 "slip": np.zeros((n, 12))}
        learned = LearnedCrystalPlasticity(args.model, mat, g)
        t0 = time.perf_counter()
        res = learned.update(d["F"][k], state, float(dt), tangent=True)
        t_learned += time.perf_counter() - t0
        physics = CrystalPlasticity(mat, g, warm_start=False)
        t0 = time.perf_counter()
        physics.update(d["F"][k], state, float(dt), tangent=True)
        t_physics += time.perf_counter() - t0
        learned.net.out.bias.data[:] = -1e3  # no slip: the elastic trial
        trial = learned.update(d["F"][k], state, float(dt), tangent=False).stress
        norm = np.linalg.norm(d["P"][k], axis=(1, 2))
        errs.append(np.linalg.norm(res.stress - d["P"][k], axis=(1, 2)) / norm)
        trial_errs.append(np.linalg.norm(trial - d["P"][k], axis=(1, 2)) / norm)
        n_pts += n
    e, e0 = np.concatenate(errs), np.concatenate(trial_errs)

    def stats(x):
        return {"median": float(np.median(x)), "p95": float(np.percentile(x, 95)), "max": float(x.max())}

    report["points"] = {"count": n_pts, "stress_relative_error": {"learned": stats(e), "elastic_trial": stats(e0)},
                        "seconds_per_point_with_tangent": {"learned": t_learned / n_pts,
                                                           "physics": t_physics / n_pts}}
    print(f"points: {n_pts}; stress error learned median {100 * np.median(e):.2f} % (p95 "
          f"{100 * np.percentile(e, 95):.2f} %), elastic trial {100 * np.median(e0):.1f} %; "
          f"{1e6 * t_learned / n_pts:.1f} vs {1e6 * t_physics / n_pts:.1f} us per point (learned vs physics)")

    # 2. a polycrystal in the global Newton loop
    runs = {}
    for name, model in (("physics", None), ("learned", args.model)):
        fields, wall, timings, st = _solve(model)
        runs[name] = {"fields": fields, "wall": wall, "timings": timings, "newton": int(np.sum(st["newton_iterations"])),
                      "cutbacks": int(st["cutbacks"])}
    p, q = runs["physics"]["fields"], runs["learned"]["fields"]
    sp, sq = p["macro_stress"][:, 0], q["macro_stress"][:, 0]
    vm_p, vm_q = p["von_mises_stress"][1:], q["von_mises_stress"][1:]
    report["polycrystal"] = {
        "map": "meshes/sample.ang (32 x 32), Al-DAMASK, tension 0.5 % along x, 10 increments, serial",
        "macro_stress_xx_MPa": {"physics": (sp / 1e6).tolist(), "learned": (sq / 1e6).tolist()},
        "macro_stress_relative_error_final": float(abs(sq[-1] - sp[-1]) / abs(sp[-1])),
        "macro_stress_relative_error_max": float(np.max(np.abs(sq[1:] - sp[1:]) / np.abs(sp[1:]))),
        "von_mises_mape": float(np.mean(np.abs(vm_q - vm_p) / vm_p)),
        "von_mises_mape_last_step": float(np.mean(np.abs(vm_q[-1] - vm_p[-1]) / vm_p[-1])),
        "newton_iterations": {k: r["newton"] for k, r in runs.items()},
        "cutbacks": {k: r["cutbacks"] for k, r in runs.items()},
        "wall_seconds": {k: r["wall"] for k, r in runs.items()},
        "constitutive_seconds": {k: r["timings"].get("constitutive") for k, r in runs.items()},
        "speed_ratio_learned_over_physics": runs["learned"]["wall"] / runs["physics"]["wall"]}
    pc = report["polycrystal"]
    print(f"polycrystal: final stress {sp[-1] / 1e6:.2f} (physics) vs {sq[-1] / 1e6:.2f} MPa (learned), von Mises MAPE "
          f"{100 * pc['von_mises_mape']:.2f} %; Newton {pc['newton_iterations']}; wall {runs['physics']['wall']:.1f} vs "
          f"{runs['learned']['wall']:.1f} s (constitutive {pc['constitutive_seconds']})")
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
