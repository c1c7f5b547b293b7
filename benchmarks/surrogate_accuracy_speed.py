"""Surrogate accuracy and speed-up over the solver, on the default campaign, measured in one run.

1. ``slipstream evaluate``'s figures of the model on its test, held-out and
   validation splits of the store (nMAE per stress component, von Mises MAPE,
   misorientation of the deformed orientations, macroscopic curve, boundary vs
   interior, slip-system accuracy vs Schmid, trust calibration).
2. Speed on the same machine, same samples: ``--solver-samples`` test samples
   are solved again by the solver (serial, as the campaign's config says) and
   predicted by the ensemble, one sample at a time and batched. The solver's
   fields are compared with the stored ones (a check that the store and this
   solver agree) and the surrogate's errors on exactly these samples are listed.

The JSON (``benchmarks/results/surrogate_accuracy_speed.json``) puts the goals
of issue 4 and the published figures (reference/validation.md) next to ours.

Usage::

    slipstream campaign examples/campaign_default.yaml --store data/default.zarr   # once (~40 min on 2 ranks)
    python benchmarks/surrogate_accuracy_speed.py --store data/default.zarr
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOALS = {"stress_nmae_per_component": 0.01, "von_mises_mape": 0.03, "misorientation_median_deg": 0.1,
         "speedup_per_sample_cpu": 1000.0}
PUBLISHED = {"stress_nmae_per_component_fno": [0.0025, 0.0040], "stress_nmae_per_component_unet": [0.014, 0.022],
             "von_mises_mape_elastoplastic_unet": 0.064, "speedup": [2500, 8300],
             "sources": "arXiv 2210.16994 (FNO/U-Net nMAE); Mianroodi, Siboni, Raabe 2021 (MAPE, 8300x)"}


def solve_again(store_path: str, indices: list[int]) -> list[dict]:
    import dolfinx_solver  # noqa: F401  (before petsc4py)
    import numpy as np
    from mpi4py import MPI

    from solver import store as st
    from solver.campaign import parse_campaign, sample_config
    from solver.config import prepare_simulation
    from solver.simulate import solve_sample

    group = st.open_store(store_path)
    spec = parse_campaign(dict(group.attrs["config"]), ROOT)
    out = []
    for i in indices:
        setup = prepare_simulation(sample_config(spec, i), ROOT)
        t0 = time.perf_counter()
        fields, _ = solve_sample(MPI.COMM_SELF, setup)
        wall = time.perf_counter() - t0
        stored = np.asarray(group["stress"][i])
        diff = float(np.abs(fields["stress"] - stored).max() / np.abs(stored).max())
        out.append({"sample": i, "solver_seconds": wall, "max_relative_difference_to_store": diff})
        print(f"solver: sample {i} in {wall:.1f} s (vs store: {diff:.1e})", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "surrogate" / "pretrained" / "default"))
    p.add_argument("--store", required=True, help="the default campaign's store")
    p.add_argument("--solver-samples", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "surrogate_accuracy_speed.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")

    import torch

    from surrogate.evaluate import evaluate, evaluate_split, timing
    from surrogate.uncertainty import load_model

    t0 = time.perf_counter()
    report = evaluate(args.model, args.store, pathlib.Path(args.out).with_suffix("") , plots=True)
    ensemble = load_model(args.model)
    test = ensemble.meta["splits"]["test"][: args.solver_samples]
    solved = solve_again(args.store, test)
    speed = timing(ensemble, args.store, test)
    solver_mean = sum(s["solver_seconds"] for s in solved) / len(solved)
    per_sample, _ = evaluate_split(ensemble, args.store, test)
    result = {
        "model": args.model, "store": args.store,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "splits": report["splits"], "calibration": report["calibration"],
        "speed": {"solver_seconds_per_sample": solver_mean, "solver_samples": solved,
                  "surrogate_seconds_per_sample": speed["seconds_per_sample"],
                  "surrogate_seconds_per_sample_batched": speed["seconds_per_sample_batched"],
                  "speedup_per_sample": solver_mean / speed["seconds_per_sample"],
                  "speedup_batched": solver_mean / speed["seconds_per_sample_batched"],
                  "members": speed["members"], "steps_per_sample": speed["steps_per_sample"],
                  "surrogate_errors_on_these_samples": {k: per_sample[k] for k in
                                                        ("von_mises_mape", "stress_nmae_mean", "misorientation_deg")}},
        "goals": GOALS, "published": PUBLISHED,
        "seconds": time.perf_counter() - t0,
    }
    test_m = report["splits"].get("test", {})
    if test_m:
        result["against_goals_test_split"] = {
            "stress_nmae_worst_component": max(test_m["stress_nmae"].values()),
            "von_mises_mape": test_m["von_mises_mape"],
            "misorientation_median_deg": test_m["misorientation_deg"]["median"],
            "speedup_per_sample": result["speed"]["speedup_per_sample"]}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result.get("against_goals_test_split", {}), indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
