"""Hybrid physics-ML forecasts: rollout errors at 1x and 2x the training horizon, and wall time.

Measured in one run, on held-out trajectories of the default campaign (the
forecast models' test and held-out splits):

1. Relative L2 error against the crystal-plasticity solve, per field group, at
   every step of a rollout from the unloaded state over the whole load path (10
   steps; the models were trained on the first 5): the incomplete physics alone
   (the elastic limit solved by the same solver), the hybrid forecast (physics
   + learned residual, APHYNITY-style), and a pure neural forecast of the same
   network. The residual's share of each step's increment measures the missing
   physics.
2. Wall time on this machine, same samples, serial: the crystal-plasticity
   solve, the elastic solve, and each rollout.

Goal (issue 5): error at 2x the horizon at most 1/10 of the incomplete physics
alone and 1/3 of the pure neural model.

Usage::

    slipstream campaign examples/campaign_default.yaml --store data/default.zarr
    slipstream campaign examples/campaign_default.yaml --constitutive elastic --store data/elastic.zarr
    slipstream train --forecast hybrid --store data/default.zarr --physics data/elastic.zarr --out fc_hybrid/
    slipstream train --forecast neural --store data/default.zarr --out fc_neural/
    python benchmarks/coupling_forecast.py --hybrid fc_hybrid --neural fc_neural
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _solve_times(store: str, indices: list[int]) -> dict[str, list[float]]:
    import dolfinx_solver  # noqa: F401  (before petsc4py)
    from mpi4py import MPI

    from solver import store as st
    from solver.campaign import parse_campaign, sample_config
    from solver.config import prepare_simulation
    from solver.simulate import solve_sample

    cfg = dict(st.open_store(store).attrs["config"])
    times: dict[str, list[float]] = {}
    for kind in ("crystal_plasticity", "elastic"):
        c = json.loads(json.dumps(cfg))
        c["solver"] = {**c.get("solver", {}), "constitutive": kind}
        spec = parse_campaign(c, ROOT)
        for i in indices:
            setup = prepare_simulation(sample_config(spec, i), ROOT)
            t0 = time.perf_counter()
            solve_sample(MPI.COMM_SELF, setup)
            times.setdefault(kind, []).append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(ROOT / "data" / "default.zarr"))
    ap.add_argument("--physics", default=str(ROOT / "data" / "elastic.zarr"))
    ap.add_argument("--hybrid", default=str(ROOT / "surrogate" / "pretrained" / "forecast_hybrid"))
    ap.add_argument("--neural", default=str(ROOT / "surrogate" / "pretrained" / "forecast_neural"))
    ap.add_argument("--timed-samples", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "coupling_forecast.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from surrogate.forecast import TrajectoryDataset, load_forecaster, rollout_errors

    hybrid, hmeta = load_forecaster(args.hybrid)
    neural, nmeta = load_forecaster(args.neural)
    horizon = hmeta["horizon"]
    if nmeta["horizon"] != horizon or nmeta["splits"] != hmeta["splits"]:
        raise SystemExit("the hybrid and the neural model were trained on different horizons or splits")
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch_threads": torch.get_num_threads()},
              "store": args.store, "physics": args.physics, "models": {"hybrid": args.hybrid, "neural": args.neural},
              "training_horizon": horizon, "goal": "error at 2x the horizon <= 1/10 of the physics alone and <= 1/3 "
                                                   "of the pure neural model", "splits": {}}
    for split in ("test", "held_out"):
        samples = hmeta["splits"][split]
        if not samples:
            continue
        ds = TrajectoryDataset(args.store, samples, args.physics)
        steps = ds.info.n_steps - 1
        rows = {"physics_alone": rollout_errors(None, ds, horizon, steps),
                "hybrid": rollout_errors(hybrid, ds, horizon, steps),
                "neural": rollout_errors(neural, ds, horizon, steps)}
        at = {name: {f"{m}x_horizon": r["relative_error"][str(m * horizon)] for m in (1, 2) if m * horizon <= steps}
              for name, r in rows.items()}
        report["splits"][split] = {"samples": len(samples), "at": at, "per_step": rows,
                                   "residual_share_at_2x": rows["hybrid"]["residual_share"].get(str(2 * horizon))}
        print(f"[{split}] {len(samples)} trajectories, relative error (all groups / stress) at 1x and 2x horizon:")
        for name, a in at.items():
            print("  " + f"{name:14s}" + "  ".join(f"{k}: {v['all']:.4f} / {v['stress']:.4f}" for k, v in a.items()))
    t = report["splits"].get("test")
    if t and "2x_horizon" in t["at"]["hybrid"]:
        h, p, n = (t["at"][k]["2x_horizon"] for k in ("hybrid", "physics_alone", "neural"))
        report["ratios_at_2x"] = {group: {"hybrid_over_physics": h[group] / p[group],
                                          "hybrid_over_neural": h[group] / n[group]} for group in h}
        report["goal_met"] = {"all": {"tenth_of_physics": h["all"] <= p["all"] / 10,
                                      "third_of_neural": h["all"] <= n["all"] / 3},
                              "stress": {"tenth_of_physics": h["stress"] <= p["stress"] / 10,
                                         "third_of_neural": h["stress"] <= n["stress"] / 3}}
        print(f"at 2x the horizon: hybrid / physics {report['ratios_at_2x']['all']['hybrid_over_physics']:.3f}, "
              f"hybrid / neural {report['ratios_at_2x']['all']['hybrid_over_neural']:.3f} (all groups)")

    timed = hmeta["splits"]["test"][: args.timed_samples]
    times = _solve_times(args.store, timed)
    ds = TrajectoryDataset(args.store, timed, args.physics)
    roll = {}
    for name, model in (("hybrid", hybrid), ("neural", neural)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            with torch.no_grad():
                for k in range(len(ds)):
                    it = ds[k]
                    model.rollout(it["physics"][None], it["fields"][None], it["condition"][None],
                                  ds.info.n_steps - 1)
            best = min(best, (time.perf_counter() - t0) / len(ds))
        roll[name] = best
    cp, el = float(np.mean(times["crystal_plasticity"])), float(np.mean(times["elastic"]))
    report["speed"] = {"samples": timed, "seconds_per_sample": {"crystal_plasticity_solve": cp, "elastic_solve": el,
                                                                "hybrid_rollout": roll["hybrid"],
                                                                "neural_rollout": roll["neural"],
                                                                "hybrid_total": el + roll["hybrid"]},
                       "speedup_over_solver": {"hybrid": cp / (el + roll["hybrid"]), "neural": cp / roll["neural"]},
                       "all_solve_seconds": times}
    print(f"speed per sample: crystal plasticity {cp:.1f} s, elastic {el:.1f} s + hybrid rollout "
          f"{roll['hybrid']:.3f} s, neural rollout {roll['neural']:.3f} s")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
