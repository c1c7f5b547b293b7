"""``slipstream campaign``: many samples (microstructure x load) into one resumable Zarr store.

A campaign config describes *distributions*, not lists of runs (every key and
default: ``docs/campaign.md``)::

    samples: 300
    seed: 2026
    microstructure: {cells: [32, 32, 1], grains: [8, 40], textures: [random]}
    materials: [Cu]
    boundary: periodic
    loading: {modes: [tension, compression, shear], directions: random,
              strain: [0.005, 0.03], rate: 1.0e-3, increments: 10}
    output: {every: 1}
    solver: {max_cutbacks: 8}

Sample ``i`` is drawn from its own random stream
``np.random.SeedSequence(seed, spawn_key=(i,))`` (the same as
``SeedSequence(seed).spawn(n)[i]``), so it depends on ``(seed, i)`` and the
distributions only: not on ``samples``, on the number of ranks, on the ranks per
sample or on the order in which samples are solved. Each sample becomes an
ordinary ``slipstream simulate`` config (:func:`sample_config`), which is
checked by :func:`solver.config.prepare_simulation` and solved by
:func:`solver.simulate.solve_sample`.

Parallel layout (:func:`run_campaign`): ``COMM_WORLD`` is split into groups of
``ranks_per_sample`` ranks; each group solves one sample at a time and the
group's rank 0 writes it (one writer per chunk). Work is handed out
dynamically: world rank 0 runs a small dispatcher thread that answers "next
sample?" requests (``Iprobe`` + short sleeps on a duplicated communicator, so
it costs nothing while rank 0 solves its own samples) and prints one progress
line per finished sample. A group that finishes early just asks again, so no
group idles behind a slow one.

Store contract (:mod:`solver.store`): world rank 0 creates (or opens, checks,
extends) the store before any rank writes; a sample is written, then marked
done; a failed sample (``SolverError`` after all cutbacks) is marked failed with
its reason and the campaign goes on; metadata are consolidated once at the end.
A rerun of the same command redoes every sample that is not done.

This module imports mpi4py, dolfinx and the solver lazily: :func:`load_campaign`,
:func:`sample_plan`, :func:`sample_config`, :func:`inspect_store` and
:func:`plot_sample` work without the FEM stack.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import store
from .errors import ConfigError, InputFileError, SlipstreamError, StoreError

#: Top-level keys of a campaign config.
TOP_KEYS = ("samples", "seed", "microstructure", "materials", "boundary", "loading", "output", "solver")
MICROSTRUCTURE_KEYS = ("cells", "size", "grains", "textures", "periodic", "coarsen")
LOADING_KEYS = ("modes", "directions", "strain", "rate", "increments")
OUTPUT_KEYS = ("every",)
#: Load modes a campaign may draw (``deformation_gradient`` needs a whole F: use ``simulate``).
CAMPAIGN_MODES = ("tension", "compression", "shear", "plane_strain", "biaxial")

DEFAULTS = {
    "seed": 0,
    "microstructure": {"size": None, "grains": [10, 10], "textures": ["random"], "periodic": True},
    "materials": [{"preset": "Cu"}],
    "boundary": "periodic",
    "loading": {"modes": ["tension"], "directions": [[1.0, 0.0, 0.0]], "strain": [0.02, 0.02],
                "rate": 1.0e-3, "increments": 10},
    "output": {"every": 1},
    "solver": {},
}

#: Default physical edge of the longest grid side, metres (cubic voxels).
DEFAULT_EXTENT = 1.0e-4

_TAG_REQUEST, _TAG_INDEX = 71, 72
_POLL_S = 0.005


# ====================================================================== config ==

@dataclass
class CampaignSpec:
    """A checked campaign config.

    Attributes:
        config: the normalized config (every key present, canonical forms); it is
            what the store records and fingerprints.
        samples: number of samples.
        seed: root seed.
        cells: ``(nx, ny, nz)`` of the generated maps.
        coarsen: the maps are solved on a grid this many times coarser
            (:func:`solver.microstructure.coarsen`; 1: as generated).
        size: ``(Lx, Ly, Lz)`` metres.
        grains: inclusive ``(min, max)``.
        textures: texture specs to draw from.
        periodic: periodic Voronoi tessellation.
        materials: material config mappings (normalized).
        material_objects: the matching :class:`solver.materials.Material` objects.
        modes: load modes to draw from.
        directions: ``"random"`` or a list of unit 3-vectors.
        strain: inclusive ``(min, max)`` magnitude, drawn uniformly.
        rate: strain rate, 1/s.
        increments: load increments per sample.
        every: output every n-th increment.
        boundary: the ``boundary`` value as given (``periodic``, ``specimen`` or a mapping).
        solver: the ``solver`` section as given.
        base_dir: directory of the config file.
    """

    config: dict
    samples: int
    seed: int
    cells: tuple[int, int, int]
    size: tuple[float, float, float]
    grains: tuple[int, int]
    textures: list
    periodic: bool
    materials: list
    material_objects: list
    modes: list
    directions: Any
    strain: tuple[float, float]
    rate: float
    increments: int
    every: int
    boundary: Any
    solver: dict
    base_dir: pathlib.Path
    coarsen: int = 1

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """``(nz, ny, nx)`` of the solved (and stored) grid."""
        nx, ny, nz = self.cells
        k = self.coarsen
        return (nz // k if nz > 1 else nz, ny // k, nx // k)

    @property
    def n_steps(self) -> int:
        from .loading import output_increments

        return len(output_increments(self.increments, self.every))

    @property
    def lattice(self) -> str:
        return self.material_objects[0].lattice

    @property
    def n_slip(self) -> int:
        return self.material_objects[0].n_slip

    def store_material(self) -> dict:
        """The store's ``material`` attribute: the parameters, one material or several by name."""
        if len(self.material_objects) == 1:
            return self.material_objects[0].as_dict()
        return {"materials": [m.as_dict() for m in self.material_objects],
                "per_sample": "drawn uniformly; solver.campaign.sample_plan(config, i)['material'] "
                              "gives the index of sample i"}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _mapping(cfg: dict, key: str) -> dict:
    sec = cfg.get(key)
    if sec is None:
        return {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{key} must be a mapping, got {sec!r}")
    return sec


def _check_keys(sec: dict, allowed, where: str) -> None:
    unknown = sorted(set(sec) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _nonempty_list(value, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        value = [value]
    if len(value) == 0:
        raise ConfigError(f"{where} is an empty list; give at least one entry")
    return list(value)


def _int_range(value, where: str, lowest: int) -> tuple[int, int]:
    """An integer or an inclusive ``[min, max]``."""
    if _is_int(value):
        lo = hi = int(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
        lo, hi = int(value[0]), int(value[1])
    else:
        raise ConfigError(f"{where} must be an integer or a range [min, max] of integers, got {value!r}")
    if lo < lowest:
        raise ConfigError(f"{where} must be at least {lowest}, got {lo}")
    if lo > hi:
        raise ConfigError(f"{where}: the range [{lo}, {hi}] is empty (min > max)")
    return lo, hi


def _float_range(value, where: str) -> tuple[float, float]:
    """A positive number or an inclusive ``[min, max]`` of positive numbers."""
    if _is_number(value):
        lo = hi = float(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ConfigError(f"{where} must be a number or a range [min, max], got {value!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    if lo <= 0:
        raise ConfigError(f"{where} must be a positive magnitude (the mode gives the sign), got {lo}")
    if lo > hi:
        raise ConfigError(f"{where}: the range [{lo}, {hi}] is empty (min > max)")
    return lo, hi


def _cells(value) -> tuple[int, int, int]:
    def one(v):
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(x) and x > 0 for x in v)):
            raise ConfigError(f"microstructure.cells must be [nx, ny, nz] (positive integers) or a list of "
                              f"them, got {v!r}")
        return tuple(int(x) for x in v)

    if value is None:
        raise ConfigError("microstructure.cells is required: [nx, ny, nz], e.g. [32, 32, 1] for a 2-D map")
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        shapes = [one(v) for v in value]
    elif isinstance(value, (list, tuple)) and len(value) == 0:
        raise ConfigError("microstructure.cells is an empty list; give [nx, ny, nz]")
    else:
        shapes = [one(value)]
    distinct = sorted(set(shapes), key=shapes.index)
    if len(distinct) > 1:
        raise ConfigError(f"microstructure.cells: one store holds one grid shape, got {len(distinct)} "
                          f"({', '.join(str(list(s)) for s in distinct)}); run one campaign per shape")
    return distinct[0]


def _material_entry(entry, where: str) -> dict:
    if isinstance(entry, str):
        return {"preset": entry}
    if isinstance(entry, dict) and entry:
        return dict(entry)
    raise ConfigError(f"{where} must be a preset name (e.g. Cu) or a material mapping, got {entry!r}")


def _direction(entry, where: str) -> list[float]:
    try:
        v = np.asarray(entry, dtype=float)
    except (TypeError, ValueError):
        v = None
    if v is None or v.shape != (3,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
        raise ConfigError(f"{where} must be a non-zero vector [x, y, z], got {entry!r}")
    return [float(x) for x in v]  # as given: Loading normalizes (so a stored config parses to itself)


def parse_campaign(cfg: dict, base_dir: pathlib.Path | str = ".") -> CampaignSpec:
    """Check a campaign config and normalize it; nothing is solved or written.

    Raises:
        ConfigError: one line naming the first problem (unknown keys, empty
            lists, impossible distributions such as more grains than voxels,
            non-positive strains, mixed grid shapes or lattices, ...).
    """
    from . import textures
    from .config import _boundary
    from .microstructure import coarsen_option
    from .loading import loading_from_config, specimen_axis
    from .materials import material_from_config

    if not isinstance(cfg, dict):
        raise ConfigError(f"a campaign config must be a mapping, got {type(cfg).__name__}")
    _check_keys(cfg, TOP_KEYS, "campaign config")
    if "samples" not in cfg:
        raise ConfigError("campaign config has no 'samples' (the number of samples to generate)")
    samples = cfg["samples"]
    if not _is_int(samples) or samples < 1:
        raise ConfigError(f"samples must be a positive integer, got {samples!r}")
    seed = cfg.get("seed", DEFAULTS["seed"])
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")

    # ---- microstructure
    ms = _mapping(cfg, "microstructure")
    if "microstructure" not in cfg:
        raise ConfigError("campaign config has no 'microstructure' section (at least cells: [nx, ny, nz])")
    _check_keys(ms, MICROSTRUCTURE_KEYS, "microstructure")
    cells = _cells(ms.get("cells"))
    n_voxels = int(np.prod(cells))
    size = ms.get("size")
    if size is None:
        edge = DEFAULT_EXTENT / max(cells)
        size = tuple(edge * n for n in cells)
    else:
        if (not isinstance(size, (list, tuple)) or len(size) != 3
                or not all(_is_number(x) and math.isfinite(x) and x > 0 for x in size)):
            raise ConfigError(f"microstructure.size must be 3 positive lengths [Lx, Ly, Lz] in metres, got {size!r}")
        size = tuple(float(x) for x in size)
    grains = _int_range(ms.get("grains", DEFAULTS["microstructure"]["grains"]), "microstructure.grains", 1)
    if grains[1] > n_voxels:
        raise ConfigError(f"microstructure.grains: up to {grains[1]} grains cannot fit in {n_voxels} voxels "
                          f"(cells {list(cells)})")
    texture_list = _nonempty_list(ms.get("textures", DEFAULTS["microstructure"]["textures"]), "microstructure.textures")
    for k, tex in enumerate(texture_list):
        try:
            textures.sample_orientations(tex, 1, np.random.default_rng(0))
        except ConfigError as exc:
            raise ConfigError(f"microstructure.textures[{k}]: {exc}") from None
    periodic = ms.get("periodic", True)
    if not isinstance(periodic, bool):
        raise ConfigError(f"microstructure.periodic must be true or false, got {periodic!r}")
    coarsen = coarsen_option(ms)
    if cells[0] % coarsen or cells[1] % coarsen or (cells[2] > 1 and cells[2] % coarsen):
        raise ConfigError(f"microstructure.coarsen {coarsen} does not divide the cells {list(cells)}")

    # ---- materials
    mats = _nonempty_list(cfg.get("materials", DEFAULTS["materials"]), "materials")
    materials = [_material_entry(m, f"materials[{k}]") for k, m in enumerate(mats)]
    objects = []
    for k, m in enumerate(materials):
        try:
            objects.append(material_from_config(copy.deepcopy(m)))
        except ConfigError as exc:
            raise ConfigError(f"materials[{k}]: {exc}") from None
    lattices = sorted({m.lattice for m in objects})
    if len(lattices) > 1:
        raise ConfigError(f"materials: one store holds one lattice (one slip-system count), got {', '.join(lattices)}")
    names = [m.name for m in objects]
    if len(set(names)) != len(names):
        raise ConfigError(f"materials: names must differ (got {names}); give overridden presets a 'name'")

    # ---- boundary
    boundary = cfg.get("boundary", DEFAULTS["boundary"])
    kind, _ = _boundary(boundary)

    # ---- loading
    ld = _mapping(cfg, "loading")
    _check_keys(ld, LOADING_KEYS, "loading")
    modes = _nonempty_list(ld.get("modes", DEFAULTS["loading"]["modes"]), "loading.modes")
    for m in modes:
        if m not in CAMPAIGN_MODES:
            raise ConfigError(f"loading.modes: unknown or unsupported mode {m!r}; known: {', '.join(CAMPAIGN_MODES)}")
    directions = ld.get("directions", DEFAULTS["loading"]["directions"])
    if directions == "random":
        if kind == "specimen":
            raise ConfigError("loading.directions: random directions need boundary: periodic "
                              "(a specimen is loaded along a box axis)")
    elif isinstance(directions, str):
        raise ConfigError(f"loading.directions must be 'random' or a list of [x, y, z], got {directions!r}")
    else:
        if isinstance(directions, (list, tuple)) and len(directions) == 3 and all(_is_number(x) for x in directions):
            directions = [directions]  # one direction given bare
        directions = _nonempty_list(directions, "loading.directions")
        directions = [_direction(d, f"loading.directions[{k}]") for k, d in enumerate(directions)]
    strain = _float_range(ld.get("strain", DEFAULTS["loading"]["strain"]), "loading.strain")
    rate = ld.get("rate", DEFAULTS["loading"]["rate"])
    if not _is_number(rate) or not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"loading.rate must be a positive strain rate in 1/s, got {rate!r}")
    increments = ld.get("increments", DEFAULTS["loading"]["increments"])
    if not _is_int(increments) or increments < 1:
        raise ConfigError(f"loading.increments must be a positive integer, got {increments!r}")
    # every mode with every listed direction (or one random one) at both ends of the strain range
    probe = directions if directions != "random" else [[0.48, 0.6, 0.64]]
    for mode in dict.fromkeys(modes):  # a repeated entry weights the draw; checked once
        for d in probe:
            for s in sorted(set(strain)):
                loading = loading_from_config({"mode": mode, "direction": d, "strain": s, "rate": float(rate),
                                               "increments": int(increments)})
                if kind == "specimen":
                    specimen_axis(loading)

    # ---- output, solver
    out = _mapping(cfg, "output")
    _check_keys(out, OUTPUT_KEYS, "output")
    every = out.get("every", DEFAULTS["output"]["every"])
    if not _is_int(every) or every < 1:
        raise ConfigError(f"output.every must be a positive integer, got {every!r}")
    solver_sec = _mapping(cfg, "solver")

    normalized = {
        "samples": int(samples),
        "seed": int(seed),
        "microstructure": {"cells": list(cells), "size": list(size), "grains": list(grains),
                           "textures": texture_list, "periodic": periodic},
        "materials": materials,
        "boundary": boundary,
        "loading": {"modes": modes, "directions": directions, "strain": list(strain), "rate": float(rate),
                    "increments": int(increments)},
        "output": {"every": int(every)},
        "solver": solver_sec,
    }
    if coarsen > 1:  # absent when 1: stores made before the key existed keep their fingerprint
        normalized["microstructure"]["coarsen"] = coarsen
    normalized = store._jsonable(normalized, "campaign config")  # JSON-able now, or one line why not
    spec = CampaignSpec(config=normalized, samples=int(samples), seed=int(seed), cells=cells, size=size,
                        grains=grains, textures=texture_list, periodic=periodic, materials=materials,
                        material_objects=objects, modes=modes, directions=directions, strain=strain,
                        rate=float(rate), increments=int(increments), every=int(every), boundary=boundary,
                        solver=solver_sec, base_dir=pathlib.Path(base_dir), coarsen=coarsen)
    # the whole chain once, on sample 0 (solver section, boundary and load together)
    from .config import prepare_simulation

    prepare_simulation(sample_config(spec, 0), spec.base_dir)
    return spec


def load_campaign(path, coarsen: int | None = None, constitutive: str | None = None,
                  correct_in_loop: str | None = None) -> CampaignSpec:
    """Read and check a campaign YAML file (see :func:`parse_campaign`).

    Args:
        path: the YAML file.
        coarsen: overrides ``microstructure.coarsen`` (the same samples, solved
            on a grid this many times coarser: the coarse partner of a store).
        constitutive: overrides ``solver.constitutive`` (``elastic`` or
            ``frozen_hardening``: the same samples with an incomplete physics,
            the physics partner of a hybrid forecast).
        correct_in_loop: sets ``solver.correction_in_loop`` (an in-loop state
            correction, with ``coarsen``: the DAgger store of its next training round).
    """
    from .config import load_yaml

    path = pathlib.Path(path)
    cfg = load_yaml(path)
    if correct_in_loop is not None:
        correct_in_loop = str(pathlib.Path(correct_in_loop).resolve())
    for section, key, value in (("microstructure", "coarsen", coarsen), ("solver", "constitutive", constitutive),
                                ("solver", "correction_in_loop", correct_in_loop)):
        if value is not None:
            cfg = copy.deepcopy(cfg)
            if cfg.get(section) is None:
                cfg[section] = {}
            if isinstance(cfg[section], dict):
                cfg[section][key] = value
    return parse_campaign(cfg, path.parent)


#: ``solver`` keys naming a model directory whose weights shape the solves
MODEL_KEYS = ("learned_model", "correction_in_loop")


def model_digests(spec: CampaignSpec) -> dict[str, str]:
    """SHA-256 of the files of each model directory the campaign's solves use (:data:`MODEL_KEYS`).

    The config names a model by its path; a store records these digests so that
    resuming it after the model was retrained at the same path is refused
    rather than mixing two models' samples in one store.
    """
    import hashlib

    out = {}
    for key in MODEL_KEYS:
        value = (spec.config.get("solver") or {}).get(key)
        if not value:
            continue
        path = pathlib.Path(value)
        path = path if path.is_absolute() else pathlib.Path(spec.base_dir) / path
        digest = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
        out[key] = digest.hexdigest()
    return out


def _check_models_unchanged(group, spec: CampaignSpec, path) -> None:
    recorded = group.attrs.get("model_digests")
    if recorded is None:  # stores made before digests were recorded
        return
    for key, digest in model_digests(spec).items():
        if recorded.get(key) != digest:
            raise StoreError(f"store {path} was solved with solver.{key} {spec.config['solver'][key]} as it was "
                             "then; that model has changed since (other weights). Use a new store, or the "
                             "model the store was started with")


def _same_apart_from_samples(a: dict, b: dict) -> bool:
    strip = lambda c: {k: v for k, v in c.items() if k != "samples"}  # noqa: E731
    return store.config_fingerprint(strip(a)) == store.config_fingerprint(strip(b))


# ===================================================================== samples ==

def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of sample ``index``: ``SeedSequence(seed, spawn_key=(index,))``.

    Equal to ``SeedSequence(seed).spawn(n)[index]`` for any ``n > index``.
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def sample_plan(spec: CampaignSpec | dict, index: int) -> dict:
    """The random choices of sample ``index`` (plain Python values).

    Draws always happen in the same order and number, whatever the lists hold,
    so a sample depends only on ``(seed, index)`` and the distributions.

    Args:
        spec: a :class:`CampaignSpec` or a (normalized) campaign config, e.g. the
            ``config`` attribute of a store.

    Returns:
        ``grains``, ``texture`` (index), ``microstructure_seed``, ``material``
        (index), ``mode``, ``direction`` (unit 3-vector), ``strain``.
    """
    if isinstance(spec, dict):
        spec = parse_campaign(spec)
    rng = sample_rng(spec.seed, index)
    grains = int(rng.integers(spec.grains[0], spec.grains[1] + 1))
    texture = int(rng.integers(len(spec.textures)))
    ms_seed = int(rng.integers(0, 2**31 - 1))
    material = int(rng.integers(len(spec.materials)))
    mode = spec.modes[int(rng.integers(len(spec.modes)))]
    v = rng.standard_normal(3)  # drawn always, used for random directions (uniform on the sphere)
    k = int(rng.integers(1 << 30))
    if spec.directions == "random":
        direction = [float(x) for x in v / np.linalg.norm(v)]
    else:
        direction = list(spec.directions[k % len(spec.directions)])
    u = float(rng.random())
    strain = spec.strain[0] + u * (spec.strain[1] - spec.strain[0])
    return {"grains": grains, "texture": texture, "microstructure_seed": ms_seed, "material": material,
            "mode": mode, "direction": direction, "strain": float(strain)}


def sample_config(spec: CampaignSpec, index: int) -> dict:
    """The ``slipstream simulate`` config of sample ``index`` (a plain dict)."""
    p = sample_plan(spec, index)
    return {
        "microstructure": {"kind": "voronoi", "cells": list(spec.cells), "size": list(spec.size),
                           "grains": p["grains"], "seed": p["microstructure_seed"],
                           "periodic": spec.periodic, "texture": copy.deepcopy(spec.textures[p["texture"]]),
                           "coarsen": spec.coarsen},
        "material": copy.deepcopy(spec.materials[p["material"]]),
        "boundary": copy.deepcopy(spec.boundary),
        "loading": {"mode": p["mode"], "direction": p["direction"], "strain": p["strain"], "rate": spec.rate,
                    "increments": spec.increments},
        "output": {"every": spec.every, "paraview": False, "plots": False},
        "solver": copy.deepcopy(spec.solver),
    }


# ======================================================================= store ==

def _store_sizes_consistent(group) -> None:
    n = int(group.attrs.get("n_samples", -1))
    bad = sorted(name for name in group.array_keys() if group[name].shape[0] != n)
    if bad:
        raise StoreError(f"store arrays {', '.join(bad)} do not have {n} samples (an interrupted --extend?); "
                         f"rerun with --extend")


def _probe_writable(path: pathlib.Path) -> None:
    probe = path / f".slipstream-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"store {path} is not writable ({exc.strerror or exc})") from None


def open_or_create_store(spec: CampaignSpec, path, *, extend: bool = False):
    """Create the store of a campaign, or open an existing one for resuming. World rank 0 only.

    * no store at ``path`` (or an empty directory): create it for ``spec``;
    * a store of the same config: open it (resume);
    * a store of the same config apart from ``samples`` and ``extend``: grow it
      with :func:`solver.store.extend_store` (new samples pending);
    * anything else is refused.

    Returns:
        ``(group, action)``, ``action`` one of ``"created"``, ``"resumed"``, ``"extended"``.

    Raises:
        StoreError: another schema or config, fewer samples than stored, an
            unwritable or impossible path.
    """
    path = pathlib.Path(path)
    create_kw = dict(n_samples=spec.samples, grid_shape=spec.grid_shape, n_steps=spec.n_steps,
                     n_slip=spec.n_slip, config=spec.config, material=spec.store_material(),
                     lattice=spec.lattice, with_nye=True, with_plastic_deformation=True)
    empty_dir = path.is_dir() and not any(path.iterdir())
    if not (path.exists() or path.is_symlink()) or empty_dir:
        try:
            group = store.create_store(path, overwrite=empty_dir, **create_kw)
        except OSError as exc:
            raise StoreError(f"cannot create store {path}: {exc.strerror or exc}") from None
        digests = model_digests(spec)
        if digests:
            group.attrs["model_digests"] = digests
        return group, "created"
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} exists and is not a directory (a Zarr store is a directory)")
    group = store.open_store(path, "r+")
    _probe_writable(path)
    stored = group.attrs.get("config")
    stored_n = int(group.attrs.get("n_samples", -1))
    if not isinstance(stored, dict) or "samples" not in stored:
        store.check_compatible(group, spec.config)  # a store not made by a campaign: refused
    same = store.config_fingerprint(stored) == store.config_fingerprint(spec.config)
    if same or _same_apart_from_samples(stored, spec.config):
        _check_models_unchanged(group, spec, path)
    if same and stored_n == spec.samples:
        _store_sizes_consistent(group)
        return group, "resumed"
    if _same_apart_from_samples(stored, spec.config):
        if spec.samples < stored_n:
            raise StoreError(f"store {path} already holds {stored_n} samples; the config asks for {spec.samples} "
                             f"(a store never shrinks; use a new store)")
        if not extend:
            raise StoreError(f"store {path} was made for {stored.get('samples')} samples and the config asks for "
                             f"{spec.samples}; pass --extend to add samples")
        group = store.extend_store(path, spec.samples, spec.config)
        _store_sizes_consistent(group)
        return group, "extended"
    store.check_compatible(group, spec.config)  # raises: another config
    raise StoreError(f"store {path} does not match the config")  # pragma: no cover


# ==================================================================== progress ==

class _Tally:
    """Counts and progress lines on world rank 0 (thread-safe)."""

    def __init__(self, todo, total: int, done0: int, stream, quiet: bool):
        self.todo = [int(i) for i in todo]
        self.total, self.done, self.failed = total, done0, 0
        self.failures: dict[int, str] = {}
        self.finished = 0
        self.pos = 0
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()
        self.stream, self.quiet = stream, quiet

    def next_index(self, report):
        """Record a finished sample (or None) and hand out the next one (None when there is none)."""
        with self.lock:
            if report is not None:
                self._record(report)
            if self.pos < len(self.todo):
                idx = self.todo[self.pos]
                self.pos += 1
                return idx
            return None

    def _record(self, r):
        self.finished += 1
        if r["ok"]:
            self.done += 1
            what = (f"sample {r['index']} done in {r['wall']:.1f} s ({r['increments']} incr, "
                    f"{r['newton']} Newton, {r['cutbacks']} cutbacks)")
        else:
            self.failed += 1
            self.failures[r["index"]] = r["reason"]
            reason = r["reason"] if len(r["reason"]) <= 120 else r["reason"][:117] + "..."
            what = f"sample {r['index']} FAILED after {r['wall']:.1f} s: {reason}"
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.t0
        left = len(self.todo) - self.finished
        eta = elapsed / self.finished * left
        pending = self.total - self.done - self.failed
        w = len(str(self.total))
        print(f"campaign [{self.done + self.failed:>{w}}/{self.total}] {what}; done {self.done}, "
              f"failed {self.failed}, pending {pending}; elapsed {_hms(elapsed)}, ETA {_hms(eta)} "
              f"[ranks {r['ranks']}]", file=self.stream, flush=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _serve(comm_d, tally: _Tally, leaders: list[int]) -> None:
    """Dispatcher loop (a thread on world rank 0): answer the other groups' leaders until all got None."""
    from mpi4py import MPI

    active = set(leaders)
    status = MPI.Status()
    try:
        while active:
            if comm_d.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_REQUEST, status=status):
                src = status.Get_source()
                report = comm_d.recv(source=src, tag=_TAG_REQUEST)
                idx = tally.next_index(report)
                comm_d.send(idx, dest=src, tag=_TAG_INDEX)
                if idx is None:
                    active.discard(src)
            else:
                time.sleep(_POLL_S)
    except BaseException:  # a dead dispatcher would leave the other groups waiting forever
        traceback.print_exc()
        sys.stderr.flush()
        comm_d.Abort(1)


def _wait(request) -> None:
    """Complete a non-blocking request without spinning a core."""
    while not request.Test():
        time.sleep(_POLL_S * 4)


# ======================================================================== solve ==

#: Exceptions that fail one sample (the campaign goes on); anything else is a bug and stops the run.
SAMPLE_ERRORS = (SlipstreamError, ArithmeticError, np.linalg.LinAlgError)


def _solve_one(gcomm, spec: CampaignSpec, index: int, group, world_ranks: str) -> dict:
    """Solve sample ``index`` on ``gcomm``; its rank 0 writes it (or marks it failed)."""
    from .config import prepare_simulation
    from .simulate import solve_sample

    t0 = time.perf_counter()
    fields, reason = None, None
    try:
        setup = prepare_simulation(sample_config(spec, index), spec.base_dir)
        fields, _ = solve_sample(gcomm, setup)
    except SAMPLE_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if gcomm.rank != 0:
        return {}
    if reason is None:
        bad = [k for k in ("macro_stress", "stress", "strain") if not np.all(np.isfinite(fields[k]))]
        if bad:
            reason = f"non-finite values in {', '.join(bad)}"
    if reason is None:
        store.write_sample(group, index, store.stored_fields(group, fields))
        store.mark_done(group, index)
        return {"index": index, "ok": True, "wall": time.perf_counter() - t0, "increments": int(fields["increments"]),
                "newton": int(fields["newton_iterations"]), "cutbacks": int(fields["cutbacks"]),
                "ranks": world_ranks}
    store.mark_failed(group, index, reason)
    return {"index": index, "ok": False, "reason": " ".join(reason.split()), "wall": time.perf_counter() - t0,
            "ranks": world_ranks}


def _raise_shared(comm, error) -> None:
    """Raise on every rank the (type name, message) that rank 0 broadcast, if any."""
    error = comm.bcast(error, root=0)
    if error is not None:
        kinds = {"ConfigError": ConfigError, "StoreError": StoreError, "InputFileError": InputFileError,
                 "RuntimeError": RuntimeError}
        raise kinds.get(error[0], SlipstreamError)(error[1])


def run_campaign(comm, config_path, store_path, *, ranks_per_sample: int = 1, extend: bool = False,
                 quiet: bool = False, stream=None, coarsen: int | None = None,
                 constitutive: str | None = None, correct_in_loop: str | None = None) -> dict:
    """``slipstream campaign``: solve every sample that is not done into one store.

    Collective over ``comm`` (usually ``COMM_WORLD``). Everything is checked
    before any solving starts: the config on every rank, the store on rank 0.

    Args:
        comm: the world communicator.
        config_path: campaign YAML.
        store_path: the Zarr store (created if missing, resumed if it exists).
        ranks_per_sample: ranks that share one sample (``comm.size`` must be a multiple).
        extend: allow growing a store made by the same config with fewer samples.
        quiet: no per-sample progress lines.
        stream: where rank 0 prints (default stdout).
        coarsen: overrides ``microstructure.coarsen`` of the config.
        constitutive: overrides ``solver.constitutive`` of the config.
        correct_in_loop: sets ``solver.correction_in_loop`` (a DAgger store, docs/coupling.md).

    Returns:
        On rank 0: ``store``, ``action``, ``total``, ``done``, ``failed``,
        ``pending``, ``solved`` (this run), ``failures`` {index: reason},
        ``wall_s``, ``ranks``, ``ranks_per_sample``; ``{}`` elsewhere.

    Raises:
        ConfigError, InputFileError, StoreError: one-line, on every rank, before any solving.
    """
    stream = stream or sys.stdout
    t0 = time.perf_counter()
    spec = load_campaign(config_path, coarsen, constitutive, correct_in_loop)  # every rank: the same config gives the same verdict
    k = ranks_per_sample
    if not _is_int(k) or k < 1:
        raise ConfigError(f"--ranks-per-sample must be a positive integer, got {k!r}")
    if comm.size % k:
        raise ConfigError(f"--ranks-per-sample {k} does not divide the {comm.size} ranks")

    store_path = pathlib.Path(store_path)
    group, error, todo, action, done0 = None, None, None, None, 0
    if comm.rank == 0:
        try:
            group, action = open_or_create_store(spec, store_path, extend=extend)
            todo = store.pending_samples(group).tolist()
            done0 = int(np.sum(store.sample_status(group) == store.DONE))
        except SlipstreamError as exc:
            error = (type(exc).__name__, " ".join(str(exc).split()))
        except OSError as exc:
            error = ("StoreError", f"cannot use store {store_path}: {exc.strerror or exc}")
        except Exception as exc:  # a bug: every rank raises it, none waits in bcast forever
            error = ("RuntimeError", f"{type(exc).__name__}: {exc}")
    _raise_shared(comm, error)
    todo = comm.bcast(todo, root=0)

    n_groups = comm.size // k
    color = comm.rank // k
    gcomm = comm.Split(color, comm.rank)
    comm_d = comm.Dup()  # the dispatcher's own channel
    leader = gcomm.rank == 0
    world_ranks = f"{color * k}-{color * k + k - 1}" if k > 1 else f"{comm.rank}"
    if leader and comm.rank != 0:
        group = store.open_store(store_path, "r+")

    tally, server = None, None
    if comm.rank == 0:
        if not quiet:
            print(f"campaign: {action} {store_path}: {spec.samples} samples, grid {list(spec.cells)} (x, y, z)"
                  + (f" solved {spec.coarsen}x coarser" if spec.coarsen > 1 else "") + ", "
                  f"{spec.n_steps} output steps; {len(todo)} to solve on {comm.size} rank(s) in {n_groups} "
                  f"group(s) of {k}", file=stream, flush=True)
        tally = _Tally(todo, spec.samples, done0, stream, quiet)
        if n_groups > 1:
            server = threading.Thread(target=_serve, args=(comm_d, tally, [g * k for g in range(1, n_groups)]),
                                      name="slipstream-dispatcher", daemon=True)
            server.start()

    report = None
    while True:
        idx = None
        if comm.rank == 0:
            idx = tally.next_index(report)
        elif leader:
            comm_d.send(report, dest=0, tag=_TAG_REQUEST)
            idx = comm_d.recv(source=0, tag=_TAG_INDEX)
        idx = gcomm.bcast(idx, root=0)
        if idx is None:
            break
        report = _solve_one(gcomm, spec, idx, group, world_ranks) or None

    if server is not None:
        server.join()
    _wait(comm.Ibarrier())  # every sample written before the metadata are consolidated
    comm_d.Free()
    gcomm.Free()
    if comm.rank != 0:
        return {}
    store.consolidate(store_path)
    status = store.sample_status(store.open_store(store_path))
    failures = dict(sorted(tally.failures.items()))
    summary = {"store": str(store_path), "action": action, "total": int(status.size),
               "done": int(np.sum(status == store.DONE)), "failed": int(np.sum(status == store.FAILED)),
               "pending": int(np.sum(status == store.PENDING)), "solved": tally.finished,
               "failures": failures, "wall_s": time.perf_counter() - t0, "ranks": comm.size,
               "ranks_per_sample": k}
    if not quiet:
        print(f"campaign finished: {summary['done']} done, {summary['failed']} failed, {summary['pending']} pending "
              f"of {summary['total']} ({summary['solved']} solved in this run, {_hms(summary['wall_s'])})",
              file=stream, flush=True)
        for i, reason in failures.items():
            print(f"  failed sample {i}: {reason}", file=stream, flush=True)
        if failures:
            print("  (rerun the same command to retry failed samples)", file=stream, flush=True)
    return summary


# ===================================================================== inspect ==

def _disk_usage(path: pathlib.Path) -> tuple[int, int]:
    """Bytes of all files under ``path``, and of left-over ``.partial`` files (from a killed writer)."""
    total = partial = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                n = os.stat(os.path.join(root, f)).st_size
            except OSError:
                continue
            total += n
            if f.endswith(".partial"):
                partial += n
    return total, partial


def inspect_store(path) -> dict:
    """What a campaign store holds (no dolfinx, no torch; reads only status, reasons and small arrays).

    Returns:
        A JSON-able dict: counts, failures, sizes, grid, steps, config and provenance.
    """
    path = pathlib.Path(path)
    group = store.open_store(path)
    attrs = dict(group.attrs)
    status = store.sample_status(group)
    failed = np.flatnonzero(status == store.FAILED)
    reasons = group["failure_reason"]
    failures = {int(i): str(reasons[int(i)]) for i in failed}
    done = np.flatnonzero(status == store.DONE)
    total_bytes, partial_bytes = _disk_usage(path)
    stats = {}
    if done.size:
        wall = np.asarray(group["wall_time"][:])[done]
        newton = np.asarray(group["newton_iterations"][:])[done]
        cut = np.asarray(group["cutbacks"][:])[done]
        stats = {"wall_time_mean_s": float(wall.mean()), "wall_time_total_s": float(wall.sum()),
                 "newton_iterations_mean": float(newton.mean()), "cutbacks_total": int(cut.sum())}
    material = attrs.get("material", {})
    names = ([m.get("name") for m in material["materials"]] if "materials" in material
             else [material.get("name")])
    return {
        "store": str(path), "schema": attrs.get("schema"),
        "samples": int(status.size), "done": int(done.size), "failed": int(failed.size),
        "pending": int(np.sum(status == store.PENDING)),
        "failures": failures,
        "bytes_on_disk": total_bytes, "bytes_partial": partial_bytes,
        "bytes_per_done_sample": total_bytes / done.size if done.size else None,
        "grid_shape_zyx": attrs.get("grid_shape"), "n_steps": attrs.get("n_steps"), "n_slip": attrs.get("n_slip"),
        "lattice": attrs.get("lattice"), "materials": names,
        "solver_stats": stats,
        "config": attrs.get("config"), "config_fingerprint": attrs.get("config_fingerprint"),
        "provenance": attrs.get("provenance", {}),
    }


def _short(value, limit: int = 70) -> str:
    import json

    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_inspect(info: dict) -> str:
    """Human-readable summary of :func:`inspect_store`."""
    mib = 1024.0**2
    prov = info["provenance"]
    lines = [
        f"store      {info['store']} ({info['schema']})",
        f"created    {prov.get('created', '?')} by slipstream {prov.get('slipstream', '?')}, "
        f"git {str(prov.get('git_commit', '?'))[:12]}{' (dirty)' if prov.get('git_dirty') else ''}",
        f"samples    {info['samples']}: {info['done']} done, {info['failed']} failed, {info['pending']} pending",
        f"grid       (z, y, x) = {tuple(info['grid_shape_zyx'] or ())}, {info['n_steps']} output steps, "
        f"{info['n_slip']} slip systems ({info['lattice']}), material(s) {', '.join(map(str, info['materials']))}",
    ]
    size = f"size       {info['bytes_on_disk'] / mib:.2f} MiB on disk"
    if info["bytes_per_done_sample"]:
        size += f", {info['bytes_per_done_sample'] / mib:.3f} MiB per done sample"
    if info["bytes_partial"]:
        size += f" ({info['bytes_partial']} bytes in left-over .partial files of a killed writer)"
    lines.append(size)
    st = info["solver_stats"]
    if st:
        lines.append(f"solver     {st['wall_time_mean_s']:.1f} s per sample (total {_hms(st['wall_time_total_s'])}), "
                     f"{st['newton_iterations_mean']:.1f} Newton iterations per sample, "
                     f"{st['cutbacks_total']} cutbacks in all")
    cfg = info["config"] or {}
    if "samples" in cfg:
        ms, ld = cfg.get("microstructure", {}), cfg.get("loading", {})
        dirs = ld.get("directions")
        lines += [
            f"config     fingerprint {str(info['config_fingerprint'])[:12]}, samples {cfg['samples']}, "
            f"seed {cfg.get('seed')}, boundary {_short(cfg.get('boundary'))}",
            f"  microstructure  cells {ms.get('cells')}, grains {ms.get('grains')}, "
            f"textures {_short(ms.get('textures'))}",
            f"  loading         modes {ld.get('modes')}, directions "
            f"{dirs if dirs == 'random' else f'{len(dirs)} listed'}, strain {ld.get('strain')}, "
            f"rate {ld.get('rate')} 1/s, {ld.get('increments')} increments, output every "
            f"{cfg.get('output', {}).get('every')}",
            f"  materials       {_short(cfg.get('materials'))}",
        ]
    else:
        lines.append(f"config     {_short(cfg, 200)}")
    if info["failures"]:
        lines.append(f"failures   {len(info['failures'])}:")
        lines += [f"  sample {i}: {r}" for i, r in info["failures"].items()]
    return "\n".join(lines)


def describe_sample(path, index: int) -> str:
    """One sample: status, load, solver statistics and the last macroscopic stress/strain along the load."""
    from .loading import MODES
    from .tensors import from_voigt

    group = store.open_store(path)
    i = store._sample_index(group, index)
    status = store.STATUS_NAMES[int(group["status"][i])]
    lines = [f"sample {i}: {status}"]
    if status == "failed":
        lines.append(f"  reason: {group['failure_reason'][i]}")
    if status != "done":
        return "\n".join(lines)
    d = np.asarray(group["load_direction"][i])
    s = float(d @ from_voigt(np.asarray(group["macro_stress"][i, -1])) @ d)
    e = float(d @ from_voigt(np.asarray(group["macro_strain"][i, -1])) @ d)
    lines += [
        f"  load: {MODES[int(group['load_mode'][i])]} to {float(group['load_strain'][i]):.4g} along "
        f"{np.round(d, 4).tolist()} at {float(group['load_rate'][i]):.3g} 1/s",
        f"  grains: {int(np.asarray(group['grain_id'][i]).max()) + 1}",
        f"  solver: {float(group['wall_time'][i]):.1f} s, {int(group['increments'][i])} increments, "
        f"{int(group['newton_iterations'][i])} Newton iterations, {int(group['cutbacks'][i])} cutbacks",
        f"  last step: Hencky strain {e:.4g}, Cauchy stress {s / 1e6:.2f} MPa along the load",
    ]
    return "\n".join(lines)


def plot_sample(path, index: int, out) -> list[pathlib.Path]:
    """PNGs of one done sample: IPF before/after, von Mises stress and slip maps, stress-strain curve.

    Raises:
        StoreError: the index is out of range or the sample is not done.
    """
    from . import plots
    from .loading import MODES
    from .tensors import from_voigt

    group = store.open_store(path)
    i = store._sample_index(group, index)
    status = int(group["status"][i])
    if status != store.DONE:
        raise StoreError(f"sample {i} is {store.STATUS_NAMES[status]}: nothing to plot")
    out = pathlib.Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot write pictures to {out}: {exc.strerror or exc}") from None
    lattice = group.attrs.get("lattice", "fcc")
    d = np.asarray(group["load_direction"][i])
    ms, me = np.asarray(group["macro_stress"][i]), np.asarray(group["macro_strain"][i])
    s_dir = np.einsum("i,sij,j->s", d, from_voigt(ms), d)
    e_dir = np.einsum("i,sij,j->s", d, from_voigt(me), d)
    mode = MODES[int(group["load_mode"][i])]
    tag = f"sample {i}"
    euler0 = np.asarray(group["euler0"][i])
    euler_last = np.asarray(group["euler"][i, -1], dtype=float)
    return [
        plots.stress_strain_curve([e_dir], [s_dir], out / f"sample{i}_stress_strain.png",
                                  xlabel="true (Hencky) strain along the load direction",
                                  ylabel="true (Cauchy) stress along the load direction",
                                  labels=[f"{tag}: {mode} along {np.round(d, 3).tolist()}"]),
        plots.ipf_map(euler0, out / f"sample{i}_ipf_initial.png", lattice=lattice,
                      title=f"{tag}: IPF-Z, initial orientation"),
        plots.ipf_map(euler_last, out / f"sample{i}_ipf_final.png", lattice=lattice,
                      title=f"{tag}: IPF-Z, deformed orientation"),
        plots.field_map(np.asarray(group["von_mises_stress"][i, -1], dtype=float) / 1e6,
                        out / f"sample{i}_von_mises_stress.png", title=f"{tag}: von Mises stress, last step",
                        unit="MPa"),
        plots.field_map(np.asarray(group["slip"][i, -1], dtype=float).sum(axis=-1),
                        out / f"sample{i}_accumulated_slip.png",
                        title=f"{tag}: accumulated slip (all systems), last step", unit="1", cmap="magma"),
    ]
