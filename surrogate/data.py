"""Campaign stores as PyTorch datasets: store signature, splits, lazy per-worker reading.

One training item is one *(sample, output step)* pair of a campaign store
(:mod:`solver.store`): the step-independent inputs of the sample (orientation
encoding, load-aware features, grain boundaries; :func:`surrogate.features.sample_inputs`),
the load condition at that step, and the per-voxel targets at that step.

The store is opened lazily, once per DataLoader worker (a Zarr handle must not
cross a ``fork``), and decoded samples are cached per worker, so an epoch after
the first reads nothing from disk when the cache holds the split.

Splits are by *sample* (never by step: the steps of one sample are strongly
correlated), drawn with a recorded seed after the held-out out-of-distribution
samples are set aside by rule (a load direction, a load mode or a strain range
never seen in training).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from solver import store as _store
from solver.errors import ConfigError, StoreError
from solver.loading import MODES
from solver.materials import material_from_config
from solver.rotations import euler_to_matrix

from . import features, symmetry


@dataclass(frozen=True)
class StoreInfo:
    """What a model needs to know about a campaign store (from its root attributes)."""

    path: str
    fingerprint: str
    lattice: str
    n_slip: int
    grid_shape: tuple[int, int, int]  # (z, y, x) as in the store attrs
    n_steps: int
    material: dict
    voxel_size: tuple[float, float, float]  # (x, y, z), m

    def signature(self) -> dict[str, Any]:
        """Plain-type description stored in checkpoints and compared on load."""
        return {"schema": _store.SCHEMA, "fingerprint": self.fingerprint, "lattice": self.lattice,
                "n_slip": self.n_slip, "grid_shape": list(self.grid_shape), "n_steps": self.n_steps,
                "material": self.material, "voxel_size": list(self.voxel_size)}


def store_info(path: str | Path) -> StoreInfo:
    """Read and check the attributes of a campaign store for the surrogate.

    Raises:
        StoreError: not a campaign store, another schema, or a 3-D grid (the
            models are 2-D: maps with ``z = 1``).
    """
    group = _store.open_store(path, "r")
    a = group.attrs
    grid = tuple(int(v) for v in a["grid_shape"])
    if grid[0] != 1:
        raise StoreError(f"{path}: the surrogate learns 2-D maps (z = 1); this store's grid is {list(grid)} (z, y, x)")
    cfg = a.get("config", {})
    size = cfg.get("microstructure", {}).get("size", [1.0, 1.0, 1.0])
    # the solved grid (a coarsened campaign solves fewer voxels than its config generates)
    voxel = tuple(float(s) / float(c) for s, c in zip(size, grid[::-1]))
    material = dict(a["material"])
    if "materials" in material:
        raise StoreError(f"{path}: a campaign over several materials; the surrogate learns one material per model "
                         "(make one store per material)")
    if int(a["n_steps"]) < 2:
        raise StoreError(f"{path}: {a['n_steps']} output step(s); the surrogate needs the initial state and at "
                         "least one loaded step")
    return StoreInfo(path=str(path), fingerprint=str(a["config_fingerprint"]), lattice=str(a["lattice"]),
                     n_slip=int(a["n_slip"]), grid_shape=grid, n_steps=int(a["n_steps"]), material=material,
                     voxel_size=voxel)


def check_fits(trained_on: Mapping[str, Any], info: StoreInfo) -> None:
    """Refuse a store whose physics differs from the one a model was trained on.

    The grid size may differ (the FNO is resolution-agnostic; the U-Net checks
    divisibility itself); the lattice, the number of slip systems and the
    material parameters may not.

    Raises:
        StoreError: naming the first mismatch.
    """
    if trained_on.get("schema") != _store.SCHEMA:
        raise StoreError(f"the model was trained on a store of schema {trained_on.get('schema')!r}, "
                         f"not {_store.SCHEMA!r}")
    for key in ("lattice", "n_slip"):
        if trained_on[key] != getattr(info, key):
            raise StoreError(f"{info.path}: {key} is {getattr(info, key)!r} but the model was trained on "
                             f"{trained_on[key]!r}")
    mine, theirs = trained_on["material"], info.material
    differing = sorted(k for k in set(mine) | set(theirs)
                       if k not in ("reference", "units") and mine.get(k) != theirs.get(k))
    if differing:
        raise StoreError(f"{info.path}: material {theirs.get('name')!r} differs from the model's "
                         f"{mine.get('name')!r} in {', '.join(differing)}")


# ---------------------------------------------------------------------------- splits

SPLITS = ("train", "validation", "test", "held_out")


@dataclass
class SplitSpec:
    """How samples are split.

    Attributes:
        validation, test: fractions of the in-distribution samples.
        seed: the shuffle seed (recorded with the model).
        held_out: rules for the out-of-distribution split, any of
            ``{"direction": [x, y, z]}`` (load axis parallel to it within 1 degree, either sign),
            ``{"mode": name}``, ``{"strain_above": s}``, ``{"texture": t}`` (``t`` the index
            of a texture in the campaign config's list, or its name: ``random``, a
            component name such as ``cube``, or ``fibre``); a sample matching any rule is held out.
    """

    validation: float = 0.1
    test: float = 0.1
    seed: int = 0
    held_out: list = field(default_factory=lambda: [{"direction": [1, 1, 1]}])

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "SplitSpec":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"validation", "test", "seed", "held_out"}
        if unknown:
            raise ConfigError(f"split: unknown key(s) {sorted(unknown)}")
        spec = cls(**cfg)
        for frac in (spec.validation, spec.test):
            if not (isinstance(frac, (int, float)) and 0 <= frac < 1):
                raise ConfigError(f"split: fractions must be in [0, 1), got {frac!r}")
        if spec.validation <= 0:
            raise ConfigError("split: validation must be positive (it selects the best epoch and calibrates the trust)")
        if spec.validation + spec.test >= 1:
            raise ConfigError("split: validation + test must leave samples to train on")
        rules = spec.held_out if isinstance(spec.held_out, list) else [spec.held_out]
        for rule in rules:
            if not (isinstance(rule, dict) and len(rule) == 1
                    and next(iter(rule)) in ("direction", "mode", "strain_above", "texture")):
                raise ConfigError("split.held_out: each rule is one of direction/mode/strain_above/texture, "
                                  f"got {rule!r}")
            if "mode" in rule and rule["mode"] not in MODES:
                raise ConfigError(f"split.held_out: unknown mode {rule['mode']!r}")
        spec.held_out = rules
        return spec

    def as_dict(self) -> dict:
        return {"validation": self.validation, "test": self.test, "seed": self.seed, "held_out": self.held_out}


def _texture_name(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and "component" in entry:
        return str(entry["component"].get("name"))
    return next(iter(entry)) if isinstance(entry, dict) and entry else str(entry)


def _sample_textures(group, samples: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Texture index of each sample (from the campaign's sample plan) and the texture names."""
    from solver.campaign import parse_campaign, sample_plan

    try:
        spec = parse_campaign(dict(group.attrs["config"]))
    except Exception as exc:  # not a campaign config (a simulate run, a synthetic store)
        raise StoreError(f"texture rules need a store made by 'slipstream campaign' ({' '.join(str(exc).split())[:80]})"
                         ) from None
    return np.array([sample_plan(spec, int(i))["texture"] for i in samples]), [_texture_name(t) for t in spec.textures]


def _held_out_mask(rule: Mapping[str, Any], modes: np.ndarray, directions: np.ndarray,
                   strains: np.ndarray, textures=None) -> np.ndarray:
    if "texture" in rule:
        index, names = textures
        want = rule["texture"]
        if isinstance(want, str):
            if want not in names:
                raise ConfigError(f"split.held_out: texture {want!r} is not in the campaign's textures {names}")
            return np.isin(index, [k for k, n in enumerate(names) if n == want])
        return index == int(want)
    if "direction" in rule:
        d = np.asarray(rule["direction"], dtype=float)
        d = d / np.linalg.norm(d)
        return np.abs(directions @ d) > math.cos(math.radians(1.0))  # parallel within 1 degree, either sign
    if "mode" in rule:
        return modes == MODES.index(rule["mode"])
    return strains > float(rule["strain_above"])


def make_splits(path: str | Path, spec: SplitSpec) -> dict[str, list[int]]:
    """Split the *done* samples of a store: held-out by rule, the rest shuffled by ``spec.seed``.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...], "held_out": [...]}``
        (sorted sample indices).

    Raises:
        StoreError: no finished sample, or too few to leave a training set.
    """
    group = _store.open_store(path, "r")
    done = np.flatnonzero(_store.sample_status(group) == _store.DONE)
    if done.size == 0:
        raise StoreError(f"{path}: no finished samples to learn from")
    modes = group["load_mode"][:][done]
    directions = group["load_direction"][:][done]
    strains = group["load_strain"][:][done]
    textures = _sample_textures(group, done) if any("texture" in r for r in spec.held_out) else None
    held = np.zeros(done.size, dtype=bool)
    for rule in spec.held_out:
        held |= _held_out_mask(rule, modes, directions, strains, textures)
    rest = done[~held]
    rng = np.random.default_rng(spec.seed)
    rest = rest[rng.permutation(rest.size)]
    n_val = int(round(spec.validation * rest.size))
    n_test = int(round(spec.test * rest.size))
    if spec.validation > 0 and rest.size >= 3:
        n_val = max(n_val, 1)
    splits = {"validation": rest[:n_val], "test": rest[n_val:n_val + n_test], "train": rest[n_val + n_test:],
              "held_out": done[held]}
    if splits["train"].size == 0:
        raise StoreError(f"{path}: {done.size} finished sample(s) leave none to train on after the split")
    return {k: sorted(int(i) for i in v) for k, v in splits.items()}


# ---------------------------------------------------------------------------- dataset

@dataclass
class SampleData:
    """Decoded arrays of one sample: inputs, condition per step, targets per step."""

    fields: np.ndarray      # (Cf, ny, nx) float32
    schmid: np.ndarray      # (ns, ny, nx) float32
    g0: np.ndarray          # (9, ny, nx) float32
    condition: np.ndarray   # (n_steps, N_CONDITION) float32
    targets: np.ndarray     # (n_steps, N_TARGETS, ny, nx) float32
    dominant: np.ndarray    # (n_steps, ny, nx) int64
    macro_stress: np.ndarray  # (n_steps, 6) float32
    boundary: np.ndarray    # (ny, nx) bool


def applied_strain(load_strain: float, time: np.ndarray) -> np.ndarray:
    """Applied engineering strain magnitude at each output step (linear ramp over the load path)."""
    t = np.asarray(time, dtype=float)
    return float(load_strain) * t / t[-1] if t[-1] > 0 else np.zeros_like(t)


def read_sample(group, index: int, info: StoreInfo, stiffness: np.ndarray) -> SampleData:
    """Decode one sample of an open store into model inputs and targets."""
    mode = MODES[int(group["load_mode"][index])]
    if mode == "deformation_gradient":
        raise StoreError(f"sample {index}: general deformation-gradient loads are not learned by the surrogate")
    direction = group["load_direction"][index]
    euler0 = np.asarray(group["euler0"][index][0], dtype=float)  # (ny, nx, 3)
    grain_id = np.asarray(group["grain_id"][index][0])
    inputs = features.sample_inputs(euler0, grain_id, mode, direction, info.lattice, stiffness)
    time = group["time"][index]
    strain_now = applied_strain(group["load_strain"][index], time)
    rate = float(group["load_rate"][index])
    condition = np.stack([features.load_condition(mode, direction, e, rate) for e in strain_now]).astype(np.float32)
    g0 = euler_to_matrix(euler0)
    targets, dominant = sample_targets(group, index)
    return SampleData(fields=inputs["fields"], schmid=inputs["schmid"],
                      g0=np.moveaxis(g0.reshape(g0.shape[:2] + (9,)), -1, 0).astype(np.float32),
                      condition=condition, targets=targets, dominant=dominant,
                      macro_stress=np.asarray(group["macro_stress"][index], dtype=np.float32),
                      boundary=inputs["fields"][-2] > 0.5)


def sample_targets(group, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(n_steps, 16, ny, nx)`` and dominant slip systems ``(n_steps, ny, nx)`` of a 2-D store sample
    (:func:`surrogate.features.step_targets` at every output step, on the store's own grid)."""
    g0 = euler_to_matrix(np.asarray(group["euler0"][index][0], dtype=float))
    stress, strain = group["stress"][index][:, 0], group["strain"][index][:, 0]
    euler, slip = group["euler"][index][:, 0], group["slip"][index][:, 0]
    steps = [features.step_targets(g0, stress[s], strain[s], euler[s], slip[s]) for s in range(stress.shape[0])]
    return np.stack([t["values"] for t in steps]), np.stack([t["dominant"] for t in steps])


def partner_value(store: StoreInfo, partner: StoreInfo, section: str, key: str, make: str,
                  ignore: tuple[tuple[str, str], ...] = ()) -> Any:
    """``config[section][key]`` of ``partner``, a store of the same campaign as ``store`` apart from that key.

    A partner store solves the same samples (same seed, maps and loads) another
    way: on a coarser grid (``microstructure.coarsen``) or with other physics
    (``solver.constitutive``). The sample count may differ, and so may the
    ``(section, key)`` pairs of ``ignore``.

    Raises:
        StoreError: the campaigns differ elsewhere (``make`` says how to make a partner).
    """
    a = dict(_store.open_store(store.path, "r").attrs["config"])
    b = dict(_store.open_store(partner.path, "r").attrs["config"])
    sec_a, sec_b = dict(a.get(section) or {}), dict(b.get(section) or {})
    value = sec_b.pop(key, None)
    sec_a.pop(key, None)
    a[section], b[section] = sec_a, sec_b
    for sec, k in ignore:
        for cfg in (a, b):
            if isinstance(cfg.get(sec), dict):
                cfg[sec] = {kk: vv for kk, vv in cfg[sec].items() if kk != k}
    a.pop("samples", None)
    b.pop("samples", None)
    if a != b:
        differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise StoreError(f"{partner.path} is not a partner of {store.path}: their campaigns differ in "
                         f"{', '.join(differing)} (make one with: {make})")
    if store.n_steps != partner.n_steps:
        raise StoreError(f"{partner.path}: {partner.n_steps} output steps, {store.path} has {store.n_steps}")
    return value


def material_stiffness(material: Mapping[str, Any]) -> np.ndarray:
    """Crystal-frame stiffness ``(3, 3, 3, 3)`` (Pa) of a store's ``material`` attribute."""
    return material_from_config({k: v for k, v in material.items() if k != "units"}).stiffness_tensor()


class CampaignDataset(torch.utils.data.Dataset):
    """(sample, step) items of a campaign store, read lazily and cached per worker.

    Args:
        path: the campaign store.
        samples: sample indices (done samples; see :func:`make_splits`).
        steps: output steps to serve (default: every step after the initial one).
        cache_samples: decoded samples kept per worker (LRU).
        augment: serve each item as one of the square's symmetric copies of its sample,
            drawn at random from torch's generator (:mod:`surrogate.symmetry`; training only).
        element: serve every item as this one symmetric copy (one of
            :data:`surrogate.symmetry.ELEMENTS`; for measuring how equivariant a model is).

    Each item is a dict of tensors: ``fields (Cf, ny, nx)``, ``condition (Nc,)``,
    ``schmid (ns, ny, nx)``, ``g0 (9, ny, nx)``, ``target (16, ny, nx)``,
    ``dominant (ny, nx)``, ``macro_stress (6,)``, ``boundary (ny, nx)``,
    ``sample`` and ``step`` (ints).
    """

    def __init__(self, path: str | Path, samples, steps=None, cache_samples: int = 512, augment: bool = False,
                 element: tuple[int, bool] | None = None):
        self.path = str(path)
        self.augment = bool(augment)
        self.element = None if element is None else (int(element[0]), bool(element[1]))
        self.info = store_info(path)
        self.samples = [int(i) for i in samples]
        self.steps = list(range(1, self.info.n_steps)) if steps is None else [int(s) for s in steps]
        self.cache_samples = int(cache_samples)
        self._group = None
        self._cache: collections.OrderedDict[int, SampleData] = collections.OrderedDict()
        self._stiffness = material_stiffness(self.info.material)

    def __len__(self) -> int:
        return len(self.samples) * len(self.steps)

    def __getstate__(self):
        # a worker gets no open handle and no cache: it opens the store itself
        state = self.__dict__.copy()
        state["_group"] = None
        state["_cache"] = collections.OrderedDict()
        return state

    def sample_data(self, index: int) -> SampleData:
        """The decoded sample ``index`` (a store sample index), from the cache if there."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        if self._group is None:
            self._group = _store.open_store(self.path, "r")
        data = read_sample(self._group, index, self.info, self._stiffness)
        self._cache[index] = data
        while len(self._cache) > self.cache_samples:
            self._cache.popitem(last=False)
        return data

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        sample = self.samples[item // len(self.steps)]
        step = self.steps[item % len(self.steps)]
        d = self.sample_data(sample)
        arrays = {"fields": d.fields, "condition": d.condition[step], "schmid": d.schmid, "g0": d.g0,
                  "target": d.targets[step], "dominant": d.dominant[step], "macro_stress": d.macro_stress[step],
                  "boundary": d.boundary}
        if self.augment:
            elements = symmetry.elements_for(d.boundary.shape)
            arrays = symmetry.transform_item(arrays, elements[int(torch.randint(len(elements), ()))])
        elif self.element is not None:
            arrays = symmetry.transform_item(arrays, self.element)
        return {**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
                "sample": sample, "step": step}


def channel_statistics(dataset: CampaignDataset, max_samples: int = 128) -> dict[str, np.ndarray]:
    """Per-channel mean and standard deviation of inputs, condition and targets.

    Computed on (up to ``max_samples`` of) the given dataset's samples, all its steps.
    Constant channels get a standard deviation of 1 (nothing to scale).
    """
    def moments(blocks, axes):
        x = np.concatenate(blocks, axis=0).astype(np.float64)
        mean = x.mean(axis=axes)
        std = x.std(axis=axes)
        return mean, np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)

    f, c, t = [], [], []
    for s in dataset.samples[:max_samples]:
        d = dataset.sample_data(s)
        f.append(d.fields[dataset.steps] if d.fields.ndim == 4 else d.fields[None])  # per step: a correction
        c.append(d.condition[dataset.steps])
        t.append(d.targets[dataset.steps])
    fm, fs = moments(f, (0, 2, 3))
    cm, cs = moments(c, (0,))
    tm, ts = moments(t, (0, 2, 3))
    # the mean of a stress or strain component carries the load: keep tensors centred on 0 so
    # that a rotated load does not meet a shifted zero; one scale for all components of a tensor
    for name in ("stress", "strain", "rotation"):
        sl = features.TARGETS[name]
        tm[sl] = 0.0
        ts[sl] = math.sqrt(float(np.mean(np.concatenate([x[:, sl] for x in t]).astype(np.float64) ** 2)))
    return {"fields_mean": fm, "fields_std": fs, "condition_mean": cm, "condition_std": cs,
            "target_mean": tm, "target_std": ts}
