"""Voxel microstructures: orientation and grain maps on a regular grid.

Conventions (docs/conventions.md, the same as DAMASK's grid solver):

* Arrays are indexed ``(z, y, x)`` with x fastest; a 2-D EBSD map has z = 1.
* ``cells`` and ``size`` are given in ``(x, y, z)`` order, ``size`` in metres.
* Orientations are Bunge ZXZ Euler angles in radians, passive (lab -> crystal).
* Grain ids are 0-based and contiguous: every id in ``0 .. n_grains - 1`` owns
  at least one voxel.

A :class:`Microstructure` comes from a config (:func:`microstructure_from_config`:
Voronoi tessellations, EBSD maps, voxel grids) or directly from a file
(:func:`solver.readers.read_microstructure`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
from typing import Any

import numpy as np

from . import rotations
from .errors import ConfigError, InputFileError

logger = logging.getLogger("slipstream")

#: Lattice names a microstructure may carry (None: the material decides).
LATTICES = ("fcc", "bcc", "cubic", "hcp")

#: Default edge lengths of a generated box, metres (100 um, as DAMASK's examples).
DEFAULT_SIZE = (1.0e-4, 1.0e-4, 1.0e-4)

#: Default grain-segmentation threshold, degrees (the usual high-angle cut for EBSD).
DEFAULT_MISORIENTATION_THRESHOLD = 5.0


@dataclasses.dataclass(repr=False)
class Microstructure:
    """Orientations and grains on a regular voxel grid.

    Attributes:
        euler: ``(nz, ny, nx, 3)`` Bunge Euler angles, radians, float64.
        grain_id: ``(nz, ny, nx)`` int32, 0-based and contiguous.
        size: ``(3,)`` edge lengths ``[Lx, Ly, Lz]`` in metres.
        origin: ``(3,)`` position of the grid's lower corner in metres.
        lattice: ``"fcc"``, ``"bcc"``, ... or None to take it from the material.
        periodic: whether the grid is a periodic RVE (opposite faces meet).
        source: provenance, e.g. ``"voronoi(grains=20, seed=0)"`` or a file name.
        unindexed: number of unindexed EBSD points that were filled.
    """

    euler: np.ndarray
    grain_id: np.ndarray
    size: np.ndarray
    origin: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    lattice: str | None = None
    periodic: bool = True
    source: str = ""
    unindexed: int = 0

    def __post_init__(self) -> None:
        self.euler = np.asarray(self.euler, dtype=np.float64)
        self.grain_id = np.asarray(self.grain_id)
        if np.issubdtype(self.grain_id.dtype, np.integer):
            self.grain_id = self.grain_id.astype(np.int32, copy=False)
        self.size = np.asarray(self.size, dtype=np.float64).reshape(-1)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(-1)
        self.periodic = bool(self.periodic)
        self.unindexed = int(self.unindexed)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(nz, ny, nx)``."""
        return tuple(int(n) for n in self.euler.shape[:3])

    @property
    def cells(self) -> tuple[int, int, int]:
        """Number of voxels ``(nx, ny, nz)`` (DAMASK order)."""
        nz, ny, nx = self.shape
        return (nx, ny, nz)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel edge lengths ``[dx, dy, dz]`` in metres."""
        return self.size / np.asarray(self.cells, dtype=float)

    @property
    def n_grains(self) -> int:
        """Number of grains (ids are ``0 .. n_grains - 1``)."""
        return int(self.grain_id.max()) + 1 if self.grain_id.size else 0

    def orientation_matrices(self) -> np.ndarray:
        """Passive orientation matrices ``(nz, ny, nx, 3, 3)`` (lab -> crystal)."""
        return rotations.euler_to_matrix(self.euler)

    def validate(self) -> Microstructure:
        """Check shapes, angles, grain ids and geometry; return ``self``.

        Raises:
            InputFileError: naming the source and the first problem found.
        """
        where = self.source or "microstructure"
        if self.euler.ndim != 4 or self.euler.shape[-1] != 3 or min(self.euler.shape[:3], default=0) < 1:
            raise InputFileError(f"{where}: euler must have shape (nz, ny, nx, 3), got {self.euler.shape}")
        if self.grain_id.shape != self.euler.shape[:3]:
            raise InputFileError(
                f"{where}: grain_id shape {self.grain_id.shape} does not match the euler grid {self.euler.shape[:3]}")
        if not np.issubdtype(self.grain_id.dtype, np.integer):
            raise InputFileError(f"{where}: grain_id must be integer, got {self.grain_id.dtype}")
        rotations.validate_euler(self.euler, what=f"{where}: Euler angles")
        counts = np.bincount(self.grain_id.ravel()) if self.grain_id.min() >= 0 else None
        if counts is None:
            raise InputFileError(f"{where}: grain_id has negative values (min {int(self.grain_id.min())})")
        if np.any(counts == 0):
            raise InputFileError(
                f"{where}: grain ids are not contiguous (grain {int(np.argmin(counts))} has no voxel)")
        for name, vec in (("size", self.size), ("origin", self.origin)):
            if vec.shape != (3,) or not np.all(np.isfinite(vec)):
                raise InputFileError(f"{where}: {name} must be 3 finite numbers [x, y, z] in metres, got {vec}")
        if np.any(self.size <= 0):
            raise InputFileError(f"{where}: size must be positive, got {self.size.tolist()} m")
        if self.lattice is not None and self.lattice not in LATTICES:
            raise InputFileError(f"{where}: unknown lattice {self.lattice!r} (known: {', '.join(LATTICES)})")
        if self.unindexed < 0:
            raise InputFileError(f"{where}: unindexed must be >= 0, got {self.unindexed}")
        return self

    def __repr__(self) -> str:
        return (f"Microstructure(cells={self.cells}, grains={self.n_grains}, size={self.size.tolist()} m, "
                f"lattice={self.lattice!r}, periodic={self.periodic}, unindexed={self.unindexed}, "
                f"source={self.source!r})")


# --------------------------------------------------------------------------- helpers used by readers

def fill_unindexed(euler: np.ndarray, unindexed: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Give each unindexed point the orientation of its nearest indexed point.

    Distances are Euclidean in physical units (``spacing`` is ``[dx, dy, dz]``),
    so rectangular steps are honoured; ties go to the first point in raster order.

    Args:
        euler: ``(nz, ny, nx, 3)`` angles; values at unindexed points are ignored.
        unindexed: ``(nz, ny, nx)`` boolean mask of points to fill.
        spacing: voxel edge lengths ``(dx, dy, dz)``.

    Returns:
        A filled copy of ``euler``.
    """
    from scipy import ndimage

    euler = np.array(euler, dtype=np.float64)
    unindexed = np.asarray(unindexed, dtype=bool)
    if not unindexed.any():
        return euler
    dx, dy, dz = (float(s) for s in spacing)
    # EDT of the mask: for each masked point, the index of the nearest unmasked one
    _, idx = ndimage.distance_transform_edt(unindexed, sampling=(dz, dy, dx), return_indices=True)
    euler[unindexed] = euler[idx[0][unindexed], idx[1][unindexed], idx[2][unindexed]]
    return euler


def segment_grains(euler: np.ndarray, threshold_deg: float = DEFAULT_MISORIENTATION_THRESHOLD,
                   periodic: bool = False) -> np.ndarray:
    """Grains as face-connected regions whose neighbour disorientation is below a threshold.

    Equivalent to a flood fill from every unvisited voxel that crosses a face
    only when the cubic (432) disorientation across it is below
    ``threshold_deg``; done as connected components of that neighbour graph.
    Ids are numbered in raster order of each grain's first voxel.

    Args:
        euler: ``(nz, ny, nx, 3)`` Bunge angles in radians.
        threshold_deg: disorientation threshold in degrees.
        periodic: also connect opposite faces of the grid.

    Returns:
        ``(nz, ny, nx)`` int32 grain ids, 0-based and contiguous.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    euler = np.asarray(euler, dtype=float)
    shape = euler.shape[:3]
    n = int(np.prod(shape))
    g = rotations.euler_to_matrix(euler)
    index = np.arange(n).reshape(shape)
    sym = rotations.cubic_symmetry_operators()
    threshold = math.radians(threshold_deg)
    rows, cols = [], []
    for axis in range(3):
        if shape[axis] < 2:
            continue
        neighbour = np.roll(np.arange(shape[axis]), -1)
        pairs = slice(None) if (periodic and shape[axis] > 2) else slice(0, shape[axis] - 1)
        a = np.take(index, np.arange(shape[axis])[pairs], axis=axis).ravel()
        b = np.take(index, neighbour[pairs], axis=axis).ravel()
        close = np.empty(a.size, dtype=bool)
        for start in range(0, a.size, _CHUNK):  # bounded memory: 24 traces per pair
            part = slice(start, start + _CHUNK)
            gm = g.reshape(n, 3, 3)
            close[part] = rotations.misorientation_angle(gm[a[part]], gm[b[part]], sym) < threshold
        rows.append(a[close])
        cols.append(b[close])
    r = np.concatenate(rows) if rows else np.zeros(0, int)
    c = np.concatenate(cols) if cols else np.zeros(0, int)
    graph = coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return renumber_raster(labels).reshape(shape)


_CHUNK = 1 << 16


def renumber_raster(labels: np.ndarray) -> np.ndarray:
    """Relabel to ``0 .. k-1`` in order of first appearance (raster order), int32."""
    flat = np.asarray(labels).ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int32).reshape(np.shape(labels))


def coarsen(ms: Microstructure, factor: int) -> Microstructure:
    """The same map on a grid ``factor`` times coarser in x and y (and z when it has layers).

    Each coarse voxel takes the grain that owns most of its ``factor**d`` fine
    voxels (ties: the grain met first in raster order) and the orientation of
    that grain's first fine voxel in the block; grains that own no block vanish
    and ids are renumbered contiguously. ``size`` and ``origin`` are kept, so
    the coarse voxels are ``factor`` times larger. This is the map a coarse
    solve of the low-resolution correction sees (docs/coupling.md).

    Args:
        ms: a voxel microstructure whose ``nx`` and ``ny`` (and ``nz`` when
            ``nz > 1``) are multiples of ``factor``.
        factor: positive integer; 1 returns ``ms`` unchanged.

    Raises:
        ConfigError: a factor that is not a positive integer or does not divide the grid.
    """
    if not _is_int(factor) or factor < 1:
        raise ConfigError(f"coarsening factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    if factor == 1:
        return ms
    nz, ny, nx = ms.shape
    kz = factor if nz > 1 else 1
    if nx % factor or ny % factor or nz % kz:
        raise ConfigError(f"coarsening factor {factor} does not divide the grid {list(ms.cells)} (x, y, z)")
    cz, cy, cx = nz // kz, ny // factor, nx // factor
    # (coarse voxel, fine voxel within its block) in raster order within the block
    blocks = ms.grain_id.reshape(cz, kz, cy, factor, cx, factor).transpose(0, 2, 4, 1, 3, 5).reshape(-1, kz * factor ** 2)
    euler = ms.euler.reshape(cz, kz, cy, factor, cx, factor, 3).transpose(0, 2, 4, 1, 3, 5, 6).reshape(
        blocks.shape + (3,))
    counts = (blocks[:, :, None] == blocks[:, None, :]).sum(axis=2)  # votes of each fine voxel's grain
    pick = np.argmax(counts, axis=1)  # first fine voxel of the (first) majority grain
    rows = np.arange(blocks.shape[0])
    coarse = Microstructure(
        euler=euler[rows, pick].reshape(cz, cy, cx, 3), grain_id=renumber_raster(blocks[rows, pick]).reshape(cz, cy, cx),
        size=ms.size.copy(), origin=ms.origin.copy(), lattice=ms.lattice, periodic=ms.periodic,
        source=f"{ms.source or 'microstructure'} coarsened x{factor}", unindexed=ms.unindexed)
    return coarse.validate()


def coarsen_option(cfg: dict) -> int:
    """The ``coarsen`` key of a microstructure config (default 1), checked."""
    k = cfg.get("coarsen", 1)
    if not _is_int(k) or k < 1:
        raise ConfigError(f"microstructure.coarsen must be a positive integer, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------- config

_KIND_KEYS = {
    "voronoi": {"kind", "cells", "size", "grains", "seed", "periodic", "texture", "coarsen"},
    "ebsd": {"kind", "file", "misorientation_threshold", "confidence_threshold", "thickness", "coarsen"},
    "grid": {"kind", "file", "misorientation_threshold", "coarsen"},
    "mesh": {"kind", "file", "texture", "seed"},
}


@dataclasses.dataclass(repr=False)
class MeshPolycrystal:
    """A grain-conforming gmsh mesh (``.msh``, physical volume tag = grain id + 1).

    The mesh itself is read collectively when the solver is built
    (:func:`solver.gmsh_polycrystal.load_gmsh_polycrystal`); grain orientations
    are drawn from ``texture`` with ``seed`` (one per grain, in grain-id order).

    Attributes:
        file: the ``.msh`` file.
        texture: texture spec as in :mod:`solver.textures`.
        seed: random seed of the orientations.
        lattice: None (taken from the material).
    """

    file: pathlib.Path
    texture: object = "random"
    seed: int = 0
    lattice: str | None = None

    def grain_orientations(self, n_grains: int) -> np.ndarray:
        """``(n_grains, 3, 3)`` passive orientation matrices, reproducible from the seed."""
        from . import textures

        return textures.sample_orientations(self.texture, n_grains, np.random.default_rng(self.seed))

    def __repr__(self) -> str:
        return f"MeshPolycrystal({self.file.name}, texture={self.texture!r}, seed={self.seed})"


def microstructure_from_config(cfg: dict, base_dir: pathlib.Path) -> Microstructure:
    """Build a microstructure from the ``microstructure`` section of a config.

    Kinds (see docs/microstructure.md for every key and default):

    * ``voronoi``: ``cells`` [nx, ny, nz], ``size`` [Lx, Ly, Lz] m (default 1e-4
      each), ``grains``, ``seed`` (default 0), ``periodic`` (default true),
      ``texture`` (default ``random``; see :mod:`solver.textures`).
    * ``ebsd``: ``file`` (.ang or .ctf, relative to ``base_dir``),
      ``misorientation_threshold`` deg (default 5), ``confidence_threshold``
      (.ang only, default 0: only CI < 0 is unindexed), ``thickness`` m of the
      single voxel layer (default: the x step).
    * ``grid``: ``file`` (.npz), ``misorientation_threshold`` (used only when the
      file has no ``grain_id``).

    Voxel kinds also take ``coarsen: k`` (default 1): the map is built as
    described, then solved on a grid ``k`` times coarser (:func:`coarsen`).

    Args:
        cfg: the section as a dict (e.g. from YAML).
        base_dir: directory that relative file names are resolved against.

    Returns:
        A validated :class:`Microstructure`.

    Raises:
        ConfigError: unknown kind or key, or a value out of range.
        InputFileError: the referenced file is missing or corrupt.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"microstructure: expected a mapping with a 'kind' key, got {type(cfg).__name__}")
    kind = cfg.get("kind")
    if kind not in _KIND_KEYS:
        raise ConfigError(f"microstructure.kind: unknown kind {kind!r} (known: {', '.join(_KIND_KEYS)})")
    unknown = sorted(set(cfg) - _KIND_KEYS[kind])
    if unknown:
        raise ConfigError(f"microstructure ({kind}): unknown key {unknown[0]!r} "
                          f"(allowed: {', '.join(sorted(_KIND_KEYS[kind] - {'kind'}))})")
    if kind == "mesh":
        return _from_mesh(cfg, pathlib.Path(base_dir))
    factor = coarsen_option(cfg)  # checked before any work
    ms = _from_voronoi(cfg) if kind == "voronoi" else _from_file(cfg, kind, pathlib.Path(base_dir))
    return coarsen(ms, factor)


def _from_mesh(cfg: dict, base_dir: pathlib.Path) -> MeshPolycrystal:
    from . import textures

    if "file" not in cfg:
        raise ConfigError("microstructure (mesh): needs 'file' (a gmsh .msh with grains as physical volumes)")
    path = pathlib.Path(cfg["file"])
    path = path if path.is_absolute() else base_dir / path
    if path.suffix.lower() != ".msh":
        raise InputFileError(f"{path.name}: a mesh microstructure must be a gmsh .msh file")
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    seed = cfg.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"microstructure.seed must be a non-negative integer, got {seed!r}")
    texture = cfg.get("texture", "random")
    textures.sample_orientations(texture, 1, np.random.default_rng(0))  # checks the texture spec now
    return MeshPolycrystal(path, texture, int(seed))


def _from_voronoi(cfg: dict) -> Microstructure:
    from . import textures, voronoi

    cells = _int_list(cfg, "cells", required=True)
    size = _positive_list(cfg, "size", DEFAULT_SIZE)
    n_voxels = int(np.prod(cells))
    grains = cfg.get("grains")
    if not _is_int(grains) or grains < 1 or grains > n_voxels:
        raise ConfigError(f"microstructure.grains must be an integer in [1, {n_voxels}] "
                          f"(number of voxels), got {grains!r}")
    seed = cfg.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"microstructure.seed must be a non-negative integer, got {seed!r}")
    periodic = cfg.get("periodic", True)
    if not isinstance(periodic, bool):
        raise ConfigError(f"microstructure.periodic must be true or false, got {periodic!r}")
    texture = cfg.get("texture", "random")

    # independent streams: changing the texture keeps the grain geometry
    geometry_rng, texture_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    grain_id, _ = voronoi.voronoi_grains(cells, size, grains, geometry_rng, periodic=periodic)
    g = textures.sample_orientations(texture, int(grain_id.max()) + 1, texture_rng)
    euler = rotations.matrix_to_euler(g)[grain_id]
    ms = Microstructure(euler=euler, grain_id=grain_id, size=np.asarray(size), periodic=periodic,
                        source=f"voronoi(cells={list(cells)}, grains={grains}, seed={seed}, "
                               f"texture={_texture_label(texture)})")
    return ms.validate()


def _from_file(cfg: dict, kind: str, base_dir: pathlib.Path) -> Microstructure:
    from . import readers

    file = cfg.get("file")
    if not isinstance(file, (str, pathlib.Path)) or not str(file):
        raise ConfigError(f"microstructure.file: a file name is required for kind {kind!r}, got {file!r}")
    path = pathlib.Path(file)
    if not path.is_absolute():
        path = base_dir / path
    ext = path.suffix.lower()
    plugin = readers.PLUGINS.get(ext)
    if plugin is not None and plugin.kind != kind:
        raise ConfigError(f"microstructure.file: {path.name} is a {plugin.kind} file; use kind: {plugin.kind}")
    options: dict[str, Any] = {}
    if "misorientation_threshold" in cfg:
        t = cfg["misorientation_threshold"]
        if not _is_number(t) or not 0.0 < t <= 180.0:
            raise ConfigError(f"microstructure.misorientation_threshold must be in (0, 180] degrees, got {t!r}")
        options["misorientation_threshold"] = float(t)
    if "confidence_threshold" in cfg:
        if ext != ".ang":
            raise ConfigError(f"microstructure.confidence_threshold applies to .ang files only, not {path.name}")
        t = cfg["confidence_threshold"]
        if not _is_number(t) or not math.isfinite(t):
            raise ConfigError(f"microstructure.confidence_threshold must be a number, got {t!r}")
        options["confidence_threshold"] = float(t)
    if "thickness" in cfg:
        t = cfg["thickness"]
        if not _is_number(t) or not (math.isfinite(t) and t > 0):
            raise ConfigError(f"microstructure.thickness must be a positive length in metres, got {t!r}")
        options["thickness"] = float(t)
    return readers.read_microstructure(path, **options)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _int_list(cfg: dict, key: str, required: bool) -> tuple[int, int, int]:
    v = cfg.get(key)
    if v is None and required:
        raise ConfigError(f"microstructure.{key} is required: [nx, ny, nz]")
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_int(x) and x > 0 for x in v):
        raise ConfigError(f"microstructure.{key} must be 3 positive integers [nx, ny, nz], got {v!r}")
    return tuple(int(x) for x in v)


def _positive_list(cfg: dict, key: str, default) -> tuple[float, float, float]:
    v = cfg.get(key, default)
    if (not isinstance(v, (list, tuple)) or len(v) != 3
            or not all(_is_number(x) and math.isfinite(x) and x > 0 for x in v)):
        raise ConfigError(f"microstructure.{key} must be 3 positive lengths [Lx, Ly, Lz] in metres, got {v!r}")
    return tuple(float(x) for x in v)


def _texture_label(texture) -> str:
    return texture if isinstance(texture, str) else next(iter(texture), "?") if isinstance(texture, dict) else "?"
