"""Pieces the coupling benchmarks share: timing solves of a store's samples, writing the report."""

from __future__ import annotations

import json
import pathlib
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def solve_times(store: str, indices: list[int], runs: dict[str, dict]) -> dict[str, list[float]]:
    """Serial wall time of ``solve_sample`` for the store's samples ``indices``, once per run.

    Args:
        store: a campaign store; its config gives the samples.
        runs: name -> config changes, ``{section: {key: value}}`` merged into the campaign config
            (``{}``: as the store was made).

    Returns:
        name -> seconds per sample, in the order of ``indices``.
    """
    import dolfinx_solver  # noqa: F401  (before petsc4py)
    from mpi4py import MPI

    from solver import store as st
    from solver.campaign import parse_campaign, sample_config
    from solver.config import prepare_simulation
    from solver.simulate import solve_sample

    cfg = dict(st.open_store(store).attrs["config"])
    times: dict[str, list[float]] = {}
    for name, change in runs.items():
        c = json.loads(json.dumps(cfg))
        for section, values in change.items():
            c[section] = {**(c.get(section) or {}), **values}
        spec = parse_campaign(c, ROOT)
        for i in indices:
            setup = prepare_simulation(sample_config(spec, i), ROOT)
            t0 = time.perf_counter()
            solve_sample(MPI.COMM_SELF, setup)
            times.setdefault(name, []).append(time.perf_counter() - t0)
    return times


def write_report(report: dict, out: str | pathlib.Path) -> None:
    """Write the benchmark's JSON (directories made as needed) and say where."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
