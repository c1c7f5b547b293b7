"""Symmetry augmentation: the surrogate trained with and without it, on the same splits, in one run.

Both models were trained on the same store and split, with the same config
but for ``augment`` (``surrogate/symmetry.py``). Each predicts plainly and
with its symmetric copies (``Ensemble.symmetric``: the 8 copies' answers mapped
back and averaged); for each of the four, measured here:

1. ``slipstream evaluate``'s figures on the test and held-out splits (as the
   maps were solved);
2. the same test split seen as copies under the square's symmetries (the
   identity, a quarter and a half turn, a diagonal mirror: ``COPIES``): a
   map rotated by 90 degrees, loaded along the rotated axis, is as physical as the original (an EBSD scan taken
   in another orientation). The spread over the copies measures how far a
   model is from the equivariance the physics has.

Usage::

    python benchmarks/surrogate_augmentation.py --store data/default.zarr \\
        --model surrogate/pretrained/default --baseline MODEL_WITHOUT_AUGMENTATION/
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

from common import ROOT, write_report

sys.path.insert(0, str(ROOT))

FIGURES = ("stress_nmae_mean", "von_mises_mape", "von_mises_mape_last_step")
#: elements of surrogate.symmetry.ELEMENTS the test split is evaluated as (4 of 8: the cost is 8x per
#: sample for a symmetric prediction)
COPIES = ((0, False), (1, False), (2, False), (3, True))


def _figures(metrics: dict) -> dict:
    out = {k: metrics[k] for k in FIGURES}
    out["misorientation_median_deg"] = metrics["misorientation_deg"]["median"]
    out["macro_curve_median_relative_error"] = metrics["macro_curve"]["median_relative_error"]
    out["slip_system_accuracy"] = metrics["slip_system"]["accuracy"]
    out["nrmse"] = metrics["nrmse"]
    return out


def measure(model: str, store: str, symmetric: bool) -> dict:
    from surrogate.evaluate import evaluate_split, load_model

    ensemble = load_model(model)
    ensemble.symmetric = symmetric
    splits = ensemble.meta["splits"]
    report = {"augment": bool(ensemble.meta["config"].get("augment", False)), "symmetric_copies": symmetric,
              "splits": {}}
    for name in ("test", "held_out"):
        t0 = time.perf_counter()
        report["splits"][name] = _figures(evaluate_split(ensemble, store, splits[name])[0])
        print(f"{model} symmetric={symmetric} [{name}]: von Mises MAPE {100 * report['splits'][name]['von_mises_mape']:.2f} % "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    copies = {}
    for element in COPIES:
        copies[f"turns{element[0]}{'_mirror' if element[1] else ''}"] = _figures(
            evaluate_split(ensemble, store, splits["test"], element=element)[0])
    mape = [c["von_mises_mape"] for c in copies.values()]
    nmae = [c["stress_nmae_mean"] for c in copies.values()]
    report["test_symmetric_copies"] = {
        "per_copy": copies,
        "von_mises_mape": {"mean": sum(mape) / len(mape), "min": min(mape), "max": max(mape)},
        "stress_nmae_mean": {"mean": sum(nmae) / len(nmae), "min": min(nmae), "max": max(nmae)}}
    print(f"{model} symmetric={symmetric} [test, {len(copies)} copies]: von Mises MAPE {100 * min(mape):.2f} - {100 * max(mape):.2f} %", flush=True)
    return report


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="data/default.zarr")
    parser.add_argument("--model", default=str(ROOT / "surrogate/pretrained/default"), help="trained with augment: true")
    parser.add_argument("--baseline", required=True, help="the same training without augmentation")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/surrogate_augmentation.json"))
    args = parser.parse_args(argv)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads()},
              "store": args.store, "models": {"augmented": args.model, "baseline": args.baseline}}
    runs = {"baseline_plain": (args.baseline, False), "baseline_symmetric": (args.baseline, True),
            "augmented_plain": (args.model, False), "augmented_symmetric": (args.model, True)}
    augmented = {m: json.loads((pathlib.Path(m) / "model.json").read_text())["config"].get("augment", False)
                 for m in (args.model, args.baseline)}
    if not augmented[args.model] or augmented[args.baseline]:
        raise SystemExit("error: --model must be trained with augment: true and --baseline without")
    for name, (model, symmetric) in runs.items():
        report[name] = measure(model, args.store, symmetric)
    base = report["baseline_plain"]
    report["ratios_over_baseline_plain"] = {
        name: {**{split: {k: report[name]["splits"][split][k] / base["splits"][split][k] for k in FIGURES}
                  for split in ("test", "held_out")},
               "test_symmetric_copies_worst": {
                   k: report[name]["test_symmetric_copies"][k]["max"] / base["test_symmetric_copies"][k]["max"]
                   for k in ("von_mises_mape", "stress_nmae_mean")}}
        for name in runs if name != "baseline_plain"}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
