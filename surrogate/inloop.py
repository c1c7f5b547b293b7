"""In-loop low-resolution correction: a learned correction of the coarse solve's *state*, handed back to it.

The post-processing correction (:mod:`surrogate.correction`) maps the coarse
solve's fields to the fine grid after the fact. Here a small network corrects
the state of the coarse solve itself -- plastic deformation ``Fp`` and slip
resistance ``xi`` of every coarse voxel -- at every output step, and the solver
goes on from the corrected state
(:meth:`solver.fem.CrystalPlasticitySolver.set_voxel_state`; the stress follows
from ``Fp`` at the next increment). The target is the fine solve's state
restricted to the coarse grid (block means, :func:`surrogate.correction.restrict`).

Training is solver-in-the-loop by dataset aggregation (DAgger: Ross, Gordon and
Bagnell, AISTATS 2011; solver in the loop: Um et al., NeurIPS 2020). Round 0
learns from the open-loop coarse partner (``slipstream campaign CFG --coarsen
K``). Each later round adds a store of the states that the coarse solver
reaches with the previous round's model in its loop (``slipstream campaign CFG
--coarsen K --correct-in-loop MODEL``), and trains on all of them: the model
learns on the states it meets when it drives the solve, not only on those of
an uncorrected one.

Conventions (as :mod:`surrogate.features`): maps ``(y, x)`` (2-D stores),
channels first; ``Fp`` row-major 9 components; ``xi`` per slip system in the
lattice's order. Channels per coarse voxel, in this order:

* state: ``Fp - I`` (9), ``xi`` in MPa (``n_slip``);
* the coarse solve's Cauchy stress in MPa and Hencky strain (Voigt, 6 + 6);
* the fine map under the voxel (:func:`block_map_channels`): block mean of the
  fine cubic orientation tensor (15), block mean of its squared distance to the
  coarse voxel's (1), the coarse voxel's tensor (15);
* the load condition (:func:`surrogate.features.load_condition`, 14).

The network predicts the increments of the state channels to the restricted
fine state; its input and output normalisers are buffers, so their statistics
travel in the state dict.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from solver.config import IN_LOOP_FORMAT as FORMAT  # the solver checks it without torch
from solver.errors import ModelError, StoreError
from solver.loading import MODES
from solver.rotations import euler_to_matrix
from solver.tensors import to_voigt

from . import features
from .correction import coarsening_factor, restrict, upsample
from .data import SplitSpec, StoreInfo, applied_strain, make_splits, store_info
from .models import Normaliser

#: channels of the fine map under a coarse voxel (:func:`block_map_channels`)
N_MAP = 2 * features.N_ORIENTATION + 1
#: state-independent solve channels: Cauchy stress (MPa) and Hencky strain
N_SOLVE = 12
#: largest hand-back, in RMS corrections of the training pairs (:meth:`StateCorrection.increments`)
MAX_CORRECTION = 4.0
MAKE = "slipstream train --in-loop --store FINE --coarse COARSE [--coarse DAGGER ...] --out DIR"


def n_state(n_slip: int) -> int:
    """State channels: ``Fp - I`` (9) and ``xi`` (``n_slip``)."""
    return 9 + int(n_slip)


def n_inputs(n_slip: int) -> int:
    return n_state(n_slip) + N_SOLVE + N_MAP + features.N_CONDITION


def block_map_channels(fine_euler: np.ndarray, coarse_euler: np.ndarray, factor: int) -> np.ndarray:
    """``(N_MAP, cy, cx)``: what the coarse voxel does not see of the fine map under it.

    Args:
        fine_euler: ``(ny, nx, 3)`` Bunge angles of the fine map.
        coarse_euler: ``(cy, cx, 3)`` of the coarse map (:func:`solver.microstructure.coarsen`).
        factor: the coarsening factor.
    """
    fine = np.moveaxis(features.cubic_orientation_tensor(euler_to_matrix(fine_euler)), -1, 0)
    coarse = np.moveaxis(features.cubic_orientation_tensor(euler_to_matrix(coarse_euler)), -1, 0)
    mismatch = np.square(fine - upsample(coarse, factor, "nearest")).sum(0, keepdims=True)
    return np.concatenate([restrict(fine, factor), restrict(mismatch, factor), coarse]).astype(np.float32)


def state_channels(plastic_deformation: np.ndarray, slip_resistance: np.ndarray) -> np.ndarray:
    """``(n_state, cy, cx)`` from ``Fp`` ``(cy, cx, 9)`` and ``xi`` ``(cy, cx, ns)`` in Pa."""
    fp = np.asarray(plastic_deformation, dtype=np.float64) - np.eye(3).reshape(9)
    xi = np.asarray(slip_resistance, dtype=np.float64) / 1e6
    return np.moveaxis(np.concatenate([fp, xi], axis=-1), -1, 0).astype(np.float32)


def solve_channels(stress_voigt: np.ndarray, strain_voigt: np.ndarray) -> np.ndarray:
    """``(N_SOLVE, cy, cx)`` from Voigt Cauchy stress (Pa) and Hencky strain ``(cy, cx, 6)``."""
    both = np.concatenate([np.asarray(stress_voigt, dtype=np.float64) / 1e6, np.asarray(strain_voigt)], axis=-1)
    return np.moveaxis(both, -1, 0).astype(np.float32)


def step_inputs(state: np.ndarray, solve: np.ndarray, map_channels: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """All input channels of one step, ``(n_inputs, cy, cx)``."""
    cond = np.broadcast_to(np.asarray(condition, dtype=np.float32)[:, None, None],
                           (len(condition),) + state.shape[1:])
    return np.concatenate([state, solve, map_channels, cond]).astype(np.float32)


def state_from_channels(channels: np.ndarray, n_slip: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`state_channels`: ``Fp`` ``(cy, cx, 3, 3)`` and ``xi`` ``(cy, cx, ns)`` in Pa."""
    c = np.moveaxis(np.asarray(channels, dtype=np.float64), 0, -1)
    fp = (c[..., :9] + np.eye(3).reshape(9)).reshape(c.shape[:-1] + (3, 3))
    return fp, c[..., 9:9 + n_slip] * 1e6


class StateCorrection(nn.Module):
    """Periodic CNN on the coarse grid: inputs -> increments of the state channels.

    Small and local on purpose: the correction of a voxel's state depends on the
    fine map under it and its neighbours', and the coarse grid is small (8 x 8
    for a 32 x 32 map at ``k = 4``). The last layer starts at zero, so an
    untrained model hands back the solver's own state.

    Args:
        n_slip: slip systems of the lattice.
        width: hidden channels.
        layers: 3 x 3 convolutions (the receptive field is ``2 layers + 1`` coarse voxels).
    """

    def __init__(self, n_slip: int = 12, width: int = 32, layers: int = 3):
        super().__init__()
        self.kwargs = {"n_slip": int(n_slip), "width": int(width), "layers": int(layers)}
        self.n_slip = int(n_slip)
        n_in, n_out = n_inputs(n_slip), n_state(n_slip)
        self.input_norm = Normaliser(n_in)
        self.output_norm = Normaliser(n_out)
        mods: list[nn.Module] = []
        c = n_in
        for _ in range(int(layers)):
            mods += [nn.Conv2d(c, width, 3, padding=1, padding_mode="circular"), nn.GELU()]
            c = width
        last = nn.Conv2d(c, n_out, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised increments ``(B, n_state, cy, cx)`` (train on these; :meth:`increments` is physical)."""
        return self.net(self.input_norm(x))

    def increments(self, x: torch.Tensor) -> torch.Tensor:
        """State-channel increments in the units of :func:`state_channels`.

        Bounded by ``MAX_CORRECTION`` times the RMS correction of the training pairs, so that a state
        far from training cannot be handed a correction the solver cannot converge from.
        """
        return self.output_norm.inverse(torch.clamp(self.forward(x), -MAX_CORRECTION, MAX_CORRECTION))


# ------------------------------------------------------------------------------------------ data

def has_state(info: StoreInfo) -> bool:
    from solver import store as _store

    return "plastic_deformation" in _store.open_store(info.path, "r")


def partner_factor(fine: StoreInfo, coarse: StoreInfo) -> int:
    """Coarsening factor of a coarse partner or of a DAgger store (a partner solved with a model in its loop).

    Raises:
        StoreError: not the same campaign apart from ``coarsen`` and the in-loop model, a grid that is
            not a whole fraction, or a store without the plastic deformation.
    """
    factor = coarsening_factor(fine, coarse)
    for info in (fine, coarse):
        if not has_state(info):
            raise StoreError(f"{info.path} has no plastic_deformation array (made before it was stored); "
                             "rerun its campaign to learn an in-loop correction")
    return factor


def sample_pairs(fine_group, coarse_group, index: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n_steps - 1, n_inputs, cy, cx)`` and target increments ``(n_steps - 1, n_state, cy, cx)``
    of one sample: the coarse solve's state at each loaded step against the fine solve's, restricted."""
    mode = MODES[int(coarse_group["load_mode"][index])]
    direction = coarse_group["load_direction"][index]
    time_ = coarse_group["time"][index]
    strain_now = applied_strain(coarse_group["load_strain"][index], time_)
    rate = float(coarse_group["load_rate"][index])
    maps = block_map_channels(np.asarray(fine_group["euler0"][index][0], dtype=float),
                              np.asarray(coarse_group["euler0"][index][0], dtype=float), factor)
    fine_state = np.moveaxis(np.asarray(fine_group["plastic_deformation"][index][:, 0], dtype=np.float64), -1, 1)
    fine_xi = np.moveaxis(np.asarray(fine_group["slip_resistance"][index][:, 0], dtype=np.float64), -1, 1)
    target = np.concatenate([restrict(fine_state, factor) - np.eye(3).reshape(9)[:, None, None],
                             restrict(fine_xi, factor) / 1e6], axis=1)
    fp_c = coarse_group["plastic_deformation"][index][:, 0]
    xi_c = coarse_group["slip_resistance"][index][:, 0]
    stress, strain = coarse_group["stress"][index][:, 0], coarse_group["strain"][index][:, 0]
    xs, ys = [], []
    for s in range(1, len(time_)):
        state = state_channels(fp_c[s], xi_c[s])
        cond = features.load_condition(mode, direction, strain_now[s], rate)
        xs.append(step_inputs(state, solve_channels(stress[s], strain[s]), maps, cond))
        ys.append(target[s] - state)
    return np.stack(xs), np.stack(ys).astype(np.float32)


def restricted_fine(fine_group, index: int, name: str, factor: int) -> np.ndarray:
    """A fine store's voxel field of one sample at the loaded steps, as block means on the coarse grid,
    ``(n_steps - 1, cy, cx, C)`` (2-D stores)."""
    a = np.moveaxis(np.asarray(fine_group[name][index][1:, 0], dtype=np.float64), -1, 1)
    return np.moveaxis(restrict(a, factor), 1, -1)


def block_stress_error(fine_group, index: int, coarse_stress: np.ndarray, factor: int) -> tuple[float, float]:
    """``(sum of squared errors, sum of squares)`` of a coarse solve's Voigt stress ``(n_steps, 1, cy, cx, 6)``
    against the fine solve's block means, over the loaded steps (a relative L2 is the root of their ratio)."""
    ref = restricted_fine(fine_group, index, "stress", factor)
    diff = np.asarray(coarse_stress, dtype=np.float64)[1:, 0] - ref
    return float(np.sum(diff ** 2)), float(np.sum(ref ** 2))


def build_pairs(fine: StoreInfo, partners: Sequence[StoreInfo], samples: Sequence[int],
                factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of the given samples from every partner store that has them done (DAgger's aggregate)."""
    from solver import store as _store

    fine_group = _store.open_store(fine.path, "r")
    done_fine = _store.sample_status(fine_group) == _store.DONE
    xs, ys = [], []
    for info in partners:
        group = _store.open_store(info.path, "r")
        done = _store.sample_status(group) == _store.DONE
        for i in samples:
            if i < len(done) and done[i] and done_fine[i]:
                x, y = sample_pairs(fine_group, group, i, factor)
                xs.append(x)
                ys.append(y)
    if not xs:
        raise StoreError(f"no sample of the split is done in both {fine.path} and the coarse store(s)")
    return np.concatenate(xs), np.concatenate(ys)


# ------------------------------------------------------------------------------------- training

#: ``select``: ``best`` keeps the epoch of the lowest mean validation error ratio (``Fp`` and ``xi``), and
#: the untrained model (no correction) if no epoch beats it; ``last`` keeps the last epoch. ``candidates``: also
#: keep this many evenly spaced epochs' weights (and the selected one's, and the untrained one's as epoch 0) in
#: ``candidates/``, for a selection
#: by the error of solves with the model in the loop (:mod:`coupling.inloop_select`).
TRAIN_DEFAULTS: dict[str, Any] = {"width": 32, "layers": 3, "epochs": 60, "batch_size": 64,
                                  "learning_rate": 2e-3, "weight_decay": 1e-4, "seed": 0, "split": None,
                                  "select": "best", "candidates": 0}


def state_errors(model: StateCorrection | None, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """RMS state error left after the correction (``model=None``: of the uncorrected coarse solve), per part.

    ``fp``: RMS of ``Fp`` components; ``xi_mpa``: RMS slip resistance in MPa; ``*_ratio``: the same relative to
    the uncorrected solve's (below 1: the correction brings the state closer to the fine solve's).
    """
    rest = y
    if model is not None:
        with torch.no_grad():
            rest = y - model.increments(torch.from_numpy(x)).numpy()
    out = {"fp": float(np.sqrt(np.mean(rest[:, :9] ** 2))), "xi_mpa": float(np.sqrt(np.mean(rest[:, 9:] ** 2)))}
    base = {"fp": float(np.sqrt(np.mean(y[:, :9] ** 2))), "xi_mpa": float(np.sqrt(np.mean(y[:, 9:] ** 2)))}
    out.update({f"{k}_ratio": out[k] / base[k] if base[k] > 0 else 1.0 for k in base})
    return out


def train_state_correction(store: str | Path, coarse: Sequence[str | Path], out: str | Path,
                           config: Mapping[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train an in-loop state correction (module docstring) and write ``model.json`` and ``weights.pt``.

    Args:
        store: the fine campaign store (with ``plastic_deformation``).
        coarse: its coarse partner, then any DAgger stores (the same campaign solved coarse with a
            model in the loop); the pairs of all of them are trained on together.
        out: the model directory (created; an existing model there is replaced).
        config: overrides of :data:`TRAIN_DEFAULTS`.

    Returns:
        The written ``model.json`` content.

    Raises:
        StoreError: a store that is no partner of ``store`` or lacks the plastic deformation.
        ConfigError: an unknown or bad option.
    """
    from solver import store as _store
    from solver.errors import ConfigError

    cfg = dict(TRAIN_DEFAULTS)
    unknown = sorted(set(config or {}) - set(cfg))
    if unknown:
        raise ConfigError(f"in-loop training: unknown option(s) {', '.join(unknown)}; known: {', '.join(cfg)}")
    cfg.update(config or {})
    if isinstance(cfg["candidates"], bool) or not isinstance(cfg["candidates"], int) or cfg["candidates"] < 0:
        raise ConfigError(f"in-loop training: candidates must be a non-negative integer, got {cfg['candidates']!r}")
    for key in ("width", "layers", "epochs", "batch_size"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"in-loop training: {key} must be a positive integer, got {cfg[key]!r}")
    if cfg["select"] not in ("best", "last"):
        raise ConfigError(f"in-loop training: select must be 'best' or 'last', got {cfg['select']!r}")
    for key in ("learning_rate", "weight_decay"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or not 0 <= cfg[key] < 1:
            raise ConfigError(f"in-loop training: {key} must be a number in [0, 1), got {cfg[key]!r}")
    if not coarse:
        raise ConfigError(f"in-loop training needs at least one coarse partner store ({MAKE})")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    t0 = time.perf_counter()
    fine = store_info(store)
    partners = [store_info(c) for c in coarse]
    factors = {partner_factor(fine, p) for p in partners}
    if len(factors) != 1:
        raise StoreError(f"the coarse stores have different factors {sorted(factors)}; give one factor's")
    factor = factors.pop()
    split = SplitSpec.from_config(cfg["split"])
    splits = make_splits(fine.path, split)
    x_train, y_train = build_pairs(fine, partners, splits["train"], factor)
    # validation on the open-loop partner's states: the model's first step in a solve sees those
    x_val, y_val = build_pairs(fine, partners[:1], splits["validation"], factor)
    say(f"train --in-loop: {len(x_train)} training pairs from {len(partners)} coarse store(s), "
        f"{len(x_val)} validation pairs, factor {factor}")

    torch.manual_seed(int(cfg["seed"]))
    model = StateCorrection(fine.n_slip, cfg["width"], cfg["layers"])
    axes = (0, 2, 3)
    mean, std = x_train.mean(axis=axes), x_train.std(axis=axes)
    # a channel constant in training (one load mode, one direction) carries no information: unit scale,
    # so that another value at run time does not blow up by 1/std
    model.input_norm.set(mean, np.where(std > 1e-6 * (np.abs(mean) + 1e-30), std, 1.0))
    # scale only (no shift): a network that outputs zero hands back the solver's own state
    model.output_norm.set(np.zeros(y_train.shape[1]), np.maximum(np.sqrt(np.mean(y_train ** 2, axis=axes)), 1e-12))
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["learning_rate"]),
                            weight_decay=float(cfg["weight_decay"]))
    xt, yt = torch.from_numpy(x_train), model.output_norm(torch.from_numpy(y_train))
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    n, bs, epochs = len(xt), int(cfg["batch_size"]), int(cfg["epochs"])
    steps = epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(cfg["learning_rate"]), total_steps=steps)
    history = []
    # epoch 0 is the untrained model: it hands back the solver's own state (score 1)
    best = {"epoch": 0, "score": 1.0, "state": copy.deepcopy(model.state_dict())}
    # candidates for a selection by rollout (coupling.inloop_select): evenly spaced epochs
    n_cand = int(cfg["candidates"])
    keep = {round(epochs * (k + 1) / n_cand) for k in range(n_cand)} if n_cand else set()
    candidates = {0: best["state"]} if n_cand else {}  # epoch 0: no correction
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            loss = torch.mean((model(xt[idx]) - yt[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        val = state_errors(model, x_val, y_val)
        score = 0.5 * (val["fp_ratio"] + val["xi_mpa_ratio"])
        history.append({"epoch": epoch, "train_loss": total / n, **val})
        if score < best["score"] or cfg["select"] == "last":
            best = {"epoch": epoch, "score": score, "state": copy.deepcopy(model.state_dict())}
        if epoch in keep:
            candidates[epoch] = copy.deepcopy(model.state_dict())
        if epoch == 1 or epoch % max(1, epochs // 10) == 0 or epoch == epochs:
            say(f"train --in-loop: epoch {epoch}/{epochs}: train loss {total / n:.4f}, validation Fp error "
                f"{val['fp_ratio']:.3f} and slip resistance error {val['xi_mpa_ratio']:.3f} of the coarse solve's"
                + (" *" if best["epoch"] == epoch else ""))
    model.load_state_dict(best["state"])
    meta = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": {"class": "StateCorrection", "kwargs": model.kwargs},
        "factor": factor,
        # the fine store may itself be coarsened: the run's coarsen is fine_coarsen * factor
        "fine_coarsen": int(_store.open_store(fine.path, "r").attrs["config"].get("microstructure", {})
                            .get("coarsen", 1)),
        "store": fine.signature(),
        "fine_store": str(fine.path),
        "coarse_stores": [str(p.path) for p in partners],
        "config": {**cfg, "split": split.as_dict()},
        "training_pairs": int(n),
        "selected_epoch": best["epoch"],
        "history": history,
        "validation": {"coarse": state_errors(None, x_val, y_val),
                       "corrected": state_errors(model, x_val, y_val)},
        "seconds": time.perf_counter() - t0,
    }
    save_state_correction(model, meta, out)
    if n_cand:
        candidates[best["epoch"]] = best["state"]
        cdir = Path(out) / "candidates"
        cdir.mkdir(exist_ok=True)
        for epoch, state in candidates.items():
            torch.save({k: v.detach().cpu() for k, v in state.items()}, cdir / f"epoch_{epoch:04d}.pt")
    say(f"train --in-loop: done in {meta['seconds']:.0f} s; model in {out}/")
    return meta


def save_state_correction(model: StateCorrection, meta: Mapping[str, Any], out: str | Path) -> None:
    """Write ``weights.pt`` (plain tensors) and ``model.json`` (written last: a half-written model is refused)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").unlink(missing_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "weights.pt")
    (out / "model.json").write_text(json.dumps(dict(meta), indent=1))


def load_state_correction(path: str | Path) -> tuple[StateCorrection, dict[str, Any]]:
    """The model and its ``model.json``; ``torch.load(weights_only=True)``.

    Raises:
        ModelError: not a model directory, or another kind of model.
    """
    path = Path(path)
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: no readable model.json ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not an in-loop state correction (format {meta.get('format')!r}; {MAKE})")
    model = StateCorrection(**meta["model"]["kwargs"])
    try:
        model.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"{path}/weights.pt does not load into the model of model.json ({exc})") from None
    return model.eval(), meta


class InLoopCorrection:
    """NumPy in, NumPy out: the coarse solve's voxel fields at an output step -> its corrected state.

    Bound to one solve (its fine and coarse maps and its load), called by
    :func:`solver.simulate.solve_sample` on rank 0 at every loaded output step.

    Args:
        path: the model directory.
        fine_euler, coarse_euler: ``(ny, nx, 3)`` and ``(cy, cx, 3)`` Bunge angles.
        mode, direction, load_strain, rate, duration: the load (as in the store).
    """

    def __init__(self, path, fine_euler, coarse_euler, mode: str, direction, load_strain: float, rate: float,
                 duration: float):
        self.model, self.meta = load_state_correction(path)
        self.factor = int(self.meta["factor"])
        self.maps = block_map_channels(np.asarray(fine_euler, dtype=float), np.asarray(coarse_euler, dtype=float),
                                       self.factor)
        self.mode, self.direction = mode, np.asarray(direction, dtype=float)
        self.load_strain, self.rate, self.duration = float(load_strain), float(rate), float(duration)
        self.seconds = 0.0

    def __call__(self, fields: Mapping[str, np.ndarray], t: float) -> dict[str, np.ndarray]:
        """``fields``: the solver's voxel fields ``(1, cy, cx, ...)`` (:meth:`gather_voxel_fields`); ``t``: time.

        Returns:
            ``plastic_deformation`` ``(1, cy, cx, 3, 3)`` and ``slip_resistance`` ``(1, cy, cx, ns)`` in Pa.
        """
        t0 = time.perf_counter()
        n_slip = self.model.n_slip
        fp = np.asarray(fields["plastic_deformation"])[0].reshape(self.maps.shape[1:] + (9,))
        state = state_channels(fp, fields["slip_resistance"][0])
        solve = solve_channels(to_voigt(fields["stress"][0]), to_voigt(fields["strain"][0]))
        strain_now = float(applied_strain(self.load_strain, np.array([t, self.duration]))[0])
        cond = features.load_condition(self.mode, self.direction, strain_now, self.rate)
        x = torch.from_numpy(step_inputs(state, solve, self.maps, cond)[None])
        with torch.no_grad():
            corrected = state + self.model.increments(x)[0].numpy()
        fp_new, xi_new = state_from_channels(corrected, n_slip)
        self.seconds += time.perf_counter() - t0
        return {"plastic_deformation": fp_new[None], "slip_resistance": xi_new[None]}
