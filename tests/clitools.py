"""Helpers for tests that run the ``slipstream`` command line in a subprocess."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cli_command(*args, ranks=1):
    """``(argv, env)`` running ``slipstream ARGS`` with this interpreter, under ``mpirun -n ranks`` if > 1."""
    cmd = [sys.executable, "-m", "coupling.cli", *map(str, args)]
    if ranks > 1:
        cmd = [str(pathlib.Path(sys.executable).parent / "mpirun"), "-n", str(ranks),
               sys.executable, "-m", "mpi4py", "-m", "coupling.cli", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    for key in [k for k in env if k.startswith(("PMI_", "MPI_", "HYDRA_", "OMPI_"))]:
        env.pop(key)  # a nested mpirun must not think it is a child of ours
    return cmd, env


def assert_one_line_error(proc, *needles):
    """Exit status 2 and exactly one stderr line ``slipstream: error: ...`` containing every needle."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("slipstream: error: ")
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
