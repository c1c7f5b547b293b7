"""``slipstream couple correct``: solve on a coarse grid, correct to the fine grid with a learned model.

``slipstream couple correct --model MODEL/ --microstructure FILE --load "tension 0.5% [1,0,0]" --out DIR``

* MODEL is a low-resolution correction (``slipstream train --store FINE
  --coarse COARSE``, :mod:`surrogate.correction`) made for ``k``-times coarser
  solves; FILE and the load string are those of ``slipstream predict``.
* The map is coarsened ``k`` times (:func:`solver.microstructure.coarsen`),
  solved by the solver (serial or ``mpirun``), and at every output step the
  coarse fields plus the fine map go through the correction: fine stress,
  strain, lattice rotation and slip.
* Writes the coarse run (``coarse/``: store, ParaView file, PNGs), the corrected
  fields (``corrected.zarr``), PNGs and ``summary.json`` (trust, timings, which
  path answered).
* ``--verify`` also solves the fine grid and reports the errors of the corrected
  fields and of the plain coarse solve (nearest, bilinear and grain-aware
  upsampling) against it, and the speed-up.
* When the trust score is below ``--trust-threshold``, the fine solve answers,
  and the summary says so.

* ``--in-loop STATE_MODEL`` adds the in-loop mode: at every output step an
  in-loop state correction (``slipstream train --in-loop``,
  :mod:`surrogate.inloop`) corrects the coarse solve's plastic deformation and
  slip resistance, and the solve goes on from the corrected state; MODEL then
  brings the fields of that solve to the fine grid. Without it, the corrected
  fields are not handed back (the post-processing mode).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import time
from typing import Any

from solver.errors import ModelError

from .whatif import _solve, _write_zarr, answer_location, answer_note, check_study_options, parse_load, read_map


def run_correct(comm, model: str, microstructure: str, load_text: str, out: str, *, verify: bool = False,
                trust_threshold: float = 0.5, steps: int = 10, quiet: bool = False,
                in_loop: str | None = None) -> dict[str, Any]:
    """The corrected coarse solve (module docstring). Collective; rank 0 returns the summary.

    Raises:
        ConfigError, ModelError, InputFileError: bad load, a model that is not a
            correction, a map whose size the factor does not divide.
    """
    import numpy as np
    import zarr

    from coupling.demo import surrogate_pictures
    from solver.microstructure import coarsen
    from surrogate.correction import is_correction
    from surrogate.data import sample_targets
    from surrogate.predict import predict_map
    from surrogate.uncertainty import load_model

    check_study_options(steps, trust_threshold)
    load = parse_load(load_text)
    ensemble = load_model(model)
    if not is_correction(ensemble.meta):
        raise ModelError(f"{model} is a surrogate, not a low-resolution correction; use slipstream predict, or train "
                         "one with slipstream train --coarse")
    factor = int(ensemble.meta["coarse"]["factor"])
    if in_loop is not None:  # checked before anything is written
        from solver.config import check_in_loop_model

        check_in_loop_model(in_loop, factor, dict(ensemble.meta["store"]["material"]))
    ms = read_map(microstructure)
    coarse_ms = coarsen(ms, factor)  # refuses a map the factor does not divide, before any solving
    out = pathlib.Path(out)
    say = print if (comm.rank == 0 and not quiet) else (lambda *a, **k: None)
    material = dict(ensemble.meta["store"]["material"])
    euler, grain_id = ms.euler[0], ms.grain_id[0]
    say(f"couple correct: {ms.source or microstructure} ({grain_id.shape[1]} x {grain_id.shape[0]}) solved "
        f"{factor}x coarser ({coarse_ms.cells[0]} x {coarse_ms.cells[1]}), {load_text}"
        + (f", state corrected in the loop by {in_loop}" if in_loop else ""), flush=True)

    t0 = time.perf_counter()
    coarse_run = _solve(comm, ms, load, steps, out / "coarse", material, quiet, coarsen=factor, in_loop=in_loop)
    coarse_seconds = time.perf_counter() - t0
    decision = None
    if comm.rank == 0:
        group = zarr.open_group(coarse_run["store"], mode="r")
        values = sample_targets(group, 0)[0][1:]
        pred = predict_map(ensemble, euler, grain_id, load["mode"], load["direction"], load["strain"],
                           steps=steps, coarse_values=values, coarse_euler=np.asarray(group["euler0"][0][0]))
        pred["coarse_solve_seconds"] = float(group["wall_time"][0])
        decision = pred["sample_trust"] < trust_threshold
        say(f"couple correct: coarse solve {pred['coarse_solve_seconds']:.1f} s, correction {pred['seconds']:.2f} s, "
            f"trust {pred['sample_trust']:.2f}" + (f" ({pred['domain_reason']})" if pred["domain_reason"] else ""),
            flush=True)
    fallback = comm.bcast(decision, root=0)
    fine_run = None
    if fallback or verify:
        say("couple correct: " + (f"trust below the threshold {trust_threshold:g}: the fine solve answers"
                                  if fallback else "--verify: the fine solve checks the correction"), flush=True)
        fine_run = _solve(comm, ms, load, steps, out / "fine", material, quiet)
    if comm.rank != 0:
        return {}

    summary: dict[str, Any] = {
        "model": str(model), "microstructure": str(microstructure), "load": load, "factor": factor,
        "in_loop": str(in_loop) if in_loop else None,
        "answer_from": "fine solve (fallback)" if fallback else "corrected coarse solve",
        "trust": pred["sample_trust"], "trust_threshold": trust_threshold, "domain_factor": pred["domain_factor"],
        "domain_reason": pred["domain_reason"], "coarse_solve_seconds": pred["coarse_solve_seconds"],
        "correction_seconds": pred["seconds"], "coarse_run": str(out / "coarse"), "coarse_wall_seconds": coarse_seconds,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    fine_fields = None
    if fine_run is not None:
        fine_fields, metrics, fine_seconds = compare_with_fine(ensemble, fine_run["store"], coarse_run["store"])
        cost = pred["coarse_solve_seconds"] + pred["seconds"]
        summary["fine_solve_seconds"] = fine_seconds
        summary["speedup"] = fine_seconds / cost
        summary["errors_against_fine_solve"] = metrics
        c, n, b = metrics["corrected"], metrics["coarse_nearest"], metrics["coarse_grain"]
        say(f"couple correct: against the fine solve, von Mises MAPE corrected {100 * c['von_mises_mape']:.2f} %, "
            f"plain coarse {100 * n['von_mises_mape']:.2f} % (nearest) / {100 * b['von_mises_mape']:.2f} % "
            f"(grain-aware upsampling); "
            f"stress nMAE {100 * c['stress_nmae_mean']:.2f} % vs {100 * n['stress_nmae_mean']:.2f} %; fine solve "
            f"{fine_seconds:.1f} s = {summary['speedup']:.1f}x coarse solve + correction")
    out.mkdir(parents=True, exist_ok=True)
    lattice = ensemble.meta["store"]["lattice"]
    pictures = surrogate_pictures(pred, fine_fields, out, lattice, load["direction"], label="corrected")
    from solver import plots

    pictures.append(plots.pole_figures(euler.reshape(-1, 3), out / "pole_figures_initial.png", title="initial texture"))
    _write_zarr(out / "corrected.zarr", pred, {"model": str(model), "load": load, "microstructure": str(microstructure),
                                               "factor": factor, "trust": pred["sample_trust"],
                                               "coarse_run": str(out / "coarse")})
    summary["pictures"] = [str(p) for p in pictures]
    summary["fields"] = str(out / "corrected.zarr")
    summary["answer"] = answer_location(out, "fine" if fallback else None)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    say(f"couple correct: answer from the {summary['answer_from']}"
        f"{answer_note(out, 'fine' if fallback else None, 'correction')}; pictures, corrected.zarr and summary.json "
        f"in {out}/")
    return summary


_KEYS = ("stress_nmae_mean", "von_mises_mape", "misorientation_deg", "macro_curve", "boundary", "interior")


def compare_with_fine(ensemble, fine_store: str, coarse_store: str) -> tuple[dict, dict, float]:
    """A fine solve's one-sample store against the corrected and the plain coarse solve.

    Returns:
        (the fine solve's curves and von Mises map, ``{corrected, coarse_nearest,
        coarse_bilinear, coarse_grain}`` metrics of :func:`surrogate.evaluate.evaluate_split`,
        the fine solve's wall time).
    """
    import numpy as np
    import zarr

    from surrogate.correction import UPSAMPLING, coarse_baseline
    from surrogate.evaluate import evaluate_split

    group = zarr.open_group(fine_store, mode="r")
    fields = {name: np.asarray(group[name][0]) for name in ("macro_stress", "macro_strain", "von_mises_stress")}
    metrics = {"corrected": evaluate_split(ensemble, fine_store, [0], coarse=coarse_store)[0]}
    tol = float(ensemble.meta["config"]["trust_tolerance"])
    for up in UPSAMPLING:
        metrics[f"coarse_{up}"] = evaluate_split(None, fine_store, [0], coarse=coarse_store, upsampling=up,
                                                 predictor=coarse_baseline, tolerance=tol)[0]
    metrics = {k: {key: v[key] for key in _KEYS} for k, v in metrics.items()}
    return fields, metrics, float(group["wall_time"][0])
