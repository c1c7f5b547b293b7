"""In-loop low-resolution correction against the open-loop (post-processing) one and the plain coarse solve.

Measured in one run, on the test and held-out samples of the default campaign
(the in-loop model's split, the same as the post-processing correction's):

1. Block level (the coarse grid): how far the coarse solve's state and stress
   are from the fine solve's restricted to the coarse grid (block means), for
   the plain 4x coarser solve and for the 4x coarser solve with the state
   corrected in the loop. RMS of ``Fp``, RMS slip resistance (MPa), relative
   L2 of the stress, von Mises MAPE.
2. Fine level (32 x 32): the fields of each coarse solve brought to the fine
   grid by grain-aware upsampling, and by the post-processing correction
   (``correct4``), against the fine solve (stress nMAE, von Mises MAPE,
   misorientation), beside the plain 2x coarser solve.
3. Wall time, same samples, serial: the 4x coarser solve without and with the
   in-loop correction, and the fine solve.

Usage (stores of the campaign made after the plastic deformation was stored)::

    slipstream campaign examples/campaign_default.yaml --store data/default.zarr
    slipstream campaign examples/campaign_default.yaml --coarsen 4 --store data/coarse4.zarr
    slipstream campaign examples/campaign_default.yaml --coarsen 4 \\
        --correct-in-loop surrogate/pretrained/inloop4 --store data/inloop4.zarr
    python benchmarks/coupling_inloop.py
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

KEYS = ("stress_nmae_mean", "von_mises_mape", "misorientation_deg", "macro_curve", "boundary", "interior")


def block_errors(fine: str, coarse: str, samples: list[int], factor: int) -> dict[str, float]:
    """Coarse-grid errors of a coarse store against the fine store restricted to it (loaded steps)."""
    import numpy as np

    from solver import store as st
    from surrogate.correction import restrict
    from surrogate.inloop import block_stress_error, restricted_fine

    f, c = st.open_store(fine, "r"), st.open_store(coarse, "r")
    sq = {"fp": [], "xi": [], "stress": [], "stress_ref": [], "vm": []}
    for i in samples:
        def coarse_of(name):
            return np.asarray(c[name][i][1:, 0], dtype=float)

        sq["fp"].append(np.mean((restricted_fine(f, i, "plastic_deformation", factor)
                                 - coarse_of("plastic_deformation")) ** 2))
        sq["xi"].append(np.mean((restricted_fine(f, i, "slip_resistance", factor) - coarse_of("slip_resistance")) ** 2))
        err, ref = block_stress_error(f, i, c["stress"][i], factor)
        sq["stress"].append(err)
        sq["stress_ref"].append(ref)
        vm_f = restrict(np.asarray(f["von_mises_stress"][i][1:, 0], dtype=float), factor)
        sq["vm"].append(np.mean(np.abs(np.asarray(c["von_mises_stress"][i][1:, 0]) - vm_f) / vm_f))
    return {"fp_rms": float(np.sqrt(np.mean(sq["fp"]))), "slip_resistance_rms_mpa": float(np.sqrt(np.mean(sq["xi"])) / 1e6),
            "stress_rel_l2": float(np.sqrt(np.sum(sq["stress"]) / np.sum(sq["stress_ref"]))),
            "von_mises_mape_of_block_means": float(np.mean(sq["vm"]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fine", default=str(ROOT / "data" / "default.zarr"))
    ap.add_argument("--coarse4", default=str(ROOT / "data" / "coarse4.zarr"))
    ap.add_argument("--inloop4", default=str(ROOT / "data" / "inloop4.zarr"),
                    help="the 4x coarser campaign with the state corrected in the loop (campaign --correct-in-loop)")
    ap.add_argument("--coarse2", default=str(ROOT / "data" / "coarse2.zarr"))
    ap.add_argument("--state-model", default=str(ROOT / "surrogate" / "pretrained" / "inloop4"))
    ap.add_argument("--model", default=str(ROOT / "surrogate" / "pretrained" / "correct4"))
    ap.add_argument("--timed-samples", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "coupling_inloop.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from solver import store as st
    from surrogate.correction import coarse_baseline, done_in_both
    from surrogate.data import SplitSpec, make_splits
    from surrogate.evaluate import evaluate_split
    from surrogate.inloop import load_state_correction
    from surrogate.uncertainty import load_model

    for path in (args.fine, args.coarse4, args.inloop4):
        if "plastic_deformation" not in st.open_store(path, "r"):
            print(f"{path} has no plastic_deformation: rerun its campaign (see the usage above)")
            return 1
    _, meta = load_state_correction(args.state_model)
    used = st.open_store(args.inloop4, "r").attrs["config"]["solver"].get("correction_in_loop")
    ens = load_model(args.model)
    tol = float(ens.meta["config"]["trust_tolerance"])
    splits = make_splits(args.fine, SplitSpec.from_config(meta["config"]["split"]))
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch_threads": torch.get_num_threads()},
              "state_model": args.state_model, "inloop_store_model": used, "post_model": args.model,
              "stores": {"fine": args.fine, "coarse4": args.coarse4, "inloop4": args.inloop4, "coarse2": args.coarse2},
              "state_model_training": {"coarse_stores": meta["coarse_stores"], "validation": meta["validation"]},
              "splits": {}}
    for split in ("test", "held_out"):
        samples = done_in_both(done_in_both(done_in_both(splits[split], args.coarse4), args.inloop4), args.coarse2)
        if not samples:
            continue
        t0 = time.perf_counter()
        block = {"plain_4x": block_errors(args.fine, args.coarse4, samples, meta["factor"]),
                 "in_loop_4x": block_errors(args.fine, args.inloop4, samples, meta["factor"])}
        rows = {"plain_4x_grain": evaluate_split(None, args.fine, samples, coarse=args.coarse4,
                                                 predictor=coarse_baseline, tolerance=tol)[0],
                "in_loop_4x_grain": evaluate_split(None, args.fine, samples, coarse=args.inloop4,
                                                   predictor=coarse_baseline, tolerance=tol)[0],
                "corrected_4x": evaluate_split(ens, args.fine, samples, coarse=args.coarse4)[0],
                "in_loop_4x_corrected": evaluate_split(ens, args.fine, samples, coarse=args.inloop4)[0],
                "plain_2x_grain": evaluate_split(None, args.fine, samples, coarse=args.coarse2,
                                                 predictor=coarse_baseline, tolerance=tol)[0]}
        report["splits"][split] = {"samples": len(samples), "block_level": block,
                                   "fine_level": {n: {k: m[k] for k in KEYS} for n, m in rows.items()}}
        print(f"[{split}] {len(samples)} samples ({time.perf_counter() - t0:.0f} s)")
        for name, b in block.items():
            print(f"  block level {name:12s} Fp RMS {b['fp_rms']:.2e}  slip resistance RMS "
                  f"{b['slip_resistance_rms_mpa']:.3f} MPa  stress rel L2 {100 * b['stress_rel_l2']:5.2f} %  "
                  f"von Mises MAPE {100 * b['von_mises_mape_of_block_means']:5.2f} %")
        for name, m in rows.items():
            print(f"  fine level {name:22s} stress nMAE {100 * m['stress_nmae_mean']:5.2f} %  von Mises MAPE "
                  f"{100 * m['von_mises_mape']:5.2f} %  misorientation median {m['misorientation_deg']['median']:.3f} deg",
                  flush=True)

    timed = splits["test"][: args.timed_samples]
    times = solve_times(args.fine, timed, {
        "fine": {}, "coarse_4x": {"microstructure": {"coarsen": 4}},
        "coarse_4x_in_loop": {"microstructure": {"coarsen": 4}, "solver": {"correction_in_loop": args.state_model}}})
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    report["speed"] = {"samples": timed, "seconds_per_sample": mean, "all_solve_seconds": times,
                       "in_loop_overhead": mean["coarse_4x_in_loop"] / mean["coarse_4x"],
                       "speedup_over_fine": {k: mean["fine"] / v for k, v in mean.items() if k != "fine"}}
    print(f"speed per sample: fine {mean['fine']:.1f} s, 4x coarser {mean['coarse_4x']:.2f} s, with the state "
          f"corrected in the loop {mean['coarse_4x_in_loop']:.2f} s")
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
