"""``slipstream predict``: an engineer's what-if study with the surrogate, the solver as fallback and check.

``slipstream predict --model MODEL/ --microstructure FILE --load "tension 0.05 [1,0,0]" --out DIR``

* FILE: an EBSD map (``.ang``, ``.ctf``), a voxel grid (``.npz``) or a sample of
  a campaign store (``store.zarr:INDEX``); 2-D maps (``z = 1``) of any size
  (the FNO is resolution-agnostic).
* The load string: ``MODE STRAIN [DIRECTION]`` — a mode of
  :data:`solver.loading.MODES` (not ``deformation_gradient``), the final strain
  magnitude (``0.005`` or ``0.5%``), the load axis (default ``[1,0,0]``).
* Writes PNGs (IPF maps and pole figures before and after, von Mises stress,
  slip and trust maps, stress-strain curve), ``prediction.zarr`` (the fields,
  with units and provenance) and ``summary.json`` (trust score, the path that
  produced the answer, timings).
* ``--verify`` also runs the solver and reports the surrogate's errors against it.
* When the trust score is below ``--trust-threshold`` (default 0.5), the
  solver's answer replaces the surrogate's, and the summary says so.
"""

from __future__ import annotations

import datetime
import json
import math
import pathlib
import re
import time
from typing import Any

import numpy as np

from solver.errors import ConfigError, InputFileError
from solver.loading import MODES

_LOAD_RE = re.compile(r"^\s*(?P<mode>[a-z_]+)\s+(?P<strain>[-+0-9.eE]+%?)\s*(?P<dir>\[[^\]]*\])?\s*$")


def parse_load(text: str) -> dict[str, Any]:
    """``"tension 0.05 [1,0,0]"`` -> ``{"mode": "tension", "strain": 0.05, "direction": [1.0, 0.0, 0.0]}``.

    Raises:
        ConfigError: anything else, naming what is wrong.
    """
    m = _LOAD_RE.match(text or "")
    if not m:
        raise ConfigError(f"load {text!r} is not 'MODE STRAIN [x,y,z]', e.g. 'tension 0.005 [1,0,0]'")
    mode = m["mode"]
    if mode not in MODES or mode == "deformation_gradient":
        raise ConfigError(f"load mode '{mode}' is unknown or not predictable; use one of "
                          f"{', '.join(x for x in MODES if x != 'deformation_gradient')}")
    raw = m["strain"]
    try:
        strain = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"load strain {raw!r} is not a number") from None
    if not (math.isfinite(strain) and strain > 0):
        raise ConfigError(f"load strain must be a positive magnitude, got {raw!r}")
    direction = [1.0, 0.0, 0.0]
    if m["dir"]:
        try:
            direction = [float(v) for v in m["dir"].strip("[]").replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"load direction {m['dir']!r} is not three numbers") from None
        if len(direction) != 3 or not np.all(np.isfinite(direction)) or np.linalg.norm(direction) == 0:
            raise ConfigError(f"load direction {m['dir']!r} must be three finite numbers, not all zero")
    return {"mode": mode, "strain": strain, "direction": direction}


def check_study_options(steps: int, trust_threshold: float | None = None) -> None:
    """``--steps`` and ``--trust-threshold`` of ``predict``, ``couple correct`` and ``couple forecast``."""
    if trust_threshold is not None and not 0.0 <= trust_threshold <= 1.0:
        raise ConfigError(f"--trust-threshold must be in [0, 1], got {trust_threshold}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")


def answer_location(out: pathlib.Path, fallback_dir: str | None) -> str:
    """Where a study's answer lies: ``out`` itself, or the run that answered in its place (``out/fallback_dir``)."""
    return str(out / fallback_dir) if fallback_dir else str(out)


def answer_note(out: pathlib.Path, fallback_dir: str | None, model_label: str) -> str:
    """The words of a study's last line that point a fallback's reader at the answering run."""
    if not fallback_dir:
        return ""
    return (f" (its pictures, ParaView file and store are in {out / fallback_dir}/; the {model_label}'s, "
            "kept for comparison, are below)")


def read_map(spec: str):
    """The microstructure of ``spec`` (a file or ``store.zarr:INDEX``) as a :class:`solver.microstructure.Microstructure`.

    Raises:
        InputFileError, StoreError: missing or corrupt file, unknown sample, not a 2-D map.
    """
    from solver.microstructure import Microstructure

    path, _, index = str(spec).rpartition(":") if re.search(r"\.zarr/?:\d+$", str(spec)) else (str(spec), "", "")
    if index:
        from solver import store as st

        group = st.open_store(path)
        i = int(index)
        if not 0 <= i < int(group.attrs["n_samples"]):
            raise InputFileError(f"{path}: no sample {i} (it has {group.attrs['n_samples']})")
        if int(group["status"][i]) != st.DONE:
            raise InputFileError(f"{path}: sample {i} is not done")
        cfg = group.attrs.get("config", {}).get("microstructure", {})
        euler = np.asarray(group["euler0"][i], dtype=float)
        nz, ny, nx = euler.shape[:3]
        size = cfg.get("size") or [1e-4, 1e-4 * ny / nx, 1e-4 * nz / nx]
        ms = Microstructure(euler=euler, grain_id=np.asarray(group["grain_id"][i]), size=size,
                            periodic=bool(cfg.get("periodic", True)), source=f"{path} sample {i}")
    else:
        from solver.readers import read_microstructure

        ms = read_microstructure(path)
    if ms.shape[0] != 1:
        raise InputFileError(f"{spec}: a 3-D grid ({ms.shape[0]} layers); the surrogate predicts 2-D maps")
    return ms


def _write_zarr(path: pathlib.Path, pred: dict, meta: dict) -> None:
    import zarr

    from solver.store import provenance

    units = {"stress": "Pa", "strain": "1", "euler": "rad", "slip": "1", "von_mises_stress": "Pa", "trust": "1",
             "macro_stress": "Pa", "applied_strain": "1"}
    dims = {"stress": ("step", "y", "x", "voigt"), "strain": ("step", "y", "x", "voigt"),
            "euler": ("step", "y", "x", "euler_angle"), "slip": ("step", "y", "x"),
            "von_mises_stress": ("step", "y", "x"), "trust": ("step", "y", "x"),
            "macro_stress": ("step", "voigt"), "applied_strain": ("step",)}
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, unit in units.items():
        if name not in pred:  # e.g. a forecast has no trust map
            continue
        arr = np.asarray(pred[name], dtype=np.float32 if pred[name].ndim > 2 else np.float64)
        group.create_array(name, data=arr, dimension_names=dims[name], attributes={"units": unit})
    group.attrs.update({**meta, "provenance": provenance(),
                        "conventions": "Voigt 11, 22, 33, 23, 13, 12 (tensor components); Bunge ZXZ passive; "
                                       "Cauchy stress, Hencky strain; step 0 is the unloaded state"})


def _solve(comm, ms, load: dict, steps: int, out: pathlib.Path, material: dict, quiet: bool,
           coarsen: int = 1, constitutive: str = "crystal_plasticity", in_loop: str | None = None) -> dict:
    """Run the solver on the map (periodic cell), into ``out``; returns the summary (rank 0).

    ``coarsen``: solve on a grid that many times coarser (the coarse solve of a correction);
    ``constitutive``: ``elastic`` or ``frozen_hardening`` for the incomplete physics of a hybrid forecast;
    ``in_loop``: an in-loop state correction that corrects the coarse solve's state at every step. The map is
    written beside ``out`` (``out/../microstructure.npz``), so that the runs of one study
    (fine, coarse, physics) name the same file and their stores pair up.
    """
    import yaml

    from solver.readers import write_microstructure
    from solver.simulate import run_simulation

    grid = out.parent / "microstructure.npz"
    cfg_path = out / "solver.yaml"
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_microstructure(grid, ms)
        cfg = {"microstructure": {"kind": "grid", "file": str(grid.resolve()), **({"coarsen": coarsen} if coarsen > 1 else {})},
               "material": {k: v for k, v in material.items() if k not in ("units",)},
               "boundary": "periodic",
               "loading": {"mode": load["mode"], "direction": load["direction"], "strain": load["strain"],
                           "rate": load.get("rate", 1.0e-3), "increments": steps},
               "output": {"every": 1}, "solver": {"constitutive": constitutive,
                                                   **({"correction_in_loop": str(pathlib.Path(in_loop).resolve())}
                                                      if in_loop else {})}}
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    comm.Barrier()
    return run_simulation(comm, cfg_path, out, overwrite=True, quiet=quiet)


def run_predict(comm, model: str, microstructure: str, load_text: str, out: str, *, verify: bool = False,
                trust_threshold: float = 0.5, steps: int = 10, quiet: bool = False) -> dict:
    """The what-if study (see the module docstring). Rank 0 returns the summary."""
    from coupling.demo import surrogate_pictures
    from surrogate.predict import predict_map
    from surrogate.uncertainty import load_model

    check_study_options(steps, trust_threshold)
    load = parse_load(load_text)
    ensemble = load_model(model)
    ms = read_map(microstructure)
    out = pathlib.Path(out)
    say = print if (comm.rank == 0 and not quiet) else (lambda *a, **k: None)
    euler, grain_id = ms.euler[0], ms.grain_id[0]
    pred = predict_map(ensemble, euler, grain_id, load["mode"], load["direction"], load["strain"], steps=steps)
    path = "surrogate"
    say(f"predict: {ms.source or microstructure} ({grain_id.shape[1]} x {grain_id.shape[0]}), {load_text}: "
        f"surrogate in {pred['seconds']:.2f} s, trust {pred['sample_trust']:.2f}"
        + (f" ({pred['domain_reason']})" if pred["domain_reason"] else ""), flush=True)
    fallback = pred["sample_trust"] < trust_threshold
    solver_summary = None
    if fallback or verify:
        why = (f"trust {pred['sample_trust']:.2f} below the threshold {trust_threshold:g}: the solver answers"
               if fallback else "--verify: the solver checks the surrogate")
        say(f"predict: {why}", flush=True)
        material = dict(ensemble.meta["store"]["material"])
        t0 = time.perf_counter()
        solver_summary = _solve(comm, ms, load, steps, out / "solver", material, quiet)
        solver_seconds = time.perf_counter() - t0
        if fallback:
            path = "solver (fallback)"
    if comm.rank != 0:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"model": str(model), "microstructure": str(microstructure), "load": load,
                               "answer_from": path, "trust": pred["sample_trust"], "trust_threshold": trust_threshold,
                               "domain_factor": pred["domain_factor"], "domain_reason": pred["domain_reason"],
                               "surrogate_seconds": pred["seconds"],
                               "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    solver_fields = None
    if solver_summary is not None:
        from coupling.demo import compare_with_solver

        solver_fields, metrics, solve_seconds = compare_with_solver(ensemble, solver_summary["store"])
        summary["solver"] = {"seconds": solver_seconds, "solve_seconds": solve_seconds,
                             "speedup_of_surrogate": solve_seconds / pred["seconds"], "run": str(out / "solver")}
        summary["errors_against_solver"] = {k: metrics[k] for k in ("stress_nmae_mean", "von_mises_mape",
                                                                    "misorientation_deg", "macro_curve",
                                                                    "slip_system")}
        e = summary["errors_against_solver"]
        say(f"predict: surrogate vs solver: stress nMAE {100 * e['stress_nmae_mean']:.2f} %, von Mises MAPE "
            f"{100 * e['von_mises_mape']:.2f} %, misorientation median {e['misorientation_deg']['median']:.3f} deg; "
            f"solver {solve_seconds:.1f} s = {summary['solver']['speedup_of_surrogate']:.0f}x the surrogate")
    lattice = ensemble.meta["store"]["lattice"]
    pictures = surrogate_pictures(pred, solver_fields, out, lattice, load["direction"])
    from solver import plots

    pictures.append(plots.pole_figures(euler.reshape(-1, 3), out / "pole_figures_initial.png", title="initial texture"))
    _write_zarr(out / "prediction.zarr", pred, {"model": str(model), "load": load, "microstructure": str(microstructure),
                                                "trust": pred["sample_trust"]})
    summary["pictures"] = [str(p) for p in pictures]
    summary["fields"] = str(out / "prediction.zarr")
    summary["answer"] = answer_location(out, "solver" if fallback else None)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    say(f"predict: answer from the {path}{answer_note(out, 'solver' if fallback else None, 'surrogate')}; "
        f"pictures, prediction.zarr and summary.json in {out}/")
    return summary
