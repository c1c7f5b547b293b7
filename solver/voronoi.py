"""Voronoi tessellation of a voxel grid.

Conventions (as DAMASK's ``seeds`` and ``GeomGrid.from_Voronoi_tessellation``):

* ``cells`` = ``(nx, ny, nz)`` and ``size`` = ``(Lx, Ly, Lz)`` in metres; seeds
  are ``(n, 3)`` coordinates ``(x, y, z)`` in ``[0, L)``.
* Voxel ``(k, j, i)`` of the ``(z, y, x)`` array has its centre at
  ``((i + 1/2) dx, (j + 1/2) dy, (k + 1/2) dz)`` and belongs to the nearest seed;
  on a periodic grid distances are minimum-image distances.
* Grain id = seed index, renumbered contiguous if a seed owns no voxel.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

logger = logging.getLogger("slipstream")


def random_seeds(n: int, size, rng: np.random.Generator, cells=None) -> np.ndarray:
    """Random seed points in the box ``[0, Lx) x [0, Ly) x [0, Lz)``.

    Args:
        n: number of seeds.
        size: ``(Lx, Ly, Lz)``.
        rng: random generator (the only source of randomness).
        cells: if given ``(nx, ny, nz)``, each seed is put near the centre of its
            own, distinct voxel (at most a quarter voxel off, as DAMASK's
            ``seeds.from_random(..., cells=...)``), so every seed owns at least
            its voxel and the grain count is exact. A 2-D grid (nz = 1) gets all
            seeds at mid-height: the tessellation is then a 2-D one.

    Returns:
        ``(n, 3)`` seed coordinates.
    """
    size = np.asarray(size, dtype=float)
    if cells is None:
        return rng.random((n, 3)) * size
    cells = np.asarray(cells, dtype=int)
    step = size / cells
    flat = rng.choice(int(np.prod(cells)), size=n, replace=False)
    ijk = np.stack(np.unravel_index(flat, tuple(cells[::-1]))[::-1], axis=-1)  # (x, y, z) indices
    seeds = (ijk + 0.5) * step + step * (rng.random((n, 3)) * 0.5 - 0.25)
    if cells[2] == 1:
        seeds[:, 2] = 0.5 * size[2]
    return seeds


def tessellate(cells, size, seeds: np.ndarray, periodic: bool = True) -> np.ndarray:
    """Assign every voxel centre to its nearest seed.

    Args:
        cells: ``(nx, ny, nz)``.
        size: ``(Lx, Ly, Lz)``.
        seeds: ``(n, 3)`` coordinates in ``[0, L)``.
        periodic: use minimum-image distances (a grain may cross the faces).

    Returns:
        ``(nz, ny, nx)`` int32 seed index of every voxel (not renumbered).
    """
    nx, ny, nz = (int(c) for c in cells)
    size = np.asarray(size, dtype=float)
    step = size / np.array([nx, ny, nz])
    z, y, x = np.meshgrid((np.arange(nz) + 0.5) * step[2], (np.arange(ny) + 0.5) * step[1],
                          (np.arange(nx) + 0.5) * step[0], indexing="ij")
    centres = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=-1)
    seeds = np.asarray(seeds, dtype=float)
    if periodic:
        # cKDTree's boxsize does minimum-image distances; it needs points in [0, L)
        tree = cKDTree(np.mod(seeds, size), boxsize=size)
    else:
        tree = cKDTree(seeds)
    _, owner = tree.query(centres, workers=1)
    return owner.astype(np.int32).reshape(nz, ny, nx)


def voronoi_grains(cells, size, n_grains: int, rng: np.random.Generator,
                   periodic: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Random Voronoi grains on a voxel grid, reproducible from ``rng``.

    Args:
        cells: ``(nx, ny, nz)``.
        size: ``(Lx, Ly, Lz)`` in metres.
        n_grains: number of seeds (at most the number of voxels).
        rng: random generator.
        periodic: periodic (minimum-image) tessellation.

    Returns:
        ``(grain_id, seeds)``: ``(nz, ny, nx)`` int32 ids, 0-based and contiguous,
        and the ``(n, 3)`` seeds of the grains that kept voxels, in id order.
    """
    seeds = random_seeds(n_grains, size, rng, cells=cells)
    owner = tessellate(cells, size, seeds, periodic=periodic)
    kept = np.unique(owner)
    if kept.size < n_grains:
        # only very anisotropic voxels can make a seed lose its own voxel
        logger.info("voronoi: %d of %d seeds own no voxel; grains renumbered", n_grains - kept.size, n_grains)
    lookup = np.full(n_grains, -1, dtype=np.int32)
    lookup[kept] = np.arange(kept.size, dtype=np.int32)
    return lookup[owner], seeds[kept]


__all__ = ["random_seeds", "tessellate", "voronoi_grains"]
