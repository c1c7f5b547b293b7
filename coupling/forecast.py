"""``slipstream couple forecast``: a hybrid physics-ML forecast of a map's fields over load increments.

``slipstream couple forecast --model MODEL/ --microstructure FILE --load "tension 1% [1,0,0]" --steps 20 --out DIR``

* MODEL is a forecast (``slipstream train --forecast hybrid --store CP --physics
  PARTNER``, :mod:`surrogate.forecast`); FILE and the load string are those of
  ``slipstream predict``. The load is applied in ``--steps`` equal increments;
  more steps than the model's training horizon roll the forecast out beyond it.
* For a hybrid model the incomplete physics it was trained with (the elastic
  limit of the material, or its crystal plasticity with frozen hardening) is
  solved on the map by the solver (serial or ``mpirun``), then the learned
  residual is added step by step on rank 0. A ``neural`` model needs no solve.
* Writes PNGs (IPF maps, von Mises stress and slip maps, stress-strain curve,
  pole figures), ``forecast.zarr`` and ``summary.json``.
* ``--verify`` also runs the crystal-plasticity solver and reports, per step,
  the relative errors of the forecast and of the incomplete physics alone.
* The trust (:func:`surrogate.forecast.forecast_trust`: the validation hit rate
  at this many steps times the load's and map's domain factor) is reported;
  below ``--trust-threshold`` the crystal-plasticity solver answers (``solver/``)
  and ``summary.json`` says so (``answer_from``).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import time
from typing import Any

from .whatif import _solve, _write_zarr, answer_location, answer_note, check_study_options, parse_load, read_map


def run_forecast(comm, model: str, microstructure: str, load_text: str, out: str, *, steps: int = 10,
                 verify: bool = False, trust_threshold: float = 0.5, quiet: bool = False) -> dict[str, Any]:
    """The forecast (module docstring). Collective; rank 0 returns the summary."""
    import numpy as np
    import torch
    import zarr

    from coupling.demo import surrogate_pictures
    from surrogate import features
    from surrogate.data import material_stiffness, sample_targets
    from surrogate.forecast import forecast_trust, load_forecaster, step_condition
    from surrogate.predict import state_fields

    check_study_options(steps, trust_threshold)
    load = parse_load(load_text)
    forecaster, meta = load_forecaster(model)
    ms = read_map(microstructure)
    inputs = features.sample_inputs(ms.euler[0], ms.grain_id[0], load["mode"], load["direction"],
                                    meta["store"]["lattice"], material_stiffness(dict(meta["store"]["material"])))
    # the trust depends on the model's validation, the load and the map only: known before any solve
    trust = forecast_trust(meta, steps, load["mode"], load["strain"], features.microstructure_summary(inputs["fields"]))
    fallback = comm.bcast(trust["trust"] < trust_threshold, root=0)  # one decision for all ranks
    out = pathlib.Path(out)
    say = print if (comm.rank == 0 and not quiet) else (lambda *a, **k: None)
    material = dict(meta["store"]["material"])
    euler, grain_id = ms.euler[0], ms.grain_id[0]
    say(f"couple forecast: {ms.source or microstructure} ({grain_id.shape[1]} x {grain_id.shape[0]}), {load_text} in "
        f"{steps} steps ({meta['kind']} model, trained over {meta['horizon']} steps), trust {trust['trust']:.2f}"
        + (f" ({trust['reason']})" if trust["reason"] else ""), flush=True)
    if fallback:
        say(f"couple forecast: trust below the threshold {trust_threshold:g}: the crystal-plasticity solver answers "
            "(in solver/); the forecast is kept beside it for comparison", flush=True)
    physics_run, physics = None, None
    # models trained before the frozen-hardening physics existed have no physics_constitutive: elastic
    physics_name = (meta.get("physics_constitutive") or "elastic") if meta["kind"] == "hybrid" else None
    t0 = time.perf_counter()
    if meta["kind"] == "hybrid":
        physics_run = _solve(comm, ms, load, steps, out / "physics", material, quiet, constitutive=physics_name)
    physics_seconds = time.perf_counter() - t0
    truth_run = _solve(comm, ms, load, steps, out / "solver", material, quiet) if (verify or fallback) else None
    if comm.rank != 0:
        return {}
    t1 = time.perf_counter()
    shape = (1, steps + 1, features.N_TARGETS) + grain_id.shape
    if physics_run is not None:
        physics = torch.from_numpy(sample_targets(zarr.open_group(physics_run["store"], mode="r"), 0)[0])[None]
    else:
        physics = torch.zeros(shape)
    condition = torch.from_numpy(step_condition(load["mode"], load["direction"], load["strain"] / steps,
                                                load.get("rate", 1.0e-3)))[None]
    with torch.no_grad():
        states, residuals = forecaster.rollout(physics.float(), torch.from_numpy(inputs["fields"])[None], condition,
                                               steps)
    rollout_seconds = time.perf_counter() - t1
    values = states[0, 1:].double().numpy()
    pred = state_fields(values, euler)
    pred["applied_strain"] = np.linspace(0.0, load["strain"], steps + 1)
    summary: dict[str, Any] = {
        "model": str(model), "kind": meta["kind"], "microstructure": str(microstructure), "load": load, "steps": steps,
        "training_horizon": meta["horizon"], "beyond_horizon": steps > meta["horizon"],
        "answer_from": "solver (fallback)" if fallback else f"{meta['kind']} forecast",
        "trust": trust["trust"], "trust_threshold": trust_threshold, "validation_hit_rate": trust["hit_rate"],
        "domain_factor": trust["domain_factor"], "domain_reason": trust["reason"],
        "physics": physics_name, "physics_seconds": physics_seconds if physics_run is not None else 0.0, "rollout_seconds": rollout_seconds,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if meta["kind"] == "hybrid":
        inc = states[0, 1:] - states[0, :-1]
        summary["residual_share"] = [float(residuals[0, n].norm() / inc[n].norm().clamp_min(1e-30))
                                     for n in range(steps)]
    solver_fields = None
    if truth_run is not None:
        g = zarr.open_group(truth_run["store"], mode="r")
        truth = sample_targets(g, 0)[0]
        solver_fields = {k: np.asarray(g[k][0]) for k in ("macro_stress", "macro_strain", "von_mises_stress")}

        def errors(x):
            return [{name: float(np.linalg.norm(x[n, sl] - truth[n, sl]) / max(np.linalg.norm(truth[n, sl]), 1e-30))
                     for name, sl in features.TARGETS.items()} for n in range(1, steps + 1)]

        summary["verify"] = {"solver_seconds": float(g["wall_time"][0]),
                             "forecast": errors(states[0].double().numpy()),
                             "physics_alone": errors(physics[0].double().numpy()) if physics_run is not None else None}
        e = summary["verify"]
        say(f"couple forecast: stress error at step {steps} against the solver: forecast "
            f"{100 * e['forecast'][-1]['stress']:.1f} %"
            + (f", {physics_name} physics alone {100 * e['physics_alone'][-1]['stress']:.1f} %" if physics_run else ""))
    out.mkdir(parents=True, exist_ok=True)
    pictures = surrogate_pictures(pred, solver_fields, out, meta["store"]["lattice"], load["direction"],
                                  label=f"{meta['kind']} forecast")
    _write_zarr(out / "forecast.zarr", pred, {"model": str(model), "load": load, "microstructure": str(microstructure),
                                              "kind": meta["kind"], "steps": steps})
    summary["pictures"] = [str(p) for p in pictures]
    summary["fields"] = str(out / "forecast.zarr")
    summary["answer"] = answer_location(out, "solver" if fallback else None)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    say(f"couple forecast: rollout {rollout_seconds:.2f} s" + (f" after the {physics_name} solve ({physics_seconds:.1f} s)"
                                                               if physics_run else "")
        + f"; answer from the {summary['answer_from']}{answer_note(out, 'solver' if fallback else None, 'forecast')}"
        + f"; pictures, forecast.zarr and summary.json in {out}/")
    return summary
