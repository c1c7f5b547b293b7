"""Solver throughput: voxel-increments per core-second, serial and on 2 ranks, in one run.

Problem (issue 2): a 16^3-voxel, 20-grain random-texture Cu polycrystal in
periodic uniaxial tension to 2 % along x in 20 increments. The script runs the
same problem on 1 rank and under ``mpirun -n 2`` (as subprocesses, one after
the other, so the comparison is made on the same machine in the same run) and
writes JSON with:

* voxel-increments per core-second and the parallel efficiency T1 / (2 T2);
* Newton iterations per increment, cutbacks;
* peak resident memory per rank;
* the time split: constitutive update, interpolation of grad u, assembly,
  PtAP of the periodic constraint, linear solve;
* the anchor: AMITEX_FFTP's ~7.3k voxel-increments per core-second (FFT,
  small strain), and our ratio to it.

Usage::

    python benchmarks/solver_throughput.py --out benchmarks/results/solver_throughput.json
    python benchmarks/solver_throughput.py --cells 8 --increments 4   # quick check
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
ANCHOR_VOXEL_INCREMENTS_PER_CORE_SECOND = 7.3e3  # AMITEX_FFTP, small strain (issue 2)


def worker(args):
    sys.path.insert(0, str(ROOT))
    try:
        import dolfinx_solver  # noqa: F401
    except ImportError:
        pass
    import numpy as np
    from mpi4py import MPI

    from solver.config import prepare_simulation
    from solver.simulate import make_solver

    comm = MPI.COMM_WORLD
    cfg = {
        "microstructure": {"kind": "voronoi", "cells": [args.cells] * 3, "size": [1e-4] * 3,
                           "grains": args.grains, "seed": 1, "texture": "random"},
        "material": {"preset": args.material},
        "boundary": "periodic",
        "loading": {"mode": "tension", "direction": [1, 0, 0], "strain": 0.02, "rate": 1e-3,
                    "increments": args.increments},
    }
    setup = prepare_simulation(cfg)
    t_setup = time.perf_counter()
    solver = make_solver(comm, setup)
    t_setup = time.perf_counter() - t_setup
    dt = setup.loading.duration / setup.loading.increments
    newton, cutbacks = [], 0
    comm.Barrier()
    t0 = time.perf_counter()
    for n in range(1, setup.loading.increments + 1):
        rep = solver.advance(n * dt)
        newton.append(rep.newton_iterations)
        cutbacks += rep.cutbacks
    comm.Barrier()
    wall = time.perf_counter() - t0
    _, sigma, _ = solver.macro_fields()
    split = solver.timing_split()
    splits = comm.gather(split, root=0)
    rss = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, root=0)  # MiB (Linux: KiB)
    solver.destroy()
    if comm.rank == 0:
        nvox = args.cells**3
        out = {
            "ranks": comm.size,
            "voxels": nvox,
            "increments": setup.loading.increments,
            "setup_s": t_setup,
            "wall_s": wall,
            "voxel_increments_per_core_second": nvox * setup.loading.increments / (wall * comm.size),
            "newton_iterations_per_increment": newton,
            "mean_newton_iterations": float(np.mean(newton)),
            "cutbacks": cutbacks,
            "final_stress_xx_MPa": float(sigma[0, 0] / 1e6),
            "peak_rss_MiB_per_rank": rss,
            "time_split_s_rank0": splits[0],
            "time_split_s_max_over_ranks": {k: max(s[k] for s in splits) for k in splits[0]},
        }
        pathlib.Path(args.worker).write_text(json.dumps(out))


def run_case(ranks, args):
    with tempfile.TemporaryDirectory() as tmp:
        part = pathlib.Path(tmp) / "part.json"
        cmd = [sys.executable, "-m", "mpi4py", __file__, "--worker", str(part), "--cells", str(args.cells),
               "--grains", str(args.grains), "--increments", str(args.increments), "--material", args.material]
        if ranks > 1:
            cmd = [str(pathlib.Path(sys.executable).parent / "mpirun"), "-n", str(ranks)] + cmd
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        return json.loads(part.read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=16)
    p.add_argument("--grains", type=int, default=20)
    p.add_argument("--increments", type=int, default=20)
    p.add_argument("--material", default="Cu", help="material preset (default Cu, as in issue 2)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "solver_throughput.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    serial = run_case(1, args)
    parallel = run_case(2, args)
    result = {
        "benchmark": "solver_throughput",
        "problem": f"{args.cells}^3 voxels, {args.grains} grains, {args.material}, periodic tension to 2 % along x, "
                   f"{args.increments} increments",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": list(os.getloadavg())},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "serial": serial,
        "two_ranks": parallel,
        "parallel_efficiency": serial["wall_s"] / (2.0 * parallel["wall_s"]),
        "speedup_2_ranks": serial["wall_s"] / parallel["wall_s"],
        "same_answer": abs(serial["final_stress_xx_MPa"] - parallel["final_stress_xx_MPa"])
        <= 1e-6 * abs(serial["final_stress_xx_MPa"]),
        "anchor": {"name": "AMITEX_FFTP (FFT, small strain)",
                   "voxel_increments_per_core_second": ANCHOR_VOXEL_INCREMENTS_PER_CORE_SECOND},
        "ratio_to_anchor_serial": serial["voxel_increments_per_core_second"] / ANCHOR_VOXEL_INCREMENTS_PER_CORE_SECOND,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("parallel_efficiency", "ratio_to_anchor_serial", "same_answer")}))
    print(f"serial: {serial['voxel_increments_per_core_second']:.0f} voxel-increments/core-s, "
          f"split {json.dumps({k: round(v, 2) for k, v in serial['time_split_s_rank0'].items()})}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
