"""FDM throughput: unknowns solved per second, serial and on 2 ranks, in one run.

Two problems (issue 6), each solved on 1 rank and under ``mpirun -n 2`` (as
subprocesses, one after the other, on the same machine in the same run):

* ``map2d``: a 2-D map (``N x N x 1`` voxels, periodic), an edge and a screw
  quadrupole with Gaussian cores in rotated cubic Cu; direct solver (MUMPS LU).
* ``box3d``: a ``N^3`` periodic box with a prismatic and a shear loop in
  isotropic Cu-like elasticity; CG + GAMG (the ``auto`` choice above
  30k displacement unknowns; LU below it).

For each: unknowns (nine potential components + displacement, after the
periodic constraint), wall time of the setup (mesh, constraints, assembly,
factorisation or AMG setup) and of the solve (nine Poisson solves, equilibrium,
cell-centre fields), unknowns per second of the solve and of setup + solve, the
2-rank speed-up and parallel efficiency ``T1 / (2 T2)``, and whether both runs
give the same stress. The forms are compiled on a tiny grid first, so JIT time
is not counted. Writes JSON (default ``benchmarks/results/fdm_throughput.json``).

Usage::

    python benchmarks/fdm_throughput.py                     # 2-D 256^2, 3-D 32^3
    python benchmarks/fdm_throughput.py --map2d 96 --box3d 16   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def problem(name, n):
    from solver import fdm

    S, B = 1.0e-9, 2.556e-10
    if name == "map2d":
        L = 32 * S
        grid = fdm.Grid((n, n, 1), (L, L, L / n), periodic=True)
        width = max(1.0 * S, 2.0 * L / n)
        items = [{"kind": "quadrupole", "character": "edge", "center": [L / 2, L / 2], "spacing": [L / 2, L / 2],
                  "burgers": B, "core": {"width": width}},
                 {"kind": "quadrupole", "character": "screw", "center": [L / 4, L / 4], "spacing": [L / 2, L / 2],
                  "burgers": B, "core": {"width": width}}]
        C = fdm.cubic_stiffness(168.9e9, 121.8e9, 75.8e9, (0.3, 0.5, 0.7))
    else:
        L = 32 * S
        grid = fdm.Grid((n, n, n), (L, L, L), periodic=True)
        width = max(1.0 * S, 1.5 * L / n)
        items = [{"kind": "loop", "center": [L / 2, L / 2, L / 2], "normal": [0, 0, 1], "radius": L / 4,
                  "burgers": [0, 0, B], "core": {"width": width}},
                 {"kind": "loop", "center": [L / 2, L / 2, L / 2], "normal": [1, 1, 1], "radius": L / 6,
                  "burgers": [B, -B, 0], "core": {"width": width}}]
        C = fdm.isotropic_stiffness(48.3e9, 0.34)
    content = fdm.content_from_config(items, grid)
    fdm.check_net_content(content, grid.periodic)
    alpha = fdm.check_mean(fdm.nye_field(grid, content), grid.periodic, float("inf"))
    return grid, C, alpha


def worker(args):
    sys.path.insert(0, str(ROOT))
    try:
        import dolfinx_solver  # noqa: F401
    except ImportError:
        pass
    import numpy as np
    from mpi4py import MPI

    from solver import fdm

    comm = MPI.COMM_WORLD
    grid, C, alpha = problem(args.problem, args.cells)
    # compile every form once (JIT cache) on a tiny grid: not part of the measurement
    tiny = fdm.Grid((2, 2, 2), (1e-9, 1e-9, 1e-9))
    warm = fdm.FDMSolver(comm, tiny, C, linear_solver="direct")
    warm.solve(np.zeros(tiny.shape + (3, 3)))
    warm.destroy()
    comm.Barrier()
    t0 = time.perf_counter()
    solver = fdm.FDMSolver(comm, grid, C)
    comm.Barrier()
    t1 = time.perf_counter()
    res = solver.solve(alpha)
    comm.Barrier()
    t2 = time.perf_counter()
    timings = comm.gather(res.timings, root=0)
    rss = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, root=0)
    solver.destroy()
    if comm.rank == 0:
        setup, solve = t1 - t0, t2 - t1
        out = {
            "ranks": comm.size, "cells": list(grid.cells), "linear_solver": res.linear_solver,
            "dofs": res.dofs, "krylov_iterations": res.iterations,
            "setup_s": setup, "solve_s": solve,
            "dofs_per_second_solve": res.dofs["total"] / solve,
            "dofs_per_second_setup_and_solve": res.dofs["total"] / (setup + solve),
            "time_split_s_rank0": timings[0],
            "residuals": res.residuals,
            "peak_rss_MiB_per_rank": rss,
            "max_abs_stress_Pa": float(np.abs(res.stress).max()),
        }
        np.save(args.worker + ".stress.npy", res.stress)
        pathlib.Path(args.worker).write_text(json.dumps(out))


def run_case(name, cells, ranks, tmp):
    part = pathlib.Path(tmp) / f"{name}-{ranks}.json"
    cmd = [sys.executable, "-m", "mpi4py", __file__, "--worker", str(part), "--problem", name, "--cells", str(cells)]
    if ranks > 1:
        cmd = [str(pathlib.Path(sys.executable).parent / "mpirun"), "-n", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(part.read_text()), str(part) + ".stress.npy"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map2d", type=int, default=256, help="N of the N x N x 1 map (0 skips it)")
    p.add_argument("--box3d", type=int, default=32, help="N of the N^3 box (0 skips it)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fdm_throughput.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--problem", help=argparse.SUPPRESS)
    p.add_argument("--cells", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import numpy as np

    result = {
        "benchmark": "fdm_throughput",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "problems": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, cells in (("map2d", args.map2d), ("box3d", args.box3d)):
            if not cells:
                continue
            serial, s_file = run_case(name, cells, 1, tmp)
            parallel, p_file = run_case(name, cells, 2, tmp)
            a, b = np.load(s_file), np.load(p_file)
            t1, t2 = serial["setup_s"] + serial["solve_s"], parallel["setup_s"] + parallel["solve_s"]
            result["problems"][name] = {
                "serial": serial, "two_ranks": parallel,
                "speedup_2_ranks": t1 / t2, "parallel_efficiency": t1 / (2.0 * t2),
                "speedup_2_ranks_solve_only": serial["solve_s"] / parallel["solve_s"],
                "parallel_efficiency_solve_only": serial["solve_s"] / (2.0 * parallel["solve_s"]),
                "max_stress_difference_relative": float(np.abs(a - b).max() / np.abs(a).max()),
            }
            r = result["problems"][name]
            print(f"{name} {serial['cells']}: {serial['dofs']['total']} dofs ({serial['linear_solver']}); "
                  f"1 rank: setup {serial['setup_s']:.2f} s, solve {serial['solve_s']:.2f} s, "
                  f"{serial['dofs_per_second_solve']:.3g} dofs/s (solve), "
                  f"{serial['dofs_per_second_setup_and_solve']:.3g} dofs/s (setup + solve); "
                  f"2 ranks: efficiency {r['parallel_efficiency']:.2f} "
                  f"(solve only {r['parallel_efficiency_solve_only']:.2f}); "
                  f"same stress to {r['max_stress_difference_relative']:.1e}", flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
