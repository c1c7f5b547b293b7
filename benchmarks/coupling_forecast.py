"""Hybrid physics-ML forecasts: rollout errors at 1x and 2x the training horizon, and wall time.

Measured in one run, on held-out trajectories of the default campaign (the
forecast models' test and held-out splits):

1. Relative L2 error against the crystal-plasticity solve, per field group, at
   every step of a rollout from the unloaded state over the whole load path (10
   steps; the models were trained on the first 5), for each incomplete physics
   (the elastic limit; crystal plasticity with frozen hardening), both solved
   by the same solver: the physics alone, and the hybrid forecast built on it
   (physics + learned residual, APHYNITY-style); and a pure neural forecast of
   the same network. The residual's share of each step's increment measures
   the missing physics.
2. Wall time on this machine, same samples, serial: the crystal-plasticity
   solve, each physics solve, and each rollout.

Goal (issue 5): error at 2x the horizon at most 1/10 of the incomplete physics
alone and 1/3 of the pure neural model.

Usage::

    slipstream campaign examples/campaign_default.yaml --store data/default.zarr
    slipstream campaign examples/campaign_default.yaml --constitutive elastic --store data/elastic.zarr
    slipstream campaign examples/campaign_default.yaml --constitutive frozen_hardening --store data/frozen.zarr
    slipstream train --forecast hybrid --store data/default.zarr --physics data/elastic.zarr --out fc_hybrid/
    slipstream train --forecast hybrid --store data/default.zarr --physics data/frozen.zarr --out fc_frozen/
    slipstream train --forecast neural --store data/default.zarr --out fc_neural/
    python benchmarks/coupling_forecast.py --hybrid fc_hybrid=data/elastic.zarr \
        --hybrid fc_frozen=data/frozen.zarr --neural fc_neural

A hybrid whose physics store is missing is skipped with a message.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import solve_times, write_report  # noqa: E402  (benchmarks/common.py)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(ROOT / "data" / "default.zarr"))
    ap.add_argument("--hybrid", action="append", metavar="MODEL=PHYSICS_STORE",
                    help="a hybrid forecast and its physics partner store (repeatable; default: the shipped ones)")
    ap.add_argument("--neural", default=str(ROOT / "surrogate" / "pretrained" / "forecast_neural"))
    ap.add_argument("--timed-samples", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "coupling_forecast.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from surrogate.forecast import TrajectoryDataset, load_forecaster, rollout_errors

    pairs = args.hybrid or [f"{ROOT / 'surrogate' / 'pretrained' / 'forecast_hybrid'}={ROOT / 'data' / 'elastic.zarr'}",
                            f"{ROOT / 'surrogate' / 'pretrained' / 'forecast_frozen'}={ROOT / 'data' / 'frozen.zarr'}"]
    neural, nmeta = load_forecaster(args.neural)
    horizon = nmeta["horizon"]
    hybrids = {}  # physics name -> (model, physics store)
    for pair in pairs:
        model_dir, _, physics = pair.partition("=")
        if not pathlib.Path(physics).exists() or not pathlib.Path(model_dir).exists():
            print(f"skipped {model_dir}: {physics if not pathlib.Path(physics).exists() else model_dir} is missing")
            continue
        model, meta = load_forecaster(model_dir)
        if meta["horizon"] != horizon or meta["splits"] != nmeta["splits"]:
            raise SystemExit(f"{model_dir} and {args.neural} were trained on different horizons or splits")
        hybrids[meta.get("physics_constitutive") or "elastic"] = (model, physics, model_dir)
    if not hybrids:
        raise SystemExit("no hybrid forecast with its physics store to measure")
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch_threads": torch.get_num_threads()},
              "store": args.store, "physics": {k: v[1] for k, v in hybrids.items()},
              "models": {**{f"hybrid_{k}": v[2] for k, v in hybrids.items()}, "neural": args.neural},
              "training_horizon": horizon, "goal": "error at 2x the horizon <= 1/10 of the physics alone and <= 1/3 "
                                                   "of the pure neural model", "splits": {}}
    for split in ("test", "held_out"):
        samples = nmeta["splits"][split]
        if not samples:
            continue
        rows, shares = {}, {}
        for name, (model, physics, _) in hybrids.items():
            ds = TrajectoryDataset(args.store, samples, physics)
            steps = ds.info.n_steps - 1
            rows[f"physics_alone_{name}"] = rollout_errors(None, ds, horizon, steps)
            rows[f"hybrid_{name}"] = rollout_errors(model, ds, horizon, steps)
            shares[name] = rows[f"hybrid_{name}"]["residual_share"].get(str(2 * horizon))
        rows["neural"] = rollout_errors(neural, ds, horizon, steps)
        at = {name: {f"{m}x_horizon": r["relative_error"][str(m * horizon)] for m in (1, 2) if m * horizon <= steps}
              for name, r in rows.items()}
        report["splits"][split] = {"samples": len(samples), "at": at, "per_step": rows,
                                   "residual_share_at_2x": shares}
        print(f"[{split}] {len(samples)} trajectories, relative error (all groups / stress) at 1x and 2x horizon:")
        for name, a in at.items():
            print("  " + f"{name:30s}" + "  ".join(f"{k}: {v['all']:.4f} / {v['stress']:.4f}" for k, v in a.items()))
    t = report["splits"].get("test")
    if t and "2x_horizon" in t["at"]["neural"]:
        n = t["at"]["neural"]["2x_horizon"]
        report["ratios_at_2x"], report["goal_met"] = {}, {}
        for name in hybrids:
            h, p = t["at"][f"hybrid_{name}"]["2x_horizon"], t["at"][f"physics_alone_{name}"]["2x_horizon"]
            report["ratios_at_2x"][name] = {group: {"hybrid_over_physics": h[group] / p[group],
                                                    "hybrid_over_neural": h[group] / n[group]} for group in h}
            report["goal_met"][name] = {group: {"tenth_of_physics": h[group] <= p[group] / 10,
                                                "third_of_neural": h[group] <= n[group] / 3}
                                        for group in ("all", "stress")}
            r = report["ratios_at_2x"][name]["all"]
            print(f"at 2x the horizon, {name} physics: hybrid / physics {r['hybrid_over_physics']:.3f}, "
                  f"hybrid / neural {r['hybrid_over_neural']:.3f} (all groups)")

    timed = nmeta["splits"]["test"][: args.timed_samples]
    times = solve_times(args.store, timed, {kind: {"solver": {"constitutive": kind}}
                                           for kind in ("crystal_plasticity",) + tuple(hybrids)})
    roll = {}
    for name, (model, physics, _) in [*hybrids.items(), ("neural", (neural, next(iter(hybrids.values()))[1], ""))]:
        ds = TrajectoryDataset(args.store, timed, physics)
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
    cp = float(np.mean(times["crystal_plasticity"]))
    per = {"crystal_plasticity_solve": cp, "neural_rollout": roll["neural"]}
    speedup = {"neural": cp / roll["neural"]}
    for name in hybrids:
        solve = float(np.mean(times[name]))
        per.update({f"{name}_solve": solve, f"hybrid_{name}_rollout": roll[name],
                    f"hybrid_{name}_total": solve + roll[name]})
        speedup[f"hybrid_{name}"] = cp / (solve + roll[name])
    report["speed"] = {"samples": timed, "seconds_per_sample": per, "speedup_over_solver": speedup,
                       "all_solve_seconds": times}
    print("speed per sample: " + ", ".join(f"{k} {v:.3f} s" for k, v in per.items()))
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
