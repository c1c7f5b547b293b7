"""Simulation configs: reading YAML and checking every key before any work starts.

A config (``slipstream simulate CONFIG.yaml``) has these sections; every key
and its default is documented in ``docs/simulate.md``::

    microstructure: {kind: voronoi, cells: [16, 16, 16], size: [1.0e-4, 1.0e-4, 1.0e-4],
                     grains: 20, seed: 1, texture: random}
    material: {preset: Cu}
    boundary: periodic          # or specimen
    loading: {mode: tension, direction: [1, 0, 0], strain: 0.02, rate: 1.0e-3, increments: 20}
    output: {every: 1}
    solver: {stress_tolerance: 1.0, max_cutbacks: 8, petsc_options: {}}

Everything is parsed into plain objects by :func:`prepare_simulation` so that
a bad key fails in one line before any file is written.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import yaml

from .errors import ConfigError, InputFileError

SECTIONS = ("microstructure", "material", "boundary", "loading", "output", "solver")
OUTPUT_KEYS = {"every": 1, "paraview": True, "plots": True}
SOLVER_KEYS = {"stress_tolerance": 1.0, "max_cutbacks": 8, "petsc_options": {}, "constitutive": "crystal_plasticity",
               "learned_model": None, "correction_in_loop": None}
#: Constitutive kernels a run may use: the material's crystal plasticity; its elastic limit alone
#: (:class:`solver.elastic.AnisotropicElasticity`); its crystal plasticity with the hardening frozen
#: (``h_0 = 0``: the slip resistance stays at ``xi_0``) -- these two are the "incomplete physics" of hybrid
#: forecasts; or crystal plasticity with a learned return map (:mod:`surrogate.learned_update`, needs
#: ``learned_model``).
CONSTITUTIVE = ("crystal_plasticity", "elastic", "frozen_hardening", "learned")
BOUNDARIES = ("periodic", "specimen")
GRIPS = ("clamped", "frictionless")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 and users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$""", re.X),
    list("-+0123456789."))


def load_yaml(path) -> dict:
    """Read a YAML mapping; missing, unreadable or malformed files raise one-line errors."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputFileError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {type(data).__name__}")
    return data


def _section(cfg: dict, name: str, defaults: dict) -> dict:
    sec = cfg.get(name) or {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{name} must be a mapping, got {sec!r}")
    unknown = set(sec) - set(defaults)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
    out = dict(defaults)
    out.update(sec)
    return out


@dataclasses.dataclass
class SimulationSetup:
    """Everything a simulation needs, checked."""

    config: dict
    microstructure: object
    material: object
    loading: object
    boundary: str
    output: dict
    solver: dict
    grips: str = "clamped"
    #: the map before ``microstructure.coarsen`` (set when ``solver.correction_in_loop`` needs it)
    fine_microstructure: object = None


def _model_dir(value, key: str, base_dir, make: str) -> str:
    """A trained model directory named by ``solver.<key>``, resolved against ``base_dir``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"solver.{key} must be a model directory ({make})")
    path = pathlib.Path(value)
    path = path if path.is_absolute() else pathlib.Path(base_dir) / path
    if not (path / "model.json").is_file():
        raise ConfigError(f"solver.{key}: {path} is not a trained model directory (no model.json)")
    return str(path)


def prepare_simulation(cfg: dict, base_dir: pathlib.Path | str = ".") -> SimulationSetup:
    """Check a simulation config and build its objects.

    Args:
        cfg: the parsed config mapping.
        base_dir: directory that relative file names are resolved against.

    Raises:
        ConfigError, InputFileError: one-line messages naming the problem.
    """
    from .loading import loading_from_config, specimen_axis
    from .materials import material_from_config
    from .microstructure import microstructure_from_config

    unknown = set(cfg) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    for required in ("microstructure", "loading"):
        if required not in cfg:
            raise ConfigError(f"config has no '{required}' section")
    boundary, grips = _boundary(cfg.get("boundary", "periodic"))
    output = _section(cfg, "output", OUTPUT_KEYS)
    every = output["every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"output.every must be a positive integer, got {every!r}")
    solver = _section(cfg, "solver", SOLVER_KEYS)
    if not isinstance(solver["petsc_options"], dict):
        raise ConfigError("solver.petsc_options must be a mapping of PETSc option names to values")
    try:
        if not float(solver["stress_tolerance"]) > 0:
            raise ValueError
        if int(solver["max_cutbacks"]) < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError("solver.stress_tolerance must be positive and solver.max_cutbacks >= 0") from None
    if solver["constitutive"] not in CONSTITUTIVE:
        raise ConfigError(f"solver.constitutive {solver['constitutive']!r} is unknown; known: {', '.join(CONSTITUTIVE)}")
    if solver["constitutive"] == "learned":
        if solver["learned_model"] is None:
            raise ConfigError("solver.constitutive: learned needs solver.learned_model: the model directory "
                              "(slipstream train --learned-update MATERIAL --out DIR)")
        solver["learned_model"] = _model_dir(solver["learned_model"], "learned_model", base_dir,
                                             "slipstream train --learned-update MATERIAL --out DIR")
    elif solver["learned_model"] is not None:
        raise ConfigError("solver.learned_model applies only with solver.constitutive: learned")

    material = material_from_config(cfg.get("material") or {"preset": "Cu"})
    if not isinstance(cfg["microstructure"], dict):
        raise ConfigError("microstructure must be a mapping with a 'kind'")
    microstructure = microstructure_from_config(cfg["microstructure"], pathlib.Path(base_dir))
    lattice = getattr(microstructure, "lattice", None)
    if lattice is not None and lattice != material.lattice:
        raise ConfigError(f"the microstructure is {lattice} but material '{material.name}' is {material.lattice}")
    loading = loading_from_config(cfg["loading"])
    if boundary == "specimen":
        specimen_axis(loading)
    fine = None
    if solver["correction_in_loop"] is not None:
        fine = _in_loop_setup(cfg, solver, material, microstructure, loading, base_dir)
    return SimulationSetup(cfg, microstructure, material, loading, boundary, output, solver, grips, fine)


IN_LOOP_FORMAT = "slipstream.state_correction/1"
_IN_LOOP_MAKE = "slipstream train --in-loop --store FINE --coarse COARSE --out DIR"


def check_in_loop_model(path, coarsen: int, material: dict) -> dict:
    """The ``model.json`` of an in-loop state correction, checked against a run (without loading torch).

    Args:
        path: the model directory.
        coarsen: the run's ``microstructure.coarsen`` (0 for a mesh).
        material: the run's material parameters (:meth:`~solver.materials.Material.as_dict`).

    Raises:
        ConfigError: no readable or another kind of model, another coarsening or material.
    """
    import json

    try:
        meta = json.loads((pathlib.Path(path) / "model.json").read_text())
        fmt, factor = meta.get("format"), int(meta.get("factor", 0))
        fine_coarsen, trained = int(meta.get("fine_coarsen", 1)), dict(meta["store"]["material"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"solver.correction_in_loop: {path}/model.json is not readable ({exc})") from None
    if fmt != IN_LOOP_FORMAT:
        raise ConfigError(f"solver.correction_in_loop: {path} is not an in-loop state correction ({_IN_LOOP_MAKE})")
    if coarsen != factor * fine_coarsen:
        raise ConfigError(f"solver.correction_in_loop: the model corrects solves {factor}x coarser than a map of "
                          f"coarsen {fine_coarsen}, i.e. microstructure.coarsen {factor * fine_coarsen}; this run "
                          f"has {coarsen or 'a mesh'}")
    differing = sorted(k for k in set(trained) | set(material)
                       if k not in ("reference", "units") and trained.get(k) != material.get(k))
    if differing:
        raise ConfigError(f"solver.correction_in_loop: the model was trained on material {trained.get('name')!r}; "
                          f"this run's {material.get('name')!r} differs in {', '.join(differing)}")
    return meta


def _in_loop_setup(cfg, solver, material, microstructure, loading, base_dir):
    """Check ``solver.correction_in_loop`` against the run; return the map the model sees (before coarsening).

    The model (``slipstream train --in-loop``) corrects the state of a 2-D voxel solve ``k`` times coarser
    than the map it was trained for, of its material, in crystal plasticity, under the loads it learns
    (not a general deformation gradient).
    """
    from .microstructure import coarsen_option, microstructure_from_config

    solver["correction_in_loop"] = path = _model_dir(solver["correction_in_loop"], "correction_in_loop", base_dir,
                                                     _IN_LOOP_MAKE)
    if solver["constitutive"] not in ("crystal_plasticity", "learned"):
        raise ConfigError(f"solver.correction_in_loop corrects crystal plasticity, not solver.constitutive "
                          f"{solver['constitutive']!r}")
    ms_cfg = cfg["microstructure"]
    coarsen = coarsen_option(ms_cfg) if ms_cfg.get("kind") != "mesh" else 0
    meta = check_in_loop_model(path, coarsen, material.as_dict())
    if microstructure.shape[0] != 1:
        raise ConfigError("solver.correction_in_loop: the in-loop correction learns 2-D maps (z = 1); "
                          f"this map has {microstructure.shape[0]} layers")
    if loading.mode == "deformation_gradient":
        raise ConfigError("solver.correction_in_loop: a general deformation-gradient load is not learned")
    return microstructure_from_config({**ms_cfg, "coarsen": int(meta.get("fine_coarsen", 1))},
                                      pathlib.Path(base_dir))


def _boundary(value) -> tuple[str, str]:
    """``periodic`` | ``specimen`` | ``{kind: specimen, grips: clamped|frictionless}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"kind", "grips"}
        if unknown:
            raise ConfigError(f"boundary: unknown key(s) {sorted(unknown)}; allowed: ['grips', 'kind']")
        kind, grips = value.get("kind", "specimen"), value.get("grips", "clamped")
    else:
        kind, grips = value, "clamped"
    if kind not in BOUNDARIES:
        raise ConfigError(f"boundary '{kind}' is unknown; known: {', '.join(BOUNDARIES)}")
    if grips not in GRIPS:
        raise ConfigError(f"boundary.grips '{grips}' is unknown; known: {', '.join(GRIPS)}")
    return kind, grips
