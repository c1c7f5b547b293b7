"""Grain-conforming gmsh polycrystals, read into DOLFINx serially and under mpirun.

Checks nobody tuned: every tetrahedron's centroid lies in its grain's Voronoi
cell (nearest seed = tag - 1, exact for convex cells), grain volumes agree with
a Monte-Carlo nearest-seed estimate, the box faces carry tags 1..6 with areas
Ly Lz, Lx Lz, Lx Ly.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

pytest.importorskip("gmsh")
try:
    import dolfinx_solver  # noqa: F401  (the PyPI wheel wants it before dolfinx)
except ImportError:
    pass
dolfinx = pytest.importorskip("dolfinx")

import ufl  # noqa: E402
from dolfinx import fem  # noqa: E402
from mpi4py import MPI  # noqa: E402
from scipy.spatial import ConvexHull, cKDTree  # noqa: E402

from solver.errors import ConfigError, InputFileError  # noqa: E402
from solver.gmsh_polycrystal import (FACE_TAGS, generate_polycrystal_msh, load_gmsh_polycrystal,  # noqa: E402
                                     polycrystal_seeds, voronoi_box_topology)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = np.array([1.0e-4, 0.8e-4, 0.6e-4])


def _generate(tempdir, grains=6, seed=3):
    comm = MPI.COMM_WORLD
    path = tempdir / "poly.msh"
    seeds = generate_polycrystal_msh(path, grains, seed, SIZE, mesh_size=2.0e-5) if comm.rank == 0 else None
    seeds = comm.bcast(seeds, root=0)
    return path, seeds


def _integral(mesh, measure):
    return mesh.comm.allreduce(fem.assemble_scalar(fem.form(fem.Constant(mesh, 1.0) * measure)), op=MPI.SUM)


@pytest.mark.mpi
def test_generated_mesh_tags_match_voronoi_cells(tempdir):
    path, seeds = _generate(tempdir)
    mesh, cell_tags, facet_tags = load_gmsh_polycrystal(path, MPI.COMM_WORLD)
    comm = mesh.comm
    tdim = mesh.topology.dim
    assert tdim == 3
    grains = sorted(set().union(*comm.allgather(set(np.unique(cell_tags.values).tolist()))))
    assert grains == list(range(1, len(seeds) + 1))

    # each local cell's centroid is nearest to the seed of its grain
    x = mesh.geometry.x
    dofs = mesh.geometry.dofmaps[0] if hasattr(mesh.geometry, "dofmaps") else mesh.geometry.dofmap
    centroids = x[dofs[cell_tags.indices]].mean(axis=1)
    nearest = cKDTree(seeds).query(centroids)[1]
    assert np.array_equal(nearest + 1, cell_tags.values)

    # volumes: the box, and each grain against a Monte-Carlo nearest-seed estimate
    dx = ufl.Measure("dx", domain=mesh, subdomain_data=cell_tags)
    assert np.isclose(_integral(mesh, dx), np.prod(SIZE), rtol=1e-10)
    samples = np.random.default_rng(0).random((200_000, 3)) * SIZE
    fraction = np.bincount(cKDTree(seeds).query(samples)[1], minlength=len(seeds)) / len(samples)
    for g in range(len(seeds)):
        assert abs(_integral(mesh, dx(g + 1)) / np.prod(SIZE) - fraction[g]) < 0.005

    # box faces: tags 1..6 sit on x=0, x=L, y=0, ... with the face areas
    ds = ufl.Measure("ds", domain=mesh, subdomain_data=facet_tags)
    area = {1: SIZE[1] * SIZE[2], 2: SIZE[1] * SIZE[2], 3: SIZE[0] * SIZE[2], 4: SIZE[0] * SIZE[2],
            5: SIZE[0] * SIZE[1], 6: SIZE[0] * SIZE[1]}
    for tag, a in area.items():
        assert np.isclose(_integral(mesh, ds(tag)), a, rtol=1e-10)
    vertex_x = dolfinx.mesh.entities_to_geometry(mesh, tdim - 1, facet_tags.indices)
    for tag, (axis, side) in zip(FACE_TAGS.values(), [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]):
        on = facet_tags.values == tag
        coords = x[vertex_x[on]][..., axis]
        np.testing.assert_allclose(coords, side * SIZE[axis], atol=1e-12 * SIZE.max())


@pytest.mark.mpi
def test_missing_and_corrupt_msh_raise_on_every_rank(tempdir):
    with pytest.raises(InputFileError, match="no such file"):
        load_gmsh_polycrystal(tempdir / "absent.msh", MPI.COMM_WORLD)
    if MPI.COMM_WORLD.rank == 0:
        (tempdir / "junk.msh").write_text("$MeshFormat\n4.1 0 8\n$EndMeshFormat\n$Nodes\ngarbage\n")
    MPI.COMM_WORLD.Barrier()
    with pytest.raises(InputFileError) as e:
        load_gmsh_polycrystal(tempdir / "junk.msh", MPI.COMM_WORLD)
    assert "junk.msh" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.mpi
def test_sample_mesh_loads():
    mesh, cell_tags, facet_tags = load_gmsh_polycrystal(ROOT / "meshes" / "polycrystal.msh", MPI.COMM_WORLD)
    tags = set().union(*mesh.comm.allgather(set(np.unique(cell_tags.values).tolist())))
    assert tags == set(range(1, 9))
    assert set().union(*mesh.comm.allgather(set(np.unique(facet_tags.values).tolist()))) == set(range(1, 7))
    assert (ROOT / "meshes" / "polycrystal.msh").stat().st_size < 1_000_000


@pytest.mark.skip_in_parallel
@pytest.mark.parametrize("grains, seed", [(1, 0), (2, 1), (12, 2), (30, 5)])
def test_topology_is_a_closed_partition_of_the_box(grains, seed):
    seeds = polycrystal_seeds(grains, seed, SIZE)
    points, cells, faces = voronoi_box_topology(seeds, SIZE)
    volumes = [ConvexHull(points[np.unique(np.concatenate([faces[f]["vertices"] for f in c]))]).volume
               for c in cells]
    assert np.isclose(sum(volumes), np.prod(SIZE), rtol=1e-9)
    # closed surfaces: every edge of a cell is shared by exactly two of its faces
    for c in cells:
        edges = {}
        for f in c:
            v = faces[f]["vertices"]
            for a, b in zip(v, np.roll(v, -1)):
                key = (min(a, b), max(a, b))
                edges[key] = edges.get(key, 0) + 1
        assert set(edges.values()) == {2}
    assert {f["box_face"] for f in faces} - {0} == set(range(1, 7))


@pytest.mark.skip_in_parallel
def test_generate_refuses_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="grains"):
        generate_polycrystal_msh(tmp_path / "x.msh", 0, 0, SIZE)
    with pytest.raises(ConfigError, match="size"):
        generate_polycrystal_msh(tmp_path / "x.msh", 3, 0, (1.0, -1.0, 1.0))
