"""``slipstream train``: fit the surrogate ensemble to a campaign store.

Runs on one CPU or GPU, or under ``torchrun`` with DistributedDataParallel (one
process per GPU, or several CPU processes with the gloo backend):

* every rank computes the same split and normaliser statistics (deterministic);
* a ``DistributedSampler`` shards the training samples, with ``set_epoch`` each epoch;
* rank 0 alone logs, validates-and-reduces, and writes checkpoints;
* on CUDA the forward pass runs under bf16 autocast (losses in float32);
* seeds are fixed (``seed + 1000 * member``) and recorded;
* after every epoch ``member_K.last.pt`` holds the full training state (weights,
  optimizer, epoch, best score, RNG): ``--resume`` continues exactly there; the
  best epoch's weights are ``member_K.pt``.

The model directory then gets ``model.json``: config, splits, store signature,
training domain, per-member metrics, calibration, versions. See docs/surrogate.md.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from solver.errors import ConfigError, ModelError, StoreError
from solver.loading import MODES

from . import checkpoint, features, losses
from .config import train_config
from .correction import N_COARSE_MAP, campaign_dataset, coarsening_factor, correction_meta, done_in_both
from .data import CampaignDataset, check_fits, channel_statistics, make_splits, SplitSpec, store_info
from .models import Surrogate, build_model
from .uncertainty import Ensemble, calibrate

FIELD_GROUPS = ("stress", "strain", "rotation", "slip")


class Context:
    """Process group, rank and device of this training process (torchrun or single)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            # rank 0 alone calibrates the ensemble at the end: give the others time to wait for it
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(hours=2))

    def say(self, *args) -> None:
        if self.rank == 0:
            print(*args, flush=True)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def from_rank0(self, value):
        """``value`` of rank 0 on every rank (a plain Python object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack dataset items; ``sample`` and ``step`` become int64 tensors."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return out


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def learning_rate(cfg: dict, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 1 % at the end."""
    total = cfg["epochs"] * steps_per_epoch
    warm = cfg["warmup_epochs"] * steps_per_epoch
    if step < warm:
        return cfg["learning_rate"] * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg["learning_rate"] * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0))))


@torch.no_grad()
def validate(core: Surrogate, loader, ctx: Context, weights: dict) -> dict[str, float]:
    """Loss terms and per-field nRMSE (RMSE / RMS of the target) over a loader, reduced over ranks."""
    core.eval()
    n_terms = len(losses.TERMS)
    acc = torch.zeros(n_terms + 2 * len(FIELD_GROUPS) + 1, dtype=torch.float64)
    for batch in loader:
        batch = _to(batch, ctx.device)
        out = core(batch["fields"], batch["condition"], batch["schmid"])
        terms = losses.loss_terms(core, batch, out)
        bs = batch["target"].shape[0]
        acc[:n_terms] += torch.tensor([float(terms[k]) * bs for k in losses.TERMS], dtype=torch.float64)
        pred = core.physical(out["values"].float())
        for j, g in enumerate(FIELD_GROUPS):
            sl = features.TARGETS[g]
            acc[n_terms + 2 * j] += float((pred[:, sl] - batch["target"][:, sl]).double().square().sum())
            acc[n_terms + 2 * j + 1] += float(batch["target"][:, sl].double().square().sum())
        acc[-1] += bs
    acc = ctx.all_sum(acc)
    n = max(float(acc[-1]), 1.0)
    res = {f"loss_{k}": float(acc[i]) / n for i, k in enumerate(losses.TERMS)}
    res["loss"] = sum(weights.get(k, 0.0) * res[f"loss_{k}"] for k in losses.TERMS)
    for j, g in enumerate(FIELD_GROUPS):
        res[f"nrmse_{g}"] = math.sqrt(float(acc[n_terms + 2 * j]) / max(float(acc[n_terms + 2 * j + 1]), 1e-300))
    # the selection score: the data terms only (the physics terms guide, the data decide)
    res["score"] = sum(res[f"nrmse_{g}"] for g in FIELD_GROUPS)
    return res


def _member_seed(cfg: dict, member: int) -> int:
    return cfg["seed"] + 1000 * member


def train_member(member: int, cfg: dict, stats: dict, datasets: dict, out: Path, ctx: Context,
                 resume: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Train one ensemble member; returns its best validation metrics."""
    seed = _member_seed(cfg, member)
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    info = datasets["train"].info
    kwargs = {"backbone": cfg["model"], "n_fields": features.n_field_channels(info.n_slip),
              "n_condition": features.N_CONDITION, "n_slip": info.n_slip, "backbone_kwargs": cfg["model_kwargs"]}
    if getattr(datasets["train"], "coarse_path", None):  # a low-resolution correction
        kwargs["n_fields"] += N_COARSE_MAP + features.N_TARGETS
        kwargs["n_coarse"] = features.N_TARGETS
    core = build_model(kwargs)
    core.set_statistics(stats)
    core.to(ctx.device)
    model = torch.nn.parallel.DistributedDataParallel(core) if ctx.distributed else core
    opt = torch.optim.AdamW(core.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])

    train_sampler = DistributedSampler(datasets["train"], num_replicas=ctx.world, rank=ctx.rank,
                                       shuffle=True, seed=seed, drop_last=False)
    loader_kw = {"batch_size": cfg["batch_size"], "num_workers": cfg["workers"], "collate_fn": collate,
                 "pin_memory": ctx.device.type == "cuda", "persistent_workers": cfg["workers"] > 0}
    train_loader = DataLoader(datasets["train"], sampler=train_sampler, **loader_kw)
    val_loader = DataLoader(datasets["validation"], shuffle=False,
                            sampler=DistributedSampler(datasets["validation"], num_replicas=ctx.world,
                                                       rank=ctx.rank, shuffle=False),
                            **loader_kw)

    state_path = out / f"member_{member}.last.pt"
    best_path = out / f"member_{member}.pt"
    start_epoch, best, history = 0, None, []
    if resume and state_path.is_file():
        state = checkpoint.load(state_path)
        if state["model"]["kwargs"] != kwargs:
            raise ModelError(f"{state_path}: trained a model {state['model']['kwargs']}, not {kwargs}; "
                             "resume with the config it was started with")
        core.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        log(f"member {member}: resuming after epoch {state['epoch'] + 1}")

    weights = cfg["loss_weights"]
    autocast = ctx.device.type == "cuda"
    steps_per_epoch = len(train_loader)
    for epoch in range(start_epoch, cfg["epochs"]):
        t0 = time.perf_counter()
        train_sampler.set_epoch(epoch)  # a different shuffle every epoch, the same on every rank
        model.train()
        run = {k: 0.0 for k in losses.TERMS}
        n_batches = 0
        for i, batch in enumerate(train_loader):
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
            batch = _to(batch, ctx.device)
            with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=autocast):
                out_ = model(batch["fields"], batch["condition"], batch["schmid"])
            terms = losses.loss_terms(core, batch, out_)
            loss = losses.total_loss(terms, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(core.parameters(), 10.0)
            opt.step()
            for k in run:
                run[k] += float(terms[k].detach())
            n_batches += 1
        val = validate(core, val_loader, ctx, weights)
        improved = best is None or val["score"] < best["score"]
        if improved:
            best = {"epoch": epoch + 1, **val}
        history.append({"epoch": epoch + 1, "train": {k: v / max(n_batches, 1) for k, v in run.items()},
                        "validation": val, "seconds": time.perf_counter() - t0})
        if ctx.rank == 0:
            payload = {"model": {"class": "Surrogate", "kwargs": kwargs}, "config": cfg,
                       "store": info.signature(), "member": member}
            if improved:
                checkpoint.save(best_path, {**payload, "state_dict": core.state_dict(), "epoch": epoch,
                                            "metrics": best})
            checkpoint.save(state_path, {**payload, "state_dict": core.state_dict(), "optimizer": opt.state_dict(),
                                         "rng": torch.get_rng_state(), "epoch": epoch, "best": best,
                                         "history": history})
        log(f"member {member} epoch {epoch + 1}/{cfg['epochs']}: train loss "
            f"{sum(weights[k] * v for k, v in run.items()) / max(n_batches, 1):.4f}, validation nRMSE "
            f"stress {val['nrmse_stress']:.4f} strain {val['nrmse_strain']:.4f} rotation "
            f"{val['nrmse_rotation']:.4f} slip {val['nrmse_slip']:.4f}, equilibrium {val['loss_equilibrium']:.4f}"
            f"{' *' if improved else ''} ({time.perf_counter() - t0:.0f} s)")
        ctx.barrier()
    return {"best": best, "history": history}


def _refuse_foreign(out: Path, cfg: dict, info, resume: bool) -> None:
    """A model directory holds one training run: refuse to mix runs or overwrite one silently."""
    meta = out / "train_config.json"
    started = meta.is_file() or any(out.glob("member_*.pt"))
    if not started:
        return
    if not resume:
        raise ModelError(f"{out}: holds a training run already; pass --resume to continue it or choose another --out")
    if not meta.is_file():
        raise ModelError(f"{out}: has checkpoints but no train_config.json; cannot resume safely")
    before = json.loads(meta.read_text())
    if before["config"] != cfg:
        diff = sorted(k for k in set(cfg) | set(before["config"]) if cfg.get(k) != before["config"].get(k))
        raise ModelError(f"{out}: was trained with another config (differs in {', '.join(diff)}); "
                         "resume with the same config")
    if before["store"]["fingerprint"] != info.fingerprint:
        raise ModelError(f"{out}: was trained on another store (config fingerprint "
                         f"{before['store']['fingerprint'][:12]}, this one {info.fingerprint[:12]})")


def training_domain(store: str, samples: list[int], dataset: CampaignDataset | None = None,
                    maps=None) -> dict[str, Any]:
    """Load modes, strain range and map statistics of the training samples (the trust score's domain factor).

    ``maps``: the samples' map channels (:func:`surrogate.features.sample_inputs`), when already decoded.
    """
    from solver import store as _store

    from .uncertainty import microstructure_domain

    group = _store.open_store(store, "r")
    modes = group["load_mode"][:][samples]
    strains = group["load_strain"][:][samples]
    if maps is None:
        dataset = dataset or CampaignDataset(store, samples)
        maps = (dataset.sample_data(i).fields for i in samples)
    n_map = features.n_field_channels(store_info(store).n_slip)  # the map's channels (a correction appends more)
    summaries = np.stack([features.microstructure_summary(f.reshape(-1, *f.shape[-2:])[:n_map]) for f in maps])
    return {"modes": sorted({MODES[int(m)] for m in modes}), "strain_min": float(strains.min()),
            "strain_max": float(strains.max()), "microstructure": microstructure_domain(summaries)}


def train(store: str | Path, out: str | Path, config=None, *, resume: bool = False,
          overrides: dict | None = None, quiet: bool = False, coarse: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) a surrogate ensemble on a campaign store; returns ``model.json``'s content.

    Args:
        store: campaign store; out: model directory (created).
        coarse: the store's coarse partner (``slipstream campaign CFG --coarsen K``):
            train a low-resolution correction (:mod:`surrogate.correction`) instead
            of a surrogate.
        config: training config mapping or YAML path (:func:`surrogate.config.train_config`).
        resume: continue a run in ``out`` (same config and store), skipping finished members.
        overrides: config keys that replace those of ``config`` (e.g. from the CLI).
        quiet: no per-epoch lines.

    Raises:
        ConfigError, StoreError, ModelError: bad config, unusable store, foreign model directory.
    """
    ctx = Context()
    cfg = train_config(config, **(overrides or {}))
    info = store_info(store)
    out = Path(out)
    # rank 0 decides (directory, splits); every rank then raises the same error or gets the same splits,
    # so no rank waits in a collective call for one that failed
    decision = {"error": None, "splits": None}
    if ctx.rank == 0:
        try:
            if out.exists() and not out.is_dir():
                raise ModelError(f"{out}: exists and is not a directory")
            if coarse is not None and cfg["augment"]:
                raise ConfigError("train config: augment is for the surrogate's own training; a "
                                  "low-resolution correction's coarse-partner channels are not transformed")
            _refuse_foreign(out, cfg, info, resume)
            recorded = out / "train_config.json"
            if resume and recorded.is_file():
                # the recorded split, never a new one: the store may have gained samples since
                decision["splits"] = json.loads(recorded.read_text())["splits"]
            else:
                decision["splits"] = make_splits(store, SplitSpec.from_config(cfg["split"]))
                if coarse is not None:
                    coarsening_factor(info, store_info(coarse))  # the partner, checked before anything is written
                    decision["splits"] = {k: done_in_both(v, coarse) for k, v in decision["splits"].items()}
            if not decision["splits"]["validation"]:
                raise ConfigError(f"{store}: too few samples for a validation split "
                                  f"({sum(map(len, decision['splits'].values()))} done)")
            out.mkdir(parents=True, exist_ok=True)
            (out / "train_config.json").write_text(json.dumps({"config": cfg, "store": info.signature(),
                                                               "splits": decision["splits"]}, indent=1))
        except (ConfigError, ModelError, StoreError) as exc:
            decision["error"] = (type(exc).__name__, str(exc))
    decision = ctx.from_rank0(decision)
    if decision["error"]:
        kind, msg = decision["error"]
        raise {"ConfigError": ConfigError, "ModelError": ModelError, "StoreError": StoreError}[kind](msg)
    splits = decision["splits"]
    log = (lambda msg: None) if quiet else ctx.say
    datasets = {name: campaign_dataset(store, splits[name], coarse, cache_samples=cfg["cache_samples"],
                                       **({"augment": True} if name == "train" and cfg["augment"] else {}))
                for name in ("train", "validation")}
    log(f"train: {info.path}: {len(splits['train'])} training, {len(splits['validation'])} validation, "
        f"{len(splits['test'])} test, {len(splits['held_out'])} held-out samples; "
        f"{cfg['model']} {cfg['model_kwargs']} x {cfg['ensemble']} member(s), {cfg['epochs']} epochs, "
        f"{ctx.world} process(es) on {ctx.device.type}")
    t0 = time.perf_counter()
    stats = channel_statistics(datasets["train"])
    results = []
    for member in range(cfg["ensemble"]):
        best_path = out / f"member_{member}.pt"
        state_path = out / f"member_{member}.last.pt"
        finished = best_path.is_file() and state_path.is_file() and \
            checkpoint.load(state_path)["epoch"] + 1 >= cfg["epochs"]
        if resume and finished:
            state = checkpoint.load(state_path)
            results.append({"best": state["best"], "history": state["history"]})
            log(f"member {member}: finished before, kept")
            continue
        results.append(train_member(member, cfg, stats, datasets, out, ctx, resume, log))

    meta = None
    if ctx.rank == 0:
        members = [f"member_{m}.pt" for m in range(cfg["ensemble"])]
        meta = {"format": checkpoint.FORMAT, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "model": {"class": "Surrogate", "kwargs": checkpoint.load(out / members[0])["model"]["kwargs"]},
                "members": members, "config": cfg, "store": info.signature(), "splits": splits,
                "training_domain": training_domain(str(store), splits["train"], datasets["train"]),
                "metrics": {"members": [r["best"] for r in results]}, "versions": checkpoint.versions(),
                **({"coarse": correction_meta(datasets["train"])} if coarse is not None else {}),
                "train_seconds": time.perf_counter() - t0, "processes": ctx.world, "device": ctx.device.type}
        ensemble = Ensemble([_load_member(out / m) for m in members], meta).to(ctx.device)
        ensemble.symmetric = cfg["augment"]  # a model trained on the symmetric copies predicts with them
        cal_loader = DataLoader(datasets["validation"], batch_size=cfg["batch_size"], collate_fn=collate)
        meta["calibration"] = calibrate(ensemble, cal_loader, cfg["trust_tolerance"])
        (out / "model.json").write_text(json.dumps(meta, indent=1))
        log(f"train: done in {meta['train_seconds']:.0f} s; calibration: spread x "
            f"{meta['calibration']['scale']['von_mises']:.2f} (von Mises), trust ECE "
            f"{meta['calibration']['expected_calibration_error']:.3f}; model in {out}/")
    ctx.barrier()
    return meta


def _load_member(path: Path) -> Surrogate:
    ckpt = checkpoint.load(path)
    model = build_model(ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def check_model_fits_store(meta: dict, store: str | Path) -> None:
    """Refuse a store that the model in ``meta`` (``model.json``) was not made for."""
    check_fits(meta["store"], store_info(store))
