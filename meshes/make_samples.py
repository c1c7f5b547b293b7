"""Regenerate the sample microstructures in meshes/ (deterministic).

Run from anywhere: ``python meshes/make_samples.py``. Writes

* ``sample.ang``: 32 x 32 EDAX/TSL map, 1 um step, 15 Voronoi grains, random
  texture, 12 unindexed points (CI -1, Euler 4 pi);
* ``sample.ctf``: the same map in the Oxford Channel 5 layout (degrees,
  unindexed points as Phase 0);
* ``sample_grid.npz``: periodic 8 x 8 x 8 grid, 10 grains, random texture,
  100 um box;
* ``polycrystal.msh``: gmsh MSH 4.1 tetrahedral mesh of 8 Voronoi grains in a
  100 um cube (physical volumes 1..8, box faces 1..6).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from solver.microstructure import microstructure_from_config  # noqa: E402
from solver.readers import write_microstructure  # noqa: E402

EBSD_MAP = {"kind": "voronoi", "cells": [32, 32, 1], "size": [32e-6, 32e-6, 1e-6], "grains": 15, "seed": 2024,
            "periodic": False, "texture": "random"}
N_UNINDEXED = 12
GRID = {"kind": "voronoi", "cells": [8, 8, 8], "size": [1e-4, 1e-4, 1e-4], "grains": 10, "seed": 7,
        "periodic": True, "texture": "random"}
MESH = {"grains": 8, "seed": 1, "size": (1e-4, 1e-4, 1e-4), "mesh_size": 2.5e-5}


def main(out: pathlib.Path = HERE) -> None:
    ms = microstructure_from_config(EBSD_MAP, out)
    rng = np.random.default_rng(EBSD_MAP["seed"])
    mask = np.zeros(ms.shape[1:], dtype=bool)
    mask.flat[rng.choice(mask.size, N_UNINDEXED, replace=False)] = True
    ms.source = "slipstream sample map (meshes/make_samples.py)"
    write_microstructure(out / "sample.ang", ms, unindexed=mask)
    write_microstructure(out / "sample.ctf", ms, unindexed=mask)

    grid = microstructure_from_config(GRID, out)
    write_microstructure(out / "sample_grid.npz", grid)

    try:
        from solver.gmsh_polycrystal import generate_polycrystal_msh
    except ImportError as exc:  # pragma: no cover - gmsh is an optional dependency
        print(f"skipping polycrystal.msh: {exc}")
    else:
        generate_polycrystal_msh(out / "polycrystal.msh", **MESH)
    for name in ("sample.ang", "sample.ctf", "sample_grid.npz", "polycrystal.msh"):
        path = out / name
        if path.exists():
            print(f"{name}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
