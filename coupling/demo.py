"""``slipstream demo``: the embedded EBSD map solved by the solver and predicted by the shipped surrogate.

The map is ``meshes/sample.ang`` (32 x 32 points, 15 grains, random texture),
treated as a periodic 2-D cell of Al (DAMASK's parameters, the material of the
default campaign and of the shipped model), pulled to 0.5 % along x in 10
increments. The solver's run directory (``solver/``: one-sample store,
ParaView file, PNGs) and the surrogate's (``surrogate/``: PNGs, fields in
``prediction.npz``) sit side by side; ``summary.json`` lists the errors of
the surrogate against the solver, its trust score and both wall times.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "surrogate" / "pretrained" / "default"
LOAD = {"mode": "tension", "direction": [1, 0, 0], "strain": 0.005, "rate": 1.0e-3, "increments": 10}
CONFIG = {
    "microstructure": {"kind": "ebsd", "file": str(ROOT / "meshes" / "sample.ang")},
    "material": {"preset": "Al-DAMASK"},
    "boundary": "periodic",
    "loading": LOAD,
    "output": {"every": 1},
}


def along(voigt: np.ndarray, direction) -> np.ndarray:
    """``d . A . d`` of Voigt tensors ``(..., 6)`` (tensor shear components) along a unit ``d``."""
    d = np.asarray(direction, dtype=float)
    d = d / np.linalg.norm(d)
    w = np.array([d[0] ** 2, d[1] ** 2, d[2] ** 2, 2 * d[1] * d[2], 2 * d[0] * d[2], 2 * d[0] * d[1]])
    return np.asarray(voigt) @ w


def surrogate_pictures(pred: dict, solver_fields: dict | None, out: pathlib.Path, lattice: str,
                       direction=LOAD["direction"], label: str = "surrogate") -> list[pathlib.Path]:
    """PNGs of a prediction, with the solver's curve and von Mises error map beside it when given.

    ``label`` names the prediction in titles and legends (``surrogate``, ``corrected coarse solve``).
    """
    from solver import plots

    pngs = []
    curves_e = [along(pred["strain"].mean(axis=(1, 2)), direction)]
    curves_s = [along(pred["macro_stress"], direction)]
    labels = [f"{label} (voxel mean)"]
    if solver_fields is not None:
        curves_e.append(along(solver_fields["macro_strain"], direction))
        curves_s.append(along(solver_fields["macro_stress"], direction))
        labels.append("solver")
    pngs.append(plots.stress_strain_curve(curves_e, curves_s, out / "stress_strain.png",
                                          xlabel="true (Hencky) strain along the load direction",
                                          ylabel="Cauchy stress along the load direction", labels=labels))
    pngs.append(plots.ipf_map(pred["euler"][0], out / "ipf_initial.png", lattice=lattice,
                              title="IPF-Z, initial orientation"))
    pngs.append(plots.ipf_map(pred["euler"][-1], out / "ipf_final.png", lattice=lattice,
                              title=f"IPF-Z, deformed orientation ({label})"))
    vmax = float(pred["von_mises_stress"][-1].max()) / 1e6
    pngs.append(plots.field_map(pred["von_mises_stress"][-1] / 1e6, out / "von_mises_stress.png",
                                title=f"von Mises stress, last step ({label})", unit="MPa", vmin=0, vmax=vmax))
    pngs.append(plots.field_map(pred["slip"][-1], out / "accumulated_slip.png", cmap="magma",
                                title=f"accumulated slip, last step ({label})", unit="1"))
    if "trust" in pred:
        pngs.append(plots.field_map(pred["trust"][-1], out / "trust.png", cmap="RdYlGn", vmin=0, vmax=1,
                                    title="trust score, last step", unit="probability"))
    pngs.append(plots.pole_figures(pred["euler"][-1].reshape(-1, 3), out / "pole_figures_final.png",
                                   title=f"deformed texture ({label})"))
    if solver_fields is not None:
        err = np.abs(pred["von_mises_stress"][-1] - solver_fields["von_mises_stress"][-1][0]) / 1e6
        pngs.append(plots.field_map(err, out / "von_mises_error.png", cmap="magma", vmin=0,
                                    title=f"|{label} - solver| von Mises stress, last step", unit="MPa"))
    return pngs


def compare_with_solver(ensemble, store_path: str) -> tuple[dict, dict, float]:
    """The solver's one-sample store against the surrogate: (solver curves and von Mises map,
    :func:`surrogate.evaluate.evaluate_split` metrics, the solve's wall time)."""
    import zarr

    from surrogate.data import check_fits, store_info
    from surrogate.evaluate import evaluate_split

    check_fits(ensemble.meta["store"], store_info(store_path))
    group = zarr.open_group(store_path, mode="r")
    fields = {name: np.asarray(group[name][0]) for name in ("macro_stress", "macro_strain", "von_mises_stress")}
    metrics, _ = evaluate_split(ensemble, store_path, [0])
    # the solve alone (the store's wall time), not the mesh set-up, ParaView file and pictures
    return fields, metrics, float(group["wall_time"][0])


def run_demo(comm, out: pathlib.Path, model: pathlib.Path = DEFAULT_MODEL) -> dict:
    """Solve the embedded map, predict it with ``model``, compare; rank 0 returns the summary."""
    import yaml

    from solver.simulate import run_simulation

    out = pathlib.Path(out)
    cfg_path = out / "demo.yaml"
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    comm.Barrier()
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    say(f"Slipstream demo: {CONFIG['microstructure']['file']} (32 x 32 EBSD points, 15 grains) as a periodic "
        f"Al cell, tension to {100 * LOAD['strain']:g} % along x\n\n1) the solver ({comm.size} rank(s))", flush=True)
    t0 = time.perf_counter()
    solver_summary = run_simulation(comm, cfg_path, out / "solver", overwrite=True, quiet=False)
    solver_seconds = time.perf_counter() - t0
    if comm.rank != 0:
        return {}
    summary = {"config": CONFIG, "solver": {"seconds": solver_seconds, "ranks": comm.size,
                                            "store": solver_summary["store"],
                                            "paraview": solver_summary["paraview"],
                                            "pictures": solver_summary["pictures"]}}
    if not (pathlib.Path(model) / "model.json").is_file():
        say(f"\nno surrogate model at {model}: solver only")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    import zarr

    from surrogate.predict import predict_map
    from surrogate.uncertainty import load_model

    say(f"\n2) the surrogate ({model})", flush=True)
    ensemble = load_model(model)
    solver_fields, metrics, solve_seconds = compare_with_solver(ensemble, solver_summary["store"])
    summary["solver"]["solve_seconds"] = solve_seconds
    group = zarr.open_group(solver_summary["store"], mode="r")
    euler0 = np.asarray(group["euler0"][0][0], dtype=float)
    grain_id = np.asarray(group["grain_id"][0][0])
    predict_map(ensemble, euler0, grain_id, LOAD["mode"], LOAD["direction"], LOAD["strain"])  # warm-up
    pred = predict_map(ensemble, euler0, grain_id, LOAD["mode"], LOAD["direction"], LOAD["strain"],
                       rate=LOAD["rate"], steps=LOAD["increments"])
    sur_out = out / "surrogate"
    sur_out.mkdir(exist_ok=True)
    pictures = surrogate_pictures(pred, solver_fields, sur_out, ensemble.meta["store"]["lattice"])
    np.savez_compressed(sur_out / "prediction.npz", **{k: v for k, v in pred.items() if isinstance(v, np.ndarray)})
    summary["surrogate"] = {
        "model": str(model), "seconds": pred["seconds"], "speedup": summary["solver"]["solve_seconds"] / pred["seconds"],
        "trust": pred["sample_trust"], "domain_factor": pred["domain_factor"],
        "errors_against_solver": {"stress_nmae_mean": metrics["stress_nmae_mean"],
                                  "von_mises_mape": metrics["von_mises_mape"],
                                  "misorientation_deg": metrics["misorientation_deg"],
                                  "macro_curve": metrics["macro_curve"],
                                  "slip_system": metrics["slip_system"]},
        "pictures": [str(p) for p in pictures]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    s = summary["surrogate"]
    say(f"predicted in {s['seconds']:.3f} s: {s['speedup']:.0f}x faster than the solver's solve "
        f"({summary['solver']['solve_seconds']:.1f} s on {comm.size} rank(s)); trust {s['trust']:.2f}"
        + (f" (reduced: {pred['domain_reason']})" if pred["domain_reason"] else ""))
    e = s["errors_against_solver"]
    say(f"against the solver: stress nMAE {100 * e['stress_nmae_mean']:.2f} %, von Mises MAPE "
        f"{100 * e['von_mises_mape']:.2f} %, misorientation median {e['misorientation_deg']['median']:.3f} deg, "
        f"mean-stress error {100 * e['macro_curve']['median_relative_error']:.2f} %, dominant slip system "
        f"{100 * e['slip_system']['accuracy']:.0f} % (plain Schmid {100 * e['slip_system']['schmid_accuracy']:.0f} %)")
    say(f"\nsolver: {out / 'solver'}/ (ParaView: {solver_summary['paraview']})\nsurrogate: {sur_out}/\n"
        f"summary: {out / 'summary.json'}")
    return summary
