"""Training configuration: defaults, checks, plain-type form.

A config is YAML (or a dict); every key is optional and unknown keys are
refused. The defaults are those of the shipped model (docs/surrogate.md)::

    model: fno                       # a key of surrogate.models.BACKBONES: fno | unet
    model_kwargs: {width: 24, modes: 10, layers: 4}
    ensemble: 3                      # independently seeded members (uncertainty)
    epochs: 30
    batch_size: 16
    learning_rate: 2.0e-3            # AdamW, linear warm-up then cosine decay
    weight_decay: 1.0e-4
    warmup_epochs: 1
    loss_weights: {...}              # surrogate.losses.DEFAULT_WEIGHTS
    split: {validation: 0.1, test: 0.1, seed: 0, held_out: [{direction: [1, 1, 1]}]}
    seed: 0
    workers: 0                       # DataLoader workers per rank
    cache_samples: 512               # decoded samples kept per worker
    trust_tolerance: 0.05            # relative von Mises error the trust score asks for
    augment: false                   # train on the square's 8 symmetric copies of each map (surrogate.symmetry)
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Mapping

from solver.errors import ConfigError

from .data import SplitSpec
from .losses import DEFAULT_WEIGHTS, TERMS
from .models import BACKBONES

DEFAULT_MODEL_KWARGS = {"fno": {"width": 24, "modes": 10, "layers": 4}, "unet": {"width": 16, "depth": 3}}

DEFAULTS: dict[str, Any] = {
    "model": "fno",
    "model_kwargs": None,  # the backbone's defaults above
    "ensemble": 3,
    "epochs": 30,
    "batch_size": 16,
    "learning_rate": 2.0e-3,
    "weight_decay": 1.0e-4,
    "warmup_epochs": 1,
    "loss_weights": None,
    "split": None,
    "seed": 0,
    "workers": 0,
    "cache_samples": 512,
    "trust_tolerance": 0.05,
    "augment": False,
}


def _positive(cfg, key, kind=int):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v) \
            or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"train config: {key} must be a positive {'integer' if kind is int else 'number'}, got {v!r}")
    cfg[key] = kind(v)


def train_config(cfg: Mapping[str, Any] | str | Path | None = None, **overrides) -> dict[str, Any]:
    """The full, checked training config (plain types) from a mapping or YAML file plus overrides.

    Raises:
        ConfigError: unknown keys, wrong types or ranges, unknown model or loss term.
    """
    if isinstance(cfg, (str, Path)):
        import yaml

        path = Path(cfg)
        if not path.is_file():
            raise ConfigError(f"{path}: no such training config")
        try:
            cfg = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:120]})") from None
    cfg = dict(cfg or {})
    if not all(isinstance(k, str) for k in cfg):
        raise ConfigError("train config: keys must be strings")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"train config: unknown key(s) {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    out = copy.deepcopy(DEFAULTS)
    out.update(copy.deepcopy(cfg))
    if out["model"] not in BACKBONES:
        raise ConfigError(f"train config: model '{out['model']}' is unknown; known: {', '.join(BACKBONES)}")
    kwargs = dict(DEFAULT_MODEL_KWARGS[out["model"]])
    if out["model_kwargs"] is not None:
        if not isinstance(out["model_kwargs"], dict):
            raise ConfigError("train config: model_kwargs must be a mapping")
        kwargs.update(out["model_kwargs"])
    for k, v in kwargs.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"train config: model_kwargs.{k} must be a positive integer, got {v!r}")
    out["model_kwargs"] = kwargs
    for key in ("ensemble", "epochs", "batch_size", "cache_samples"):
        _positive(out, key)
    if out["ensemble"] < 2:
        raise ConfigError("train config: ensemble must be at least 2 (the trust score comes from the members' spread)")
    for key in ("learning_rate", "trust_tolerance"):
        _positive(out, key, float)
    for key in ("weight_decay", "warmup_epochs", "workers", "seed"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"train config: {key} must be a non-negative number, got {v!r}")
    out["workers"], out["seed"] = int(out["workers"]), int(out["seed"])
    if not isinstance(out["augment"], bool):
        raise ConfigError(f"train config: augment must be true or false, got {out['augment']!r}")
    weights = dict(DEFAULT_WEIGHTS)
    if out["loss_weights"] is not None:
        if not isinstance(out["loss_weights"], dict):
            raise ConfigError("train config: loss_weights must be a mapping")
        bad = set(out["loss_weights"]) - set(TERMS)
        if bad:
            raise ConfigError(f"train config: unknown loss term(s) {sorted(bad)}; terms: {', '.join(TERMS)}")
        weights.update({k: float(v) for k, v in out["loss_weights"].items()})
    out["loss_weights"] = weights
    out["split"] = SplitSpec.from_config(out["split"]).as_dict()
    return out
