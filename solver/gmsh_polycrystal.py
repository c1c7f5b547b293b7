"""Grain-conforming tetrahedral meshes of Voronoi polycrystals (gmsh).

Conventions:

* The box is ``[0, Lx] x [0, Ly] x [0, Lz]`` (metres); grain ``i`` is the
  Voronoi cell of seed ``i`` clipped to the box (not periodic).
* Physical volume tag = grain id + 1 (name ``grain_<id>``).
* Physical surface tags of the box faces: 1 x = 0, 2 x = Lx, 3 y = 0,
  4 y = Ly, 5 z = 0, 6 z = Lz (names ``x0``, ``x1``, ``y0``, ``y1``, ``z0``,
  ``z1``). Grain boundaries carry no physical tag.
* Files are gmsh MSH 4.1 ASCII.

Each cell is the intersection of the box with the half-spaces of the
perpendicular bisectors to the other seeds (``scipy.spatial.HalfspaceIntersection``).
Vertices are merged globally and every grain-boundary facet is one shared
surface of the built-in (geo) kernel, so the mesh is conforming by
construction, with no boolean operations.

gmsh runs on one process; :func:`load_gmsh_polycrystal` reads on rank 0 and
distributes the mesh with ``dolfinx.io.gmsh.model_to_mesh``.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
from scipy.spatial import HalfspaceIntersection, cKDTree

from .errors import ConfigError, InputFileError

#: Physical tags and names of the box faces, in the order (x0, x1, y0, y1, z0, z1).
FACE_TAGS = {"x0": 1, "x1": 2, "y0": 3, "y1": 4, "z0": 5, "z1": 6}


def polycrystal_seeds(grains: int, seed: int, size) -> np.ndarray:
    """The ``(grains, 3)`` seed points used by :func:`generate_polycrystal_msh`."""
    rng = np.random.default_rng(seed)
    return rng.random((grains, 3)) * np.asarray(size, dtype=float)


def generate_polycrystal_msh(path: str | pathlib.Path, grains: int, seed: int, size=(1.0e-4, 1.0e-4, 1.0e-4),
                             mesh_size: float | None = None) -> np.ndarray:
    """Mesh a random Voronoi polycrystal in a box with gmsh and write an ``.msh`` file.

    Args:
        path: output file (``.msh``).
        grains: number of grains (seeds), >= 1.
        seed: random seed (the seeds are :func:`polycrystal_seeds`).
        size: box edge lengths ``(Lx, Ly, Lz)`` in metres.
        mesh_size: target element size in metres (default: a fifth of the
            mean grain diameter).

    Returns:
        The ``(grains, 3)`` seed points; grain ``i`` (physical tag ``i + 1``)
        is the cell of seed ``i``.

    Raises:
        ConfigError: non-positive sizes or grain count.
    """
    import gmsh

    size = np.asarray(size, dtype=float)
    if isinstance(grains, bool) or not isinstance(grains, (int, np.integer)) or grains < 1:
        raise ConfigError(f"grains must be a positive integer, got {grains!r}")
    if size.shape != (3,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise ConfigError(f"size must be 3 positive lengths [Lx, Ly, Lz] in metres, got {size.tolist()}")
    if mesh_size is None:
        mesh_size = 0.2 * (float(np.prod(size)) / grains) ** (1.0 / 3.0)
    if not (isinstance(mesh_size, (int, float)) and math.isfinite(mesh_size) and mesh_size > 0):
        raise ConfigError(f"mesh_size must be a positive length in metres, got {mesh_size!r}")
    seeds = polycrystal_seeds(int(grains), seed, size)
    points, cells, faces = voronoi_box_topology(seeds, size)

    initialized_here = not gmsh.isInitialized()
    if initialized_here:
        gmsh.initialize(interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("slipstream_polycrystal")
        geo = gmsh.model.geo
        for k, p in enumerate(points):
            geo.addPoint(*p, meshSize=mesh_size, tag=k + 1)
        lines: dict[tuple[int, int], int] = {}
        surface_of_face: list[int] = []
        for polygon in (f["vertices"] for f in faces):
            loop = []
            for a, b in zip(polygon, np.roll(polygon, -1)):
                a, b = int(a), int(b)
                key = (min(a, b), max(a, b))
                if key not in lines:
                    lines[key] = geo.addLine(key[0] + 1, key[1] + 1)
                loop.append(lines[key] if a < b else -lines[key])
            surface_of_face.append(geo.addPlaneSurface([geo.addCurveLoop(loop)]))
        volumes = []
        for cell_faces in cells:
            volumes.append(geo.addVolume([geo.addSurfaceLoop([surface_of_face[f] for f in cell_faces])]))
        geo.synchronize()
        for grain, vol in enumerate(volumes):
            gmsh.model.addPhysicalGroup(3, [vol], tag=grain + 1, name=f"grain_{grain}")
        for name, tag in FACE_TAGS.items():
            surfs = [surface_of_face[k] for k, f in enumerate(faces) if f["box_face"] == tag]
            gmsh.model.addPhysicalGroup(2, surfs, tag=tag, name=name)
        gmsh.option.setNumber("Mesh.MeshSizeMax", mesh_size)
        gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
        gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
        gmsh.option.setNumber("Mesh.Binary", 0)
        gmsh.model.mesh.generate(3)
        gmsh.write(str(path))
    finally:
        gmsh.model.remove()
        if initialized_here:
            gmsh.finalize()
    return seeds


def voronoi_box_topology(seeds: np.ndarray, size) -> tuple[np.ndarray, list[list[int]], list[dict]]:
    """Voronoi cells of ``seeds`` clipped to the box, as a shared-face polyhedral complex.

    Args:
        seeds: ``(n, 3)`` distinct points strictly inside the box.
        size: ``(Lx, Ly, Lz)``.

    Returns:
        ``(points, cells, faces)``: ``(m, 3)`` unique vertices; for each cell
        the indices of its faces; each face a dict with ``vertices`` (ordered
        polygon of point indices), ``cells`` (one or two cell indices) and
        ``box_face`` (physical tag 1..6 of a box face, or 0 for a grain boundary).
    """
    seeds = np.asarray(seeds, dtype=float)
    size = np.asarray(size, dtype=float)
    n = len(seeds)
    scale = float(size.max())
    tol = 1e-9 * scale
    # planes a.x + b <= 0: the six box faces (in FACE_TAGS order), then the bisectors
    box = np.array([[-1, 0, 0, 0], [1, 0, 0, -size[0]], [0, -1, 0, 0], [0, 1, 0, -size[1]],
                    [0, 0, -1, 0], [0, 0, 1, -size[2]]], dtype=float)
    per_cell = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        normal = seeds[others] - seeds[i]
        length = np.linalg.norm(normal, axis=1, keepdims=True)
        if np.any(length[:, 0] < tol):
            raise ConfigError(f"seeds {i} and {int(others[np.argmin(length)])} coincide")
        normal = normal / length
        offset = -np.einsum("ij,ij->i", normal, 0.5 * (seeds[others] + seeds[i]))
        planes = np.vstack([box, np.column_stack([normal, offset])])
        verts = HalfspaceIntersection(planes, seeds[i]).intersections
        on_plane = np.abs(verts @ planes[:, :3].T + planes[:, 3]) < 1e2 * tol
        per_cell.append((verts, on_plane, others))

    # merge vertices closer than 1e-7 * L (degenerate corners appear several times)
    all_verts = np.vstack([v for v, _, _ in per_cell])
    merged = _cluster(all_verts, 1e-7 * scale)
    uniq, inverse = np.unique(merged, return_inverse=True)
    points = np.array([all_verts[merged == u].mean(axis=0) for u in uniq])
    starts = np.cumsum([0] + [len(v) for v, _, _ in per_cell])

    face_vertices: dict[tuple, set] = {}
    for i, (verts, on_plane, others) in enumerate(per_cell):
        gid = inverse[starts[i]:starts[i + 1]]
        for h in range(on_plane.shape[1]):
            ids = set(gid[on_plane[:, h]].tolist())
            if len(ids) < 3:
                continue
            key = ("box", h + 1, i) if h < 6 else ("gb",) + tuple(sorted((i, int(others[h - 6]))))
            face_vertices.setdefault(key, set()).update(ids)
    faces, cells = [], [[] for _ in range(n)]
    for key, ids in face_vertices.items():
        polygon = _order_polygon(points, np.array(sorted(ids)))
        if polygon is None:
            continue
        owners = [key[2]] if key[0] == "box" else [key[1], key[2]]
        for c in owners:
            cells[c].append(len(faces))
        faces.append({"vertices": polygon, "cells": owners, "box_face": key[1] if key[0] == "box" else 0})
    return points, cells, faces


def _cluster(points: np.ndarray, tol: float) -> np.ndarray:
    """Label of each point's cluster (points within ``tol`` chained together)."""
    parent = np.arange(len(points))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in cKDTree(points).query_pairs(tol):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(a) for a in range(len(points))])


def _order_polygon(points: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """Order coplanar convex-polygon vertices counter-clockwise; None if degenerate."""
    p = points[ids]
    centre = p.mean(axis=0)
    _, s, vt = np.linalg.svd(p - centre)
    if s[1] < 1e-9 * max(s[0], 1e-300):
        return None  # collinear: a sliver of zero area
    angle = np.arctan2((p - centre) @ vt[1], (p - centre) @ vt[0])
    return ids[np.argsort(angle)]


def load_gmsh_polycrystal(path: str | pathlib.Path, comm=None):
    """Read a polycrystal ``.msh`` into DOLFINx, distributed over ``comm``.

    Rank 0 reads the file with gmsh; a missing or unreadable file, or one
    without physical volumes, raises :class:`InputFileError` on every rank.

    Args:
        path: an ``.msh`` file (e.g. from :func:`generate_polycrystal_msh`).
        comm: MPI communicator (default ``MPI.COMM_WORLD``).

    Returns:
        ``(mesh, cell_tags, facet_tags)``: cell tags are grain id + 1, facet
        tags the box faces 1..6 (see the module docstring).
    """
    try:
        import dolfinx_solver  # noqa: F401  (the PyPI wheel wants it before dolfinx)
    except ImportError:
        pass
    import gmsh
    from dolfinx.io import gmsh as dolfinx_gmsh
    from mpi4py import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    path = pathlib.Path(path)
    error = None
    initialized_here = False
    if comm.rank == 0:
        if not path.is_file():
            error = f"{path}: no such file"
        else:
            initialized_here = not gmsh.isInitialized()
            if initialized_here:
                gmsh.initialize(interruptible=False)
            gmsh.option.setNumber("General.Terminal", 0)
            gmsh.model.add("slipstream_load")
            try:
                gmsh.merge(str(path))
                if not gmsh.model.getPhysicalGroups(3):
                    error = f"{path.name}: no physical volumes (grains) in the mesh"
            except Exception as exc:  # gmsh raises a bare Exception with its log line
                error = f"{path.name}: gmsh cannot read it ({str(exc).splitlines()[0] if str(exc) else 'error'})"
    error = comm.bcast(error, root=0)
    try:
        if error is not None:
            raise InputFileError(error)
        data = dolfinx_gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=3)
    finally:
        if comm.rank == 0 and path.is_file():
            gmsh.model.remove()
            if initialized_here:
                gmsh.finalize()
    return data.mesh, data.cell_tags, data.facet_tags
