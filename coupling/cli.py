"""The ``slipstream`` command line.

Subcommands import what they need lazily, so ``slipstream simulate`` does not
load torch and ``slipstream train`` does not load dolfinx.

Errors in the user's input end in one line, ``slipstream: error: ...``, and
exit status 2. Under ``mpirun`` the failing rank aborts the whole job so that no
rank waits forever in a collective call.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

EXIT_INPUT_ERROR = 2

DEMO_CONFIG = {
    "microstructure": {"kind": "voronoi", "cells": [12, 12, 12], "size": [1.0e-4, 1.0e-4, 1.0e-4],
                       "grains": 12, "seed": 1, "texture": "random"},
    "material": {"preset": "Cu"},
    "boundary": "periodic",
    "loading": {"mode": "tension", "direction": [1, 0, 0], "strain": 0.02, "rate": 1.0e-3, "increments": 10},
    "output": {"every": 1},
}


def _comm():
    try:
        import dolfinx_solver  # noqa: F401  (PyPI wheel: before petsc4py/mpi4py users)
    except ImportError:
        pass
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _say(comm, *args, **kwargs):
    if comm.rank == 0:
        print(*args, **kwargs, flush=True)


def cmd_simulate(args) -> int:
    from solver.simulate import run_simulation

    comm = _comm()
    summary = run_simulation(comm, args.config, args.out, overwrite=args.overwrite, quiet=args.quiet)
    stored = summary.get("store") or "no store (a mesh has no voxel fields)"
    _say(comm, f"done: {stored}; pictures in {args.out}/; ParaView: {summary.get('paraview')}")
    return 0


def cmd_demo(args) -> int:
    import yaml

    from solver.simulate import run_simulation

    comm = _comm()
    out = pathlib.Path(args.out)
    cfg_path = out / "demo.yaml"
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(DEMO_CONFIG, sort_keys=False))
    comm.Barrier()
    _say(comm, f"Slipstream demo: {DEMO_CONFIG['microstructure']['cells']} voxels, "
               f"{DEMO_CONFIG['microstructure']['grains']} Cu grains, periodic tension to 2 % along x")
    t0 = time.perf_counter()
    summary = run_simulation(comm, cfg_path, out, overwrite=True, quiet=False)
    if comm.rank == 0:
        print(f"\nsolved in {time.perf_counter() - t0:.1f} s on {comm.size} rank(s); "
              f"final stress along x {summary['final_stress_along_load_MPa']:.1f} MPa")
        print(f"store (zarr, campaign schema): {summary['store']}")
        print(f"ParaView: {summary['paraview']}")
        print("pictures:")
        for p in summary["pictures"]:
            print(f"  {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slipstream", description="Surrogate-coupled crystal plasticity on DOLFINx.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="solve one microstructure under one load (serial or mpirun)")
    s.add_argument("config", help="YAML config (see docs/simulate.md)")
    s.add_argument("--out", required=True, help="run directory for results.zarr, fields.xdmf and PNGs")
    s.add_argument("--overwrite", action="store_true", help="replace an existing results.zarr in --out")
    s.add_argument("--quiet", action="store_true", help="no per-increment progress lines")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="run the small embedded polycrystal end to end and make pictures")
    d.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)
    from solver.errors import SlipstreamError

    try:
        return args.func(args)
    except SlipstreamError as exc:
        msg = " ".join(str(exc).split())
        comm = _comm()
        if comm.size == 1:
            print(f"slipstream: error: {msg}", file=sys.stderr, flush=True)
            return EXIT_INPUT_ERROR
        # Under mpirun all ranks usually fail alike: rank 0 speaks and ends the job
        # at once; a rank failing alone speaks after a moment, then ends it.
        if comm.rank != 0:
            time.sleep(2.0)
        print(f"slipstream: error: {msg}", file=sys.stderr, flush=True)
        comm.Abort(EXIT_INPUT_ERROR)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
