"""Choose an in-loop state correction by the error of solves with it in the loop.

Training (:func:`surrogate.inloop.train_state_correction`) scores a model one
step at a time, on states the solver reached without it. What matters is the
solve with the model in its loop, where corrections compound. ``slipstream
train --in-loop ... --rollout-select N`` therefore ends with this selection:
the candidate epochs kept in ``MODEL/candidates/`` and the untrained model (no
correction: the plain coarse solve) each solve ``N`` validation samples of the
campaign coarse, the candidate in the loop; the one whose stress is closest to
the fine solve's block means (relative L2 over all loaded steps) becomes
``weights.pt``. When every trained candidate makes the solves worse, the
untrained one wins and the model hands back the solver's own state.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Any


def _coarse_spec(meta: dict, correction: str | None):
    from solver import store as st
    from solver.campaign import parse_campaign

    fine = meta["fine_store"]
    cfg = json.loads(json.dumps(st.open_store(fine, "r").attrs["config"]))
    cfg.setdefault("microstructure", {})["coarsen"] = int(meta["factor"]) * int(meta.get("fine_coarsen", 1))
    cfg.setdefault("solver", {}).pop("correction_in_loop", None)
    if correction is not None:
        cfg["solver"]["correction_in_loop"] = correction
    return parse_campaign(cfg, pathlib.Path(fine).parent)


def rollout_error(meta: dict, correction: str | None, samples: list[int]) -> float:
    """Relative L2 of the block-level stress of coarse solves of ``samples`` with ``correction`` in the loop
    (``None``: without) against the fine store's. Serial (``COMM_SELF``)."""
    import numpy as np
    from mpi4py import MPI

    from solver import store as st
    from solver.campaign import sample_config
    from solver.config import prepare_simulation
    from solver.simulate import solve_sample
    from surrogate.inloop import block_stress_error

    spec = _coarse_spec(meta, correction)
    fine = st.open_store(meta["fine_store"], "r")
    err = ref = 0.0
    for i in samples:
        fields, _ = solve_sample(MPI.COMM_SELF, prepare_simulation(sample_config(spec, i), spec.base_dir))
        e, r = block_stress_error(fine, i, fields["stress"], int(meta["factor"]))
        err, ref = err + e, ref + r
    return float(np.sqrt(err / ref))


def select_by_rollout(model: str | pathlib.Path, n_samples: int, quiet: bool = False) -> dict[str, Any]:
    """Replace ``MODEL/weights.pt`` by the candidate with the lowest rollout error (module docstring).

    Returns:
        ``{"samples": [...], "errors": {epoch: error}, "selected_epoch": epoch}`` (also in ``model.json``
        as ``rollout_selection``; epoch 0 is the untrained model).

    Raises:
        ConfigError: ``n_samples`` not positive, or a model without candidates.
    """
    from solver.errors import ConfigError
    from surrogate.data import SplitSpec, make_splits

    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"--rollout-select must be a positive number of samples, got {n_samples!r}")
    model = pathlib.Path(model)
    meta = json.loads((model / "model.json").read_text())
    files = sorted((model / "candidates").glob("epoch_*.pt"))
    if not files:
        raise ConfigError(f"{model} has no candidates/ (train with the config option candidates: K)")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    samples = make_splits(meta["fine_store"], SplitSpec.from_config(meta["config"]["split"]))["validation"]
    samples = samples[:n_samples]
    errors = {}
    with tempfile.TemporaryDirectory(prefix="slipstream-inloop-") as tmp:
        shutil.copy(model / "model.json", pathlib.Path(tmp) / "model.json")
        for f in files:
            epoch = int(f.stem.split("_")[1])
            if epoch == 0:  # the untrained model hands back the solver's own state: the plain coarse solve
                errors[0] = rollout_error(meta, None, samples)
            else:
                shutil.copy(f, pathlib.Path(tmp) / "weights.pt")
                errors[epoch] = rollout_error(meta, tmp, samples)
            say(f"train --in-loop: rollout selection on {len(samples)} validation samples: "
                + (f"epoch {epoch}" if epoch else "no correction") + f", block stress error {100 * errors[epoch]:.2f} %")
    best = min(errors, key=errors.get)
    shutil.copy(model / "candidates" / f"epoch_{best:04d}.pt", model / "weights.pt")
    selection = {"samples": samples, "errors": {str(k): v for k, v in errors.items()}, "selected_epoch": best,
                 "one_step_selected_epoch": meta.get("selected_epoch")}
    meta["rollout_selection"] = selection
    meta["selected_epoch"] = best
    (model / "model.json").write_text(json.dumps(meta, indent=1))
    say("train --in-loop: selected by rollout: " + ("no correction (every trained epoch made the solves worse)"
                                                     if best == 0 else f"epoch {best}"))
    return selection
