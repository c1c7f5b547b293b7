"""The campaign store: one Zarr v3 group per campaign, the only description of its layout.

A campaign (microstructures x loads) writes one *sample* per solved
microstructure/load pair. Every array has a leading ``sample`` dimension and is
chunked one sample per chunk, so each sample is written by exactly one rank
without locks. Both sides use this module: the solver writes with
:func:`create_store`, :func:`write_sample`, :func:`mark_done`; the surrogate
reads with :func:`open_store` or ``xarray.open_zarr``. It therefore imports
neither dolfinx/petsc4py/mpi4py nor torch.

Conventions (docs/conventions.md, docs/dataset.md):

* Schema ``slipstream.campaign/1`` in the root attribute ``schema``.
* SI units (Pa, s, m, rad); each array names its unit in ``attrs["units"]``.
* Orientations: Bunge ZXZ Euler angles ``(phi1, Phi, phi2)`` in radians,
  passive (lab -> crystal), as in :mod:`solver.rotations`.
* Symmetric tensors as 6-vectors in Voigt order 11, 22, 33, 23, 13, 12 holding
  the *tensor* components (``eps_23``, not the engineering ``2 eps_23``);
  ``attrs["measure"]`` says Cauchy stress / Hencky strain ``ln V``.
* Voxel arrays are ``(z, y, x)``, x fastest; a 2-D map has ``z = 1``.
* Slip systems in DAMASK 3.1's fixed order (``solver.lattice.slip_systems``).
* Per-voxel, per-step fields are float32 (they are training data and dominate
  the size); scalars, times and volume averages are float64.

Status contract (DESIGN.md, "Zarr campaign store"):

* ``status`` is 0 pending, 1 done, 2 failed. A sample is done only after all of
  its data is written: :func:`write_sample` first resets the sample to pending,
  then writes the data; :func:`mark_done` writes ``status`` last. A crash at any
  point leaves the sample pending, and a resumed campaign redoes every sample
  that is not done (:func:`pending_samples`).
* Rank 0 calls :func:`create_store` before any rank writes; the others call
  ``open_store(path, "r+")``. One writer per chunk = one rank per sample. No
  array is ever resized. :func:`consolidate` once at the end.
* Reading never executes code: only numeric dtypes and the Zarr v3 native
  variable-length UTF-8 ``string`` dtype, no pickle/object codecs.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import math
import operator
import platform
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr
import zarr.codecs

from .errors import ConfigError, StoreError
from .loading import MODES as LOAD_MODES  # codes = positions; fixed within schema /1 (append only)

SCHEMA = "slipstream.campaign/1"

PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = ("pending", "done", "failed")

LATTICES = ("fcc", "bcc", "hcp")

VOIGT_ORDER = ("11", "22", "33", "23", "13", "12")
EULER_COMPONENTS = ("phi1", "Phi", "phi2")
TENSOR9_ORDER = ("11", "12", "13", "21", "22", "23", "31", "32", "33")

# the Euler component dimension is not called "euler": xarray would take the
# array `euler` for that dimension's (1-D) index variable and refuse it
EULER_DIM = "euler_angle"

# sizes of the fixed component dimensions; the others come from create_store
_FIXED_DIMS = {EULER_DIM: 3, "vector3": 3, "voigt": 6, "tensor9": 9}

_COMPRESSOR = zarr.codecs.ZstdCodec(level=3)
_MAX_REASON = 500  # characters kept of a failure reason


@dataclass(frozen=True)
class Field:
    """One array of the store.

    Attributes:
        dims: dimension names, ``sample`` first.
        dtype: NumPy dtype string (``"str"`` = Zarr v3 variable-length UTF-8).
        unit: SI unit (``"1"`` dimensionless, ``""`` for codes and text).
        long_name: a short label (used by xarray for plot axes).
        description: what the array holds, in the field's words.
        fill: value of unwritten entries.
        attrs: extra attributes (measure, component order, flag meanings).
        optional: only created on request (``with_nye``, ``with_plastic_deformation``).
        written_by: ``"write_sample"`` or ``"mark"`` (status and failure reason).
    """

    dims: tuple[str, ...]
    dtype: str
    unit: str
    long_name: str
    description: str
    fill: Any = math.nan
    attrs: dict[str, Any] = field(default_factory=dict)
    optional: bool = False
    written_by: str = "write_sample"


_VOX = ("z", "y", "x")
_STEP_VOX = ("sample", "step") + _VOX
_VOIGT_ATTRS = {"components": list(VOIGT_ORDER), "shear_components": "tensor"}
_SLIP_ORDER = "DAMASK 3.1 order, as solver.lattice.slip_systems(lattice)"

FIELDS: dict[str, Field] = {
    # ---- per sample: microstructure and load -------------------------------
    "euler0": Field(("sample",) + _VOX + (EULER_DIM,), "float64", "rad", "initial orientation",
                    "initial crystal orientation per voxel, Bunge ZXZ Euler angles, passive (lab -> crystal)",
                    attrs={"components": list(EULER_COMPONENTS), "convention": "Bunge ZXZ, passive, P=-1"}),
    "grain_id": Field(("sample",) + _VOX, "int32", "", "grain id",
                      "grain (or EBSD point cluster) each voxel belongs to; -1 = not written", fill=-1),
    "load_mode": Field(("sample",), "int8", "", "load mode",
                       "macroscopic load mode code; names in flag_meanings, -1 = not written", fill=-1,
                       attrs={"flag_values": list(range(len(LOAD_MODES))),
                              "flag_meanings": " ".join(LOAD_MODES),
                              "codes": {name: code for code, name in enumerate(LOAD_MODES)}}),
    "load_direction": Field(("sample", "vector3"), "float64", "1", "load direction",
                            "unit vector of the loading axis in the lab frame (x, y, z)"),
    "load_strain": Field(("sample",), "float64", "1", "load strain",
                         "target macroscopic strain of the load path (the number in the load string)"),
    "load_rate": Field(("sample",), "float64", "1/s", "load rate", "prescribed macroscopic strain rate"),
    # ---- per sample: outcome and solver statistics -------------------------
    "status": Field(("sample",), "int8", "", "status", "0 pending, 1 done (all data written), 2 failed",
                    fill=PENDING, written_by="mark",
                    attrs={"flag_values": [PENDING, DONE, FAILED], "flag_meanings": " ".join(STATUS_NAMES)}),
    "failure_reason": Field(("sample",), "str", "", "failure reason",
                            "one-line reason when status is 2 (failed), else empty", fill="", written_by="mark"),
    "wall_time": Field(("sample",), "float64", "s", "wall time", "wall-clock time of the solve of this sample"),
    "increments": Field(("sample",), "int32", "1", "increments",
                        "load increments taken, cutbacks included; -1 = not written", fill=-1),
    "newton_iterations": Field(("sample",), "int32", "1", "Newton iterations",
                               "global Newton iterations over all increments; -1 = not written", fill=-1),
    "cutbacks": Field(("sample",), "int32", "1", "cutbacks", "load-step cutbacks; -1 = not written", fill=-1),
    # ---- per output step ---------------------------------------------------
    "time": Field(("sample", "step"), "float64", "s", "time", "simulated time of each output step"),
    "stress": Field(_STEP_VOX + ("voigt",), "float32", "Pa", "Cauchy stress",
                    "Cauchy stress per voxel in the lab frame, Voigt order 11, 22, 33, 23, 13, 12",
                    attrs={"measure": "Cauchy", **_VOIGT_ATTRS}),
    "strain": Field(_STEP_VOX + ("voigt",), "float32", "1", "Hencky strain",
                    "logarithmic (Hencky) strain ln V per voxel in the lab frame, Voigt order 11, 22, 33, 23, 13, 12",
                    attrs={"measure": "Hencky ln(V)", **_VOIGT_ATTRS}),
    "euler": Field(_STEP_VOX + (EULER_DIM,), "float32", "rad", "orientation",
                   "current crystal orientation per voxel, Bunge ZXZ Euler angles, passive (lab -> crystal)",
                   attrs={"components": list(EULER_COMPONENTS), "convention": "Bunge ZXZ, passive, P=-1"}),
    "slip": Field(_STEP_VOX + ("slip_system",), "float32", "1", "accumulated slip",
                  "accumulated shear (integral of |gamma_dot| over time) per slip system, lattice order",
                  attrs={"slip_system_order": _SLIP_ORDER}),
    "slip_resistance": Field(_STEP_VOX + ("slip_system",), "float32", "Pa", "slip resistance",
                             "slip resistance xi per slip system, lattice order",
                             attrs={"slip_system_order": _SLIP_ORDER}),
    "von_mises_stress": Field(_STEP_VOX, "float32", "Pa", "von Mises stress",
                              "equivalent stress sqrt(3/2 s:s) of the Cauchy stress deviator s",
                              attrs={"measure": "Cauchy"}),
    "von_mises_strain": Field(_STEP_VOX, "float32", "1", "von Mises strain",
                              "equivalent strain sqrt(2/3 e:e) of the Hencky strain deviator e",
                              attrs={"measure": "Hencky ln(V)"}),
    "macro_stress": Field(("sample", "step", "voigt"), "float64", "Pa", "mean Cauchy stress",
                          "macroscopic Cauchy stress: average over the deformed volume "
                          "(= mean(P) mean(F)^T / det mean(F)), Voigt order 11, 22, 33, 23, 13, 12",
                          attrs={"measure": "Cauchy", **_VOIGT_ATTRS}),
    "macro_strain": Field(("sample", "step", "voigt"), "float64", "1", "mean Hencky strain",
                          "Hencky strain ln V of the mean deformation gradient, Voigt order 11, 22, 33, 23, 13, 12",
                          attrs={"measure": "Hencky ln(V)", **_VOIGT_ATTRS}),
    "nye": Field(_STEP_VOX + ("tensor9",), "float32", "1/m", "Nye tensor",
                 "Nye dislocation density tensor alpha_ij (curl of the plastic distortion), "
                 "row-major 11, 12, 13, 21, 22, 23, 31, 32, 33",
                 attrs={"components": list(TENSOR9_ORDER)}, optional=True),
    # the solver's history variable, so a coarse solve can be handed a corrected state (docs/coupling.md)
    "plastic_deformation": Field(_STEP_VOX + ("tensor9",), "float32", "1", "plastic deformation",
                                 "plastic part Fp of F = Fe Fp per voxel (mean over its Gauss points), "
                                 "row-major 11, 12, 13, 21, 22, 23, 31, 32, 33; det Fp = 1",
                                 attrs={"components": list(TENSOR9_ORDER), "measure": "Fp of F = Fe Fp"},
                                 optional=True),
}

UNITS: dict[str, str] = {name: f.unit for name, f in FIELDS.items()}


# ----------------------------------------------------------------- helpers --

def _jsonable(value: Any, where: str = "config") -> Any:
    """``value`` as plain JSON types (dict/list/str/int/float/bool/None).

    NumPy scalars and arrays become Python numbers and lists, tuples lists,
    paths strings. NaN/inf and other types raise, so the fingerprint and the
    stored config mean the same thing.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ConfigError(f"{where} = {value} is not a finite number")
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: key {k!r} is not a string")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{where} has type {type(value).__name__}, which cannot be stored as JSON")


def _canonical_json(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``config``.

    Canonical = keys sorted, no whitespace, tuples as lists, NumPy values as
    Python numbers; so the fingerprint does not depend on key order.

    Raises:
        ConfigError: if the config is not JSON-able.
    """
    return hashlib.sha256(_canonical_json(config).encode("ascii")).hexdigest()


def _dist_version(import_name: str, distributions: tuple[str, ...]) -> str:
    """Version of the distribution providing ``import_name``, without importing it."""
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    # e.g. dolfinx shipped inside the dolfinx-solver-real wheel
    for dist in importlib.metadata.packages_distributions().get(import_name, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "not installed"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Where and with what a store was made.

    Returns:
        ``slipstream`` version, versions of numpy, zarr, xarray, dolfinx, torch
        (read from package metadata, nothing imported; ``"not installed"``
        when absent), python and platform, the git commit of the Slipstream
        checkout (``"unknown"`` outside a repository or before its first
        commit) and whether the work tree had uncommitted changes, and the
        creation time (ISO 8601, UTC).
    """
    from . import __version__

    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = None
    if commit != "unknown":
        status = _git("status", "--porcelain")
        dirty = None if status is None else bool(status)
    return {
        "slipstream": __version__,
        "numpy": _dist_version("numpy", ("numpy",)),
        "zarr": _dist_version("zarr", ("zarr",)),
        "xarray": _dist_version("xarray", ("xarray",)),
        "dolfinx": _dist_version("dolfinx", ("fenics-dolfinx", "dolfinx-solver-real")),
        "torch": _dist_version("torch", ("torch",)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _positive_int(value: Any, what: str) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"{what} must be at least 1, got {n}")
    return n


def _dim_sizes(n_samples: int, grid_shape: tuple[int, int, int], n_steps: int, n_slip: int) -> dict[str, int]:
    nz, ny, nx = grid_shape
    return {"sample": n_samples, "step": n_steps, "z": nz, "y": ny, "x": nx, "slip_system": n_slip, **_FIXED_DIMS}


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


# -------------------------------------------------------------- create/open --

def create_store(path: str | Path, *, n_samples: int, grid_shape: tuple[int, int, int], n_steps: int,
                 n_slip: int, config: Mapping[str, Any], material: Mapping[str, Any], lattice: str,
                 with_nye: bool = False, with_plastic_deformation: bool = False,
                 overwrite: bool = False) -> zarr.Group:
    """Create an empty campaign store (every sample pending). Rank 0 only.

    All arrays are created at their final size (nothing is resized later), one
    sample per chunk, zstd-compressed, with ``dimension_names`` and attributes
    ``units``, ``long_name``, ``description``. The root attribute ``schema`` is
    written last, so a store left half-created by a crash is refused by
    :func:`open_store`.

    Args:
        path: directory of the store (local file system).
        n_samples: number of samples (microstructure x load pairs).
        grid_shape: voxel grid ``(nz, ny, nx)``; ``nz = 1`` for a 2-D map.
        n_steps: output steps per sample.
        n_slip: slip systems of the lattice.
        config: the full campaign config (JSON-able); stored with its fingerprint.
        material: material parameters (JSON-able), stored as given.
        lattice: ``"fcc"``, ``"bcc"`` or ``"hcp"``.
        with_nye: also create the ``nye`` array.
        with_plastic_deformation: also create the ``plastic_deformation`` array.
        overwrite: replace an existing Zarr store at ``path``. Something at
            ``path`` that is not a Zarr store is never deleted.

    Returns:
        The store's root group, open for writing.

    Raises:
        StoreError: ``path`` exists (and ``overwrite`` is false, or it is not a
            Zarr store).
        ConfigError: a size is not a positive integer, the lattice is unknown
            or ``config``/``material`` are not JSON-able.
    """
    path = Path(path)
    n_samples = _positive_int(n_samples, "n_samples")
    n_steps = _positive_int(n_steps, "n_steps")
    n_slip = _positive_int(n_slip, "n_slip")
    if len(tuple(grid_shape)) != 3:
        raise ConfigError(f"grid_shape must be (nz, ny, nx), got {tuple(grid_shape)}")
    grid = tuple(_positive_int(n, f"grid_shape[{i}]") for i, n in enumerate(grid_shape))
    if lattice not in LATTICES:
        raise ConfigError(f"lattice {lattice!r} is not one of {', '.join(LATTICES)}")
    config_json = _jsonable(config, "config")
    material_json = _jsonable(material, "material")

    if path.exists() or path.is_symlink():
        if not overwrite:
            raise StoreError(f"{path} already exists; refusing to overwrite it (ask for overwrite explicitly)")
        is_empty_dir = path.is_dir() and not any(path.iterdir())
        if not (_is_zarr_store(path) or is_empty_dir):
            raise StoreError(f"{path} exists and is not a Zarr store; refusing to delete it")

    sizes = _dim_sizes(n_samples, grid, n_steps, n_slip)
    group = zarr.create_group(store=str(path), zarr_format=3, overwrite=overwrite)
    for name, f in FIELDS.items():
        requested = {"nye": with_nye, "plastic_deformation": with_plastic_deformation}
        if f.optional and not requested[name]:
            continue
        shape = tuple(sizes[d] for d in f.dims)
        group.create_array(
            name, shape=shape, chunks=(1,) + shape[1:], dtype=str if f.dtype == "str" else f.dtype,
            fill_value=f.fill, compressors=_COMPRESSOR, dimension_names=f.dims,
            attributes={"units": f.unit, "long_name": f.long_name, "description": f.description, **f.attrs})

    group.attrs.update({
        "config": config_json,
        "config_fingerprint": config_fingerprint(config_json),
        "material": material_json,
        "lattice": lattice,
        "n_samples": n_samples,
        "grid_shape": list(grid),
        "n_steps": n_steps,
        "n_slip": n_slip,
        "with_nye": bool(with_nye),
        "with_plastic_deformation": bool(with_plastic_deformation),
        "dimensions": sizes,
        "units": {name: f.unit for name, f in FIELDS.items() if name in group},
        "conventions": {
            "euler": "Bunge ZXZ (phi1, Phi, phi2), radians, passive (lab -> crystal), P=-1",
            "voigt_order": list(VOIGT_ORDER),
            "voigt_shear": "tensor components (eps_23, not 2 eps_23)",
            "voxel_order": "(z, y, x), x fastest; 2-D maps have z = 1",
            "status": {str(code): name for code, name in enumerate(STATUS_NAMES)},
        },
        "provenance": provenance(),
    })
    group.attrs["schema"] = SCHEMA  # last: marks the store complete
    return group


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open a campaign store and check its schema.

    Args:
        path: directory of the store.
        mode: ``"r"`` (read only; uses consolidated metadata when present) or
            ``"r+"`` (write samples into an existing store).

    Returns:
        The root group.

    Raises:
        StoreError: the path is missing, is not a Zarr v3 group, or carries no
            or another schema than :data:`SCHEMA`.
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no campaign store at {path} (path does not exist)")
    if not path.is_dir() or not (path / "zarr.json").is_file():
        if (path / ".zgroup").is_file():
            raise StoreError(f"{path} is a Zarr v2 store; expected a Zarr v3 store with schema {SCHEMA!r}")
        raise StoreError(f"{path} is not a Zarr v3 store (no zarr.json); expected schema {SCHEMA!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr's note that consolidated metadata is not in the v3 spec
            if mode == "r":
                group = zarr.open_group(str(path), mode="r", zarr_format=3)
            else:
                # consolidated metadata is a snapshot; a writer reads the live one
                group = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    except Exception as err:  # corrupt JSON, an array at the root, ...
        msg = " ".join(str(err).split())[:200]
        raise StoreError(f"{path} is not a readable Zarr v3 group ({type(err).__name__}: {msg})") from None
    found = group.attrs.get("schema")
    if found is None:
        raise StoreError(f"{path} has no schema attribute (not a campaign store, or its creation did not "
                         f"finish); expected schema {SCHEMA!r}")
    if found != SCHEMA:
        raise StoreError(f"{path} has schema {found!r}; expected {SCHEMA!r}")
    return group


def consolidate(path: str | Path) -> zarr.Group:
    """Consolidate the metadata of a finished store (once, at the end of a campaign).

    Returns:
        The store reopened read-only on its consolidated metadata.
    """
    open_store(path, "r+")  # schema check
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not (yet) in the v3 spec
        zarr.consolidate_metadata(str(path))
    return open_store(path, "r")


def check_compatible(group: zarr.Group, config: Mapping[str, Any]) -> None:
    """Refuse to resume a campaign into a store made by another config.

    Raises:
        StoreError: the store's ``config_fingerprint`` differs from ``config``'s.
    """
    stored = group.attrs.get("config_fingerprint")
    wanted = config_fingerprint(config)
    if stored != wanted:
        raise StoreError(f"store was made by another config (fingerprint {str(stored)[:12]}, this config "
                         f"{wanted[:12]}); use a new store or overwrite it")


# ------------------------------------------------------------------ samples --

def _n_samples(group: zarr.Group) -> int:
    return int(group["status"].shape[0])


def _sample_index(group: zarr.Group, index: Any) -> int:
    try:
        i = operator.index(index)
    except TypeError:
        raise StoreError(f"sample index must be an integer, got {index!r}") from None
    n = _n_samples(group)
    if not 0 <= i < n:
        raise StoreError(f"sample index {i} is out of range [0, {n})")
    return i


def _writable(group: zarr.Group) -> None:
    if group.read_only:
        raise StoreError("store is open read-only; open it with mode 'r+' to write samples")


def sample_field_shapes(group: zarr.Group) -> dict[str, tuple[int, ...]]:
    """Shape of one sample of each array that :func:`write_sample` takes (all required)."""
    return {name: tuple(group[name].shape[1:]) for name, f in FIELDS.items()
            if f.written_by == "write_sample" and name in group}


def _load_mode_code(value: Any) -> int:
    if isinstance(value, str):
        if value not in LOAD_MODES:
            raise StoreError(f"load_mode {value!r} is not one of {', '.join(LOAD_MODES)}")
        return LOAD_MODES.index(value)
    code = int(value)
    if not 0 <= code < len(LOAD_MODES):
        raise StoreError(f"load_mode code {code} is not in [0, {len(LOAD_MODES)})")
    return code


def stored_fields(group: zarr.Group, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` without the optional arrays that ``group`` was created without.

    A solve returns every field; a store made before an optional array existed
    (or without it) resumes with the arrays it has.
    """
    return {name: value for name, value in fields.items()
            if name in group or name not in FIELDS or not FIELDS[name].optional}


def write_sample(group: zarr.Group, index: int, fields: Mapping[str, Any]) -> None:
    """Write all data of one sample; leaves it pending.

    Every array of :func:`sample_field_shapes` is required (``nye`` only if the
    store has it); ``status`` and ``failure_reason`` are not taken (see
    :func:`mark_done`, :func:`mark_failed`). ``load_mode`` may be a name or a
    code. Everything is checked before anything is written; then the sample is
    reset to pending and its arrays are written, one chunk each.

    Args:
        group: a store open for writing.
        index: sample index.
        fields: name -> array of the sample's shape (no ``sample`` axis).

    Raises:
        StoreError: unknown, missing or wrongly shaped fields, a value that does
            not cast to the array's dtype, an index out of range, a read-only store.
    """
    _writable(group)
    i = _sample_index(group, index)
    shapes = sample_field_shapes(group)
    unknown = sorted(set(fields) - set(shapes))
    if unknown:
        hint = ""
        lacking = [name for name in unknown if FIELDS.get(name) is not None and FIELDS[name].optional]
        if lacking:
            hint = f" (the store was created without {', '.join(lacking)})"
        if set(unknown) & {"status", "failure_reason"}:
            hint = " (status is set by mark_done/mark_failed)"
        raise StoreError(f"sample {i}: unknown field(s) {', '.join(unknown)}{hint}")
    missing = [name for name in shapes if name not in fields]
    if missing:
        raise StoreError(f"sample {i}: missing field(s) {', '.join(missing)}")

    values = {}
    for name, shape in shapes.items():
        value = fields[name]
        if name == "load_mode":
            value = _load_mode_code(value)
        arr = np.asarray(value)
        if arr.shape != shape:
            raise StoreError(f"sample {i}: {name} has shape {arr.shape}, expected {shape}")
        dtype = np.dtype(FIELDS[name].dtype)
        try:
            # same_kind: float -> float32 is fine, float -> int (grain ids) is refused
            values[name] = arr.astype(dtype, casting="same_kind", copy=False)
        except TypeError:
            raise StoreError(f"sample {i}: {name} has dtype {arr.dtype}, which does not cast to {dtype}") from None

    # pending first: a crash while writing must not leave an old "done" behind
    group["status"][i] = PENDING
    group["failure_reason"][i] = ""
    for name, value in values.items():
        group[name][i] = value


def mark_done(group: zarr.Group, index: int) -> None:
    """Mark a sample done. Call only after :func:`write_sample` returned; ``status`` is written last.

    Raises:
        StoreError: the sample has no data (its ``time`` was never written).
    """
    _writable(group)
    i = _sample_index(group, index)
    # cheap guard (one small chunk) against marking an unwritten sample done
    if np.all(np.isnan(group["time"][i])):
        raise StoreError(f"sample {i} has no data written; call write_sample before mark_done")
    group["failure_reason"][i] = ""
    group["status"][i] = DONE


def mark_failed(group: zarr.Group, index: int, reason: str) -> None:
    """Mark a sample failed with a one-line ``reason`` (whitespace collapsed, truncated)."""
    _writable(group)
    i = _sample_index(group, index)
    text = " ".join(str(reason).split()) or "unknown"
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON - 3] + "..."
    group["failure_reason"][i] = text
    group["status"][i] = FAILED


def sample_status(group: zarr.Group) -> np.ndarray:
    """``status`` of every sample, ``(n_samples,)`` int8: 0 pending, 1 done, 2 failed."""
    return np.asarray(group["status"][:], dtype=np.int8)


def pending_samples(group: zarr.Group, *, include_failed: bool = True) -> np.ndarray:
    """Indices of the samples a resumed campaign must (re)do.

    Args:
        include_failed: also return failed samples (the default: a resumed
            campaign redoes every sample that is not done).
    """
    status = sample_status(group)
    todo = status != DONE if include_failed else status == PENDING
    return np.flatnonzero(todo)


def extend_store(path: str | Path, n_samples: int, config: Mapping[str, Any]) -> zarr.Group:
    """Grow a campaign store to ``n_samples`` samples (the new ones pending). Rank 0 only, before any writer.

    The one exception to "no array is ever resized", for ``slipstream campaign
    --extend``: the caller has checked that ``config`` differs from the stored
    one only in the number of samples. With one sample per chunk, growing an
    array rewrites only its metadata; existing chunks (and so every written
    sample and its status) are untouched, and new samples read as fill values
    (``status`` 0, pending).

    Crash safety: the consolidated metadata are dropped first, then every
    array is resized, then the root attributes (``config``, its fingerprint,
    ``n_samples``, ``dimensions``) are replaced in one write. A crash before that
    last write leaves the old attributes with arrays that may be longer;
    calling this function again (same or larger ``n_samples``) completes it.
    Call :func:`consolidate` when the campaign ends.

    Args:
        path: the store.
        n_samples: the new number of samples (at least the stored one).
        config: the new full config (JSON-able); stored with its fingerprint.

    Returns:
        The root group, open for writing.

    Raises:
        StoreError: ``n_samples`` is below the stored count, or no store at ``path``.
        ConfigError: ``n_samples`` is not a positive integer or ``config`` is not JSON-able.
    """
    n = _positive_int(n_samples, "n_samples")
    config_json = _jsonable(config, "config")
    group = open_store(path, "r+")  # the live metadata, not the consolidated snapshot
    attrs = group.attrs.asdict()
    old = int(attrs.get("n_samples", 0))
    if n < old:
        raise StoreError(f"{path} holds {old} samples; a store cannot shrink to {n}")
    # rewriting the root attributes drops a stale consolidated snapshot before shapes change
    group.attrs.put({**attrs, "extending_to": n})
    for name in group.array_keys():
        arr = group[name]
        if arr.shape[0] != n:
            arr.resize((n,) + tuple(arr.shape[1:]))
    attrs.update({"config": config_json, "config_fingerprint": config_fingerprint(config_json), "n_samples": n,
                  "dimensions": {**attrs.get("dimensions", {}), "sample": n}})
    attrs.pop("extending_to", None)
    group.attrs.put(attrs)  # one write; schema stays
    return open_store(path, "r+")
