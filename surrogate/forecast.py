"""Hybrid physics-ML forecasts: incomplete physics plus a learned residual, rolled out over load increments.

The state ``x_n`` is a map's 16 per-voxel fields at output step ``n`` (stress,
strain, lattice rotation, accumulated slip; :func:`surrogate.features.step_targets`),
``x_0 = 0`` (unloaded). One step of the forecast::

    x_{n+1} = x_n + dx_phys(n) + F_theta(x_n, dx_phys(n), map, load)      (hybrid)
    x_{n+1} = x_n + G_theta(x_n, map, load)                              (neural)

``dx_phys(n)`` is the increment of the *incomplete physics*: the same map and
load solved with one of :data:`PHYSICS` (the *physics partner* store made by
``slipstream campaign CFG --constitutive elastic|frozen_hardening``):

* ``elastic``: the elastic limit of the material alone
  (:class:`solver.elastic.AnisotropicElasticity`). It has the grain interactions
  of elasticity and no plasticity, so it overshoots the stress once grains
  yield; ``F_theta`` learns the whole plastic flow. It costs a fifth of the
  crystal-plasticity solve.
* ``frozen_hardening``: the material's crystal plasticity with ``h_0 = 0`` (the
  slip resistance stays at ``xi_0``); ``F_theta`` learns the hardening. It costs
  as much as the full solve.

The model records which physics it was trained with, and
``slipstream couple forecast`` solves with that one. The load enters as its mode,
direction and strain *increment* per step (not the strain reached), so a
rollout beyond the trained horizon applies the same learned step again.

Training follows APHYNITY (Yin et al., ICLR 2021; Dona et al. 2022): the
trajectory loss over the training horizon (the first half of the steps, from
``x_0``, fully unrolled) plus ``residual_weight * ||F_theta||^2`` so the
residual stays as small as the data allow and the physics does all it can. The
residual's norm relative to the whole increment is reported as the share of
missing physics. The pure neural model ``G_theta`` has the same network and
inputs (less ``dx_phys``) and the same trajectory loss.

Trust: after training, the validation trajectories are rolled out over all
their steps (2x the horizon for the default campaign) and, per step, the share
of voxels whose von Mises stress is within ``trust_tolerance`` of the solver's
(:func:`surrogate.uncertainty.tolerance_band`, the surrogate's hit) is stored
(``model.json`` -> ``calibration.hit_rate``). A forecast's trust is the hit
rate at its step count (the lowest validated one beyond them) times the domain
factor of the load and map (:func:`surrogate.uncertainty.domain_factor`, from
the training samples: ``training_domain``; the strain increment per step is
checked against the largest trained one as well). The members of one model give no
spread, so the trust is the same for every voxel.

Networks are :class:`surrogate.models.FNO2d` (periodic, resolution-agnostic);
normalisers are buffers (state scale per field group, from the training set).
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from solver import store as _store
from solver.errors import ConfigError, ModelError, StoreError
from solver.loading import MODES

from . import checkpoint, features
from .data import SplitSpec, StoreInfo, make_splits, material_stiffness, partner_value, sample_targets, store_info
from .models import FNO2d, Normaliser

KINDS = ("hybrid", "neural")
#: ``solver.constitutive`` values a physics partner may have (``solver.config.CONSTITUTIVE``)
PHYSICS = ("elastic", "frozen_hardening")
_MAKE_PARTNER = "slipstream campaign CFG --constitutive elastic (or frozen_hardening)"
GROUPS = ("stress", "strain", "rotation", "slip")

DEFAULTS: dict[str, Any] = {
    "model_kwargs": {"width": 24, "modes": 8, "layers": 4},
    "epochs": 20,
    "batch_size": 8,
    "learning_rate": 2.0e-3,
    "weight_decay": 1.0e-4,
    "residual_weight": 0.01,   # APHYNITY's penalty on ||F|| (relative to the trajectory loss)
    "horizon": None,           # training steps after x_0; default: half of the store's
    "split": None,
    "seed": 0,
    "trust_tolerance": 0.05,   # relative von Mises error that counts as a hit (the surrogate's trust)
}


def forecast_config(cfg: Mapping[str, Any] | None = None, **overrides) -> dict[str, Any]:
    """The checked forecast training config (plain types).

    Raises:
        ConfigError: unknown keys or bad values.
    """
    cfg = dict(cfg or {})
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"forecast config: unknown key(s) {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    out["model_kwargs"] = {**DEFAULTS["model_kwargs"], **(cfg.get("model_kwargs") or {})}
    for k, v in out["model_kwargs"].items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"forecast config: model_kwargs.{k} must be a positive integer, got {v!r}")
    for key in ("epochs", "batch_size"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] <= 0:
            raise ConfigError(f"forecast config: {key} must be a positive integer, got {out[key]!r}")
    for key in ("learning_rate", "weight_decay", "residual_weight"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"forecast config: {key} must be a non-negative number, got {v!r}")
        out[key] = float(v)
    t = out["trust_tolerance"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ConfigError(f"forecast config: trust_tolerance must be a positive number (a relative error), got {t!r}")
    out["trust_tolerance"] = float(t)
    h = out["horizon"]
    if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
        raise ConfigError(f"forecast config: horizon must be a positive integer, got {h!r}")
    out["split"] = SplitSpec.from_config(out["split"]).as_dict()
    return out


# --------------------------------------------------------------------------- data

def physics_partner(store: StoreInfo, physics: StoreInfo) -> str:
    """Check that ``physics`` solves ``store``'s samples with an incomplete physics; return which (:data:`PHYSICS`).

    Raises:
        StoreError: another campaign, or solved with the full physics.
    """
    value = partner_value(store, physics, "solver", "constitutive", _MAKE_PARTNER)
    if value not in PHYSICS:
        raise StoreError(f"{physics.path}: solved with {value or 'crystal_plasticity'}, not an incomplete physics "
                         f"({' or '.join(PHYSICS)}; make it with: {_MAKE_PARTNER})")
    return value


def step_condition(mode: str, direction, strain_increment: float, rate: float) -> np.ndarray:
    """The load of one step: :func:`surrogate.features.load_condition` with the strain *increment* per step."""
    return features.load_condition(mode, direction, strain_increment, rate).astype(np.float32)


def trajectory(group, physics_group, index: int, info: StoreInfo, stiffness) -> dict[str, np.ndarray]:
    """One sample as a trajectory: map channels, step condition, truth and physics states ``(n_steps, 16, y, x)``."""
    mode = MODES[int(group["load_mode"][index])]
    direction = group["load_direction"][index]
    euler0 = np.asarray(group["euler0"][index][0], dtype=float)
    inputs = features.sample_inputs(euler0, np.asarray(group["grain_id"][index][0]), mode, direction, info.lattice,
                                    stiffness)
    n_inc = info.n_steps - 1
    truth = sample_targets(group, index)[0]
    physics = sample_targets(physics_group, index)[0] if physics_group is not None else np.zeros_like(truth)
    cond = step_condition(mode, direction, float(group["load_strain"][index]) / n_inc, float(group["load_rate"][index]))
    return {"fields": inputs["fields"], "condition": cond, "truth": truth, "physics": physics}


class TrajectoryDataset(torch.utils.data.Dataset):
    """Whole-sample trajectories of a store (and its physics partner), decoded once and kept."""

    def __init__(self, path: str | Path, samples, physics: str | Path | None = None):
        self.path, self.physics = str(path), (str(physics) if physics is not None else None)
        self.info = store_info(path)
        if physics is not None:
            physics_partner(self.info, store_info(physics))
        self.samples = [int(i) for i in samples]
        self._items: dict[int, dict] = {}
        self._stiffness = material_stiffness(self.info.material)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        i = self.samples[item]
        if i not in self._items:
            g = _store.open_store(self.path, "r")
            pg = _store.open_store(self.physics, "r") if self.physics else None
            if pg is not None and int(pg["status"][i]) != _store.DONE:
                raise StoreError(f"{self.physics}: sample {i} is not done (rerun its campaign)")
            self._items[i] = {k: torch.from_numpy(np.ascontiguousarray(v))
                              for k, v in trajectory(g, pg, i, self.info, self._stiffness).items()}
        return {**self._items[i], "sample": i}


def _collate(items):
    return {k: (torch.stack([it[k] for it in items]) if k != "sample" else torch.tensor([it[k] for it in items]))
            for k in items[0]}


# -------------------------------------------------------------------------- model

class Forecaster(nn.Module):
    """One step of a hybrid (or pure neural) forecast; :meth:`rollout` runs many.

    Args:
        kind: ``"hybrid"`` (physics increment + learned residual) or ``"neural"``.
        n_fields: map channels; n_condition: load channels.
        backbone_kwargs: :class:`surrogate.models.FNO2d` arguments.
    """

    def __init__(self, kind: str = "hybrid", n_fields: int = 30, n_condition: int = features.N_CONDITION,
                 backbone_kwargs: dict | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"forecast kind {kind!r} is unknown; known: {', '.join(KINDS)}")
        self.kwargs = {"kind": kind, "n_fields": n_fields, "n_condition": n_condition,
                       "backbone_kwargs": dict(backbone_kwargs or {})}
        self.kind = kind
        n_state = features.N_TARGETS
        self.field_norm = Normaliser(n_fields)
        self.condition_norm = Normaliser(n_condition, channel_dim=1)
        self.state_scale = Normaliser(n_state)      # mean 0: scales of the state's groups
        self.increment_scale = Normaliser(n_state)  # mean 0: scales of one step's increments
        n_in = n_fields + n_condition + n_state * (2 if kind == "hybrid" else 1)
        self.backbone = FNO2d(n_in, **self.kwargs["backbone_kwargs"])
        w = self.backbone.width
        self.head = nn.Sequential(nn.Conv2d(w, 2 * w, 1), nn.GELU(), nn.Conv2d(2 * w, n_state, 1))
        nn.init.zeros_(self.head[-1].weight)  # start from the physics alone (hybrid) or standing still
        nn.init.zeros_(self.head[-1].bias)

    def set_statistics(self, stats: Mapping[str, np.ndarray]) -> None:
        self.field_norm.set(stats["fields_mean"], stats["fields_std"])
        self.condition_norm.set(stats["condition_mean"], stats["condition_std"])
        self.state_scale.set(np.zeros(features.N_TARGETS), stats["state_scale"])
        self.increment_scale.set(np.zeros(features.N_TARGETS), stats["increment_scale"])

    def step(self, state, physics_increment, fields, condition):
        """``(next state, learned residual)`` in physical units, all ``(B, 16, y, x)``."""
        c = self.condition_norm(condition)[:, :, None, None].expand(-1, -1, *fields.shape[-2:])
        parts = [self.field_norm(fields), c, self.state_scale(state)]
        if self.kind == "hybrid":
            parts.append(self.increment_scale(physics_increment))
        residual = self.increment_scale.inverse(self.head(self.backbone(torch.cat(parts, dim=1))))
        if self.kind == "hybrid":
            return state + physics_increment + residual, residual
        return state + residual, residual

    def rollout(self, physics, fields, condition, steps: int):
        """States ``(B, steps + 1, 16, y, x)`` from ``x_0 = 0`` and the residuals ``(B, steps, 16, y, x)``.

        ``physics`` ``(B, >= steps + 1, 16, y, x)`` is the physics trajectory (any values for ``neural``).
        """
        x = torch.zeros_like(physics[:, 0])
        states, residuals = [x], []
        for n in range(steps):
            x, r = self.step(x, physics[:, n + 1] - physics[:, n], fields, condition)
            states.append(x)
            residuals.append(r)
        return torch.stack(states, 1), torch.stack(residuals, 1)


def build_forecaster(kwargs: Mapping[str, Any]) -> Forecaster:
    return Forecaster(**kwargs)


def statistics(dataset: TrajectoryDataset, horizon: int) -> dict[str, np.ndarray]:
    """Normaliser statistics over the training horizon: map and load channels, state and increment scales
    (one RMS per field group, so a tensor's components share their scale)."""
    items = [dataset[k] for k in range(len(dataset))]
    f = torch.stack([it["fields"] for it in items]).double()
    c = torch.stack([it["condition"] for it in items]).double()
    x = torch.stack([it["truth"][: horizon + 1] for it in items]).double()
    dx = x[:, 1:] - x[:, :-1]
    state, inc = np.ones(features.N_TARGETS), np.ones(features.N_TARGETS)
    for name, sl in features.TARGETS.items():
        state[sl] = max(float(x[:, :, sl].square().mean().sqrt()), 1e-30)
        inc[sl] = max(float(dx[:, :, sl].square().mean().sqrt()), 1e-30)
    fs, cs = f.std(dim=(0, 2, 3)), c.std(dim=0)
    return {"fields_mean": f.mean(dim=(0, 2, 3)).numpy(), "fields_std": torch.where(fs > 1e-12, fs, 1).numpy(),
            "condition_mean": c.mean(0).numpy(), "condition_std": torch.where(cs > 1e-12, cs, 1).numpy(),
            "state_scale": state, "increment_scale": inc}


def trajectory_loss(model: Forecaster, pred, truth):
    """Mean squared error of the states in state-scale units, steps 1.. (``x_0`` is given)."""
    return (model.state_scale(pred[:, 1:].flatten(0, 1)) - model.state_scale(truth[:, 1:].flatten(0, 1))).square().mean()


# ----------------------------------------------------------------------- training

def train_forecast(store: str | Path, out: str | Path, *, kind: str = "hybrid", physics: str | Path | None = None,
                   config: Mapping[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train a hybrid (or pure neural) forecast on a store; writes ``out/forecast.pt`` and ``out/model.json``.

    Args:
        store: the crystal-plasticity campaign (the truth).
        out: model directory (created; an existing run is refused).
        kind: ``hybrid`` (needs ``physics``) or ``neural``.
        physics: the store's physics partner (``slipstream campaign CFG --constitutive elastic`` or
            ``frozen_hardening``).
        config: :func:`forecast_config` keys.

    Raises:
        ConfigError, StoreError, ModelError: bad config, unusable stores, an existing run in ``out``.
    """
    cfg = forecast_config(config)
    if kind not in KINDS:
        raise ConfigError(f"forecast kind {kind!r} is unknown; known: {', '.join(KINDS)}")
    if kind == "hybrid" and physics is None:
        raise ConfigError("a hybrid forecast needs its physics partner store (--physics)")
    out = Path(out)
    if (out / "model.json").exists() or (out / "forecast.pt").exists():
        raise ModelError(f"{out}: holds a trained forecast already; choose another --out")
    info = store_info(store)
    horizon = cfg["horizon"] or (info.n_steps - 1) // 2
    if horizon > info.n_steps - 1:
        raise ConfigError(f"forecast config: horizon {horizon} is beyond the store's {info.n_steps - 1} steps")
    splits = make_splits(store, SplitSpec.from_config(cfg["split"]))
    if physics is not None:
        status = _store.sample_status(_store.open_store(physics, "r"))
        splits = {k: [i for i in v if i < status.size and status[i] == _store.DONE] for k, v in splits.items()}
    for name in ("train", "validation"):  # validation picks the best epoch and calibrates the trust
        if not splits[name]:
            raise ConfigError(f"forecast: the {name} split of {store} is empty (too few samples done"
                              + (" in both stores" if physics is not None else "") + "; see split in the config)")
    data = {k: TrajectoryDataset(store, splits[k], physics if kind == "hybrid" else None) for k in ("train", "validation")}
    physics_kind = physics_partner(info, store_info(physics)) if physics is not None else None
    from .train import Context

    ctx = Context()  # torchrun: data-parallel over the training trajectories; else one process
    say = (lambda *a: None) if quiet else ctx.say
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    model = Forecaster(kind, features.n_field_channels(info.n_slip), features.N_CONDITION, cfg["model_kwargs"])
    t0 = time.perf_counter()
    model.set_statistics(statistics(data["train"], horizon))
    model.to(ctx.device)
    say(f"forecast: training a {kind} forecast on {len(splits['train'])} trajectories ({len(splits['validation'])} "
        f"validation), horizon {horizon} of {info.n_steps - 1} steps, {cfg['epochs']} epochs, {ctx.world} "
        f"process(es) on {ctx.device.type}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    sampler = None
    if ctx.distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(data["train"], num_replicas=ctx.world,
                                                                  rank=ctx.rank, shuffle=True, seed=cfg["seed"])
        loader = torch.utils.data.DataLoader(data["train"], batch_size=cfg["batch_size"], sampler=sampler,
                                             collate_fn=_collate)
    else:
        loader = torch.utils.data.DataLoader(data["train"], batch_size=cfg["batch_size"], shuffle=True,
                                             collate_fn=_collate,
                                             generator=torch.Generator().manual_seed(cfg["seed"]))
    total = cfg["epochs"] * len(loader)
    best, best_state, history = math.inf, None, []
    for epoch in range(cfg["epochs"]):
        if sampler is not None:
            sampler.set_epoch(epoch)  # a different shuffle every epoch, the same on every rank
        model.train()
        run, n = 0.0, 0
        for i, b in enumerate(loader):
            b = {k: v.to(ctx.device) for k, v in b.items()}
            for g in opt.param_groups:  # cosine decay
                g["lr"] = cfg["learning_rate"] * 0.5 * (1 + math.cos(math.pi * (epoch * len(loader) + i) / total))
            pred, residual = model.rollout(b["physics"], b["fields"], b["condition"], horizon)
            loss = trajectory_loss(model, pred, b["truth"][:, : horizon + 1])
            if kind == "hybrid":
                loss = loss + cfg["residual_weight"] * model.increment_scale(residual.flatten(0, 1)).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if ctx.distributed:  # average the gradients: every rank then takes the same step
                for q in model.parameters():
                    if q.grad is not None:
                        torch.distributed.all_reduce(q.grad)
                        q.grad /= ctx.world
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            run, n = run + float(loss.detach()), n + 1
        # every rank holds the same weights, so every rank reaches the same validation error and keeps the same best
        val = rollout_errors(model, data["validation"], horizon)["relative_error"][str(horizon)]["all"]
        history.append({"epoch": epoch + 1, "train_loss": run / max(n, 1), "validation_error": val})
        if val < best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
        say(f"forecast epoch {epoch + 1}/{cfg['epochs']}: train loss {run / max(n, 1):.4f}, validation relative "
            f"error at the horizon {val:.4f}{' *' if val == best else ''}")
    model.load_state_dict(best_state)
    if ctx.rank != 0:  # rank 0 calibrates and writes the model; the others learn whether it could
        failure = ctx.from_rank0(None)
        if failure:
            raise ModelError(f"forecast: rank 0 failed to write the model: {failure}")
        return {}
    try:
        meta = _finish_forecast(model, data, cfg, kind, horizon, info, physics, physics_kind, splits, history, out,
                                t0, ctx, say)
    except Exception as exc:
        ctx.from_rank0(f"{type(exc).__name__}: {exc}")
        raise
    ctx.from_rank0("")
    return meta


def _training_domain(dataset: TrajectoryDataset) -> dict[str, Any]:
    """:func:`surrogate.train.training_domain` of a trajectory set, from the maps it has decoded already."""
    from .train import training_domain

    return training_domain(dataset.path, dataset.samples,
                           maps=(dataset[k]["fields"].numpy() for k in range(len(dataset))))


def _finish_forecast(model, data, cfg, kind, horizon, info, physics, physics_kind, splits, history, out, t0, ctx,
                     say) -> dict[str, Any]:
    """Rank 0's end of :func:`train_forecast`: calibration, training domain, ``forecast.pt`` and ``model.json``."""
    calibration = forecast_calibration(model, data["validation"], cfg["trust_tolerance"])
    domain = _training_domain(data["train"])
    say(f"forecast: validation hit rate (von Mises within {100 * cfg['trust_tolerance']:g} %) "
        + ", ".join(f"{v:.2f}" for v in calibration["hit_rate"].values()) + " per step")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "kind": kind, "model": {"class": "Forecaster", "kwargs": model.kwargs},
            "config": cfg, "horizon": horizon, "store": info.signature(),
            "physics": store_info(physics).signature() if kind == "hybrid" else None,
            "physics_constitutive": physics_kind if kind == "hybrid" else None, "splits": splits,
            "calibration": calibration, "training_domain": domain,
            "history": history, "train_seconds": time.perf_counter() - t0, "versions": checkpoint.versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    meta["processes"], meta["device"] = ctx.world, ctx.device.type
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    checkpoint.save(out / "forecast.pt", {"model": meta["model"], "state_dict": state, "kind": kind, "config": cfg,
                                          "horizon": horizon, "store": info.signature()})
    (out / "model.json").write_text(json.dumps(meta, indent=1))
    say(f"forecast: done in {meta['train_seconds']:.0f} s; model in {out}/")
    return meta


FORMAT = "slipstream.forecast/1"


def load_forecaster(model_dir: str | Path) -> tuple[Forecaster, dict]:
    """A trained forecast (``model.json`` + ``forecast.pt``) and its metadata.

    Raises:
        ModelError: not a forecast directory, another format, weights that do not fit.
    """
    model_dir = Path(model_dir)
    meta = checkpoint.read_model_json(model_dir, FORMAT, "a forecast")
    ckpt = checkpoint.load(model_dir / "forecast.pt")
    model = build_forecaster(ckpt["model"]["kwargs"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{model_dir / 'forecast.pt'}: weights do not fit the model ({str(exc).splitlines()[0]})") \
            from None
    return model.eval(), meta


# --------------------------------------------------------------------- evaluation

@torch.no_grad()
def rollout_errors(model: Forecaster | None, dataset: TrajectoryDataset, horizon: int,
                   steps: int | None = None) -> dict[str, Any]:
    """Relative L2 errors of rollouts against the truth, per step and field group.

    ``model=None`` evaluates the physics alone (the partner's trajectory). Errors
    are ``||x_pred - x|| / ||x||`` over all voxels of all samples, per group,
    and ``all`` is the root mean square of the four groups' errors; the residual share
    is ``||F|| / ||x_{n+1} - x_n||`` (hybrid only).

    Returns:
        ``relative_error``: ``{step: {group: value, "all": value}}`` for steps
        ``1..steps``; ``residual_share``: ``{step: value}``; ``samples``.
    """
    steps = steps or (dataset.info.n_steps - 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=_collate)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    num = torch.zeros(steps + 1, len(GROUPS), dtype=torch.float64, device=device)
    den = torch.zeros_like(num)
    res_num = torch.zeros(steps + 1, dtype=torch.float64, device=device)
    res_den = torch.zeros_like(res_num)
    for b in loader:
        b = {k: v.to(device) for k, v in b.items()}
        truth = b["truth"][:, : steps + 1].double()
        if model is None:
            pred = b["physics"][:, : steps + 1].double()
        else:
            model.eval()
            p, r = model.rollout(b["physics"], b["fields"], b["condition"], steps)
            pred = p.double()
            if model.kind == "hybrid":
                res_num[1:] += r.double().square().sum(dim=(0, 2, 3, 4))
                res_den[1:] += (pred[:, 1:] - pred[:, :-1]).square().sum(dim=(0, 2, 3, 4))
        for k, sl in enumerate(features.TARGETS.values()):
            num[:, k] += (pred[:, :, sl] - truth[:, :, sl]).square().sum(dim=(0, 2, 3, 4))
            den[:, k] += truth[:, :, sl].square().sum(dim=(0, 2, 3, 4))
    rel = (num / den.clamp_min(1e-300)).sqrt()
    out = {"samples": len(dataset), "relative_error": {
        str(n): {**{g: float(rel[n, k]) for k, g in enumerate(GROUPS)},
                 "all": float(rel[n].square().mean().sqrt())}
        for n in range(1, steps + 1)}}
    if model is not None and model.kind == "hybrid":
        out["residual_share"] = {str(n): float((res_num[n] / res_den[n].clamp_min(1e-300)).sqrt())
                                 for n in range(1, steps + 1)}
    return out


@torch.no_grad()
def forecast_calibration(model: Forecaster, dataset: TrajectoryDataset, tolerance: float) -> dict[str, Any]:
    """Per rollout step, the share of voxels of ``dataset`` whose von Mises stress is a hit (module docstring).

    Returns:
        ``{"tolerance", "hit_rate": {step: share}, "validated_steps", "samples", "voxels"}``.
    """
    from .uncertainty import tolerance_band, von_mises

    steps = dataset.info.n_steps - 1
    device = next(model.parameters()).device
    hits = torch.zeros(steps + 1, dtype=torch.float64, device=device)
    voxels = 0
    model.eval()
    for b in torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=_collate):
        b = {k: v.to(device) for k, v in b.items()}
        pred, _ = model.rollout(b["physics"], b["fields"], b["condition"], steps)
        sl = features.TARGETS["stress"]
        vm_pred = von_mises(pred[:, :, sl].double(), dim=2)  # states are in physical units
        vm_true = von_mises(b["truth"][:, : steps + 1, sl].double(), dim=2)
        hits += (vm_pred - vm_true).abs().le(tolerance_band(vm_pred, tolerance)).sum(dim=(0, 2, 3)).double()
        voxels += vm_true.shape[0] * vm_true.shape[-1] * vm_true.shape[-2]
    return {"tolerance": float(tolerance), "validated_steps": steps, "samples": len(dataset), "voxels": voxels,
            "hit_rate": {str(n): float(hits[n] / max(voxels, 1)) for n in range(1, steps + 1)}}


def forecast_trust(meta: Mapping[str, Any], steps: int, mode: str, strain: float, summary=None) -> dict[str, Any]:
    """The trust of a forecast of ``steps`` steps to ``strain`` (module docstring).

    Returns:
        ``{"trust", "hit_rate", "domain_factor", "reason"}``; ``reason`` says what
        lowered it (beyond the validated steps, outside the training domain) or is ''.

    Raises:
        ModelError: a model trained before forecasts had a trust (no calibration).
    """
    from .uncertainty import beyond_largest, domain_factor

    cal = meta.get("calibration")
    if not cal:
        raise ModelError("this forecast has no calibration (model.json lacks 'calibration'); retrain it, or run "
                         "surrogate.forecast.calibrate_forecast(MODEL, STORE, PHYSICS)")
    validated = int(cal["validated_steps"])
    rates = [float(cal["hit_rate"][str(n)]) for n in range(1, validated + 1)]
    hit = rates[steps - 1] if steps <= validated else min(rates)
    domain = meta.get("training_domain", {})
    factor, reason = domain_factor(domain, mode, strain, summary)
    reasons = [reason] if reason else []
    if steps > validated:
        reasons.append(f"{steps} steps, validated up to {validated}: the trust is the lowest validated step's")
    if domain.get("strain_max"):
        # the network sees the strain increment per step: one larger than any trained is out of its domain too
        top, increment = float(domain["strain_max"]) / validated, strain / steps
        if increment > top:
            reasons.append(f"strain increment {increment:.3g} per step beyond the largest trained {top:.3g}")
            factor = min(factor, beyond_largest(increment, top))
    return {"trust": hit * factor, "hit_rate": hit, "domain_factor": factor, "reason": "; ".join(reasons)}


def calibrate_forecast(model_dir: str | Path, store: str | Path, physics: str | Path | None = None,
                       tolerance: float | None = None) -> dict[str, Any]:
    """(Re)compute a trained forecast's calibration and training domain on its own splits; writes ``model.json``."""
    model, meta = load_forecaster(model_dir)
    if meta["kind"] == "hybrid" and physics is None:
        raise ConfigError("a hybrid forecast is calibrated with its physics partner store (physics=)")
    partner = physics if meta["kind"] == "hybrid" else None
    info = store_info(store)
    if info.fingerprint != meta["store"].get("fingerprint"):
        raise StoreError(f"{store} is not the store {model_dir} was trained on (its splits index that store)")
    if partner is not None:
        kind = physics_partner(info, store_info(partner))
        if kind != (meta.get("physics_constitutive") or "elastic"):
            raise StoreError(f"{partner}: solved with {kind}, but {model_dir} was trained on "
                             f"{meta.get('physics_constitutive') or 'elastic'}")
    tolerance = float(tolerance if tolerance is not None else meta["config"].get("trust_tolerance",
                                                                                 DEFAULTS["trust_tolerance"]))
    validation = TrajectoryDataset(store, meta["splits"]["validation"], partner)
    train = TrajectoryDataset(store, meta["splits"]["train"], partner)
    meta["config"]["trust_tolerance"] = tolerance
    meta["calibration"] = forecast_calibration(model, validation, tolerance)
    meta["training_domain"] = _training_domain(train)
    (Path(model_dir) / "model.json").write_text(json.dumps(meta, indent=1))
    return meta
